"""Prop 3.3, Remark 3.4 and the critical depth T* of arXiv 2402.15415 with a spectral gap of V,
on particles and on the mean-field PDE (S^1, S^2).

V = A = U (diag(1, 1 - g, (1 - g)/2, ...) + s e1 e2^T) U^T (gap g; s != 0: V not symmetric),
tied dV on V only: "sym" dV = eps x x^T, x = cos(phi) u1 + sin(phi) u2 (aligned phi = 0,
orthogonal phi = 90), "coupling" dV = eps u2 u1^T. Tokens: a vMF cloud (kappa) at theta0 from
u1. Per case: both flows to T = min(T_max, t_factor / rate); the final cluster directions,
their drift against |u1 - u1~| and Prop 3.3's bound (2|b| + |E|)/(gap + a), Remark 3.4's
first-order drift, W2(mu_T, nu_T), T* (the flows' directions dtheta = 2 arcsin(delta/2) apart)
against the point-mass law. The PDE (pde_dims: 2 -> S^1 with pde_cells cells, 3 -> S^2 at
icosphere level pde_refinement; DG0, adaptive) runs the symmetric cases.
Outputs: spectral_gap.csv (particles), pde.csv, spectral_gap.png, summary.json, params.toml.

Commands (from the repository root):

    mpiexec -n 2 .venv/bin/python scripts/exp_spectral_gap.py --output out/spectral_gap
    .venv/bin/python scripts/exp_spectral_gap.py --preset tiny --output out/spectral_gap-tiny

Presets: tiny (d = 2, gap 0.2, eps 0.1 and 0.3, phi 0/45/90 and the coupling, s = 0 and 0.3;
S^1 64 cells), small (d = 2, 3; gaps 0 .. 0.5; 3 eps; 4 angles; S^1 128 cells), paper (6 gaps,
4 eps, S^1 256 cells and S^2 level 3); wall times in docs/experiments.md. TOML keys override
the preset (dims, n, kappa, theta0_deg, gaps, eps, phis_deg, coupling, skews, delta, dt,
t_factor, T_max, pde_cells, pde_refinement, pde_dims). Rerunning resumes.
"""

import sys

from solver.experiments import cli, run_spectral_gap
from solver.experiments.spectral_gap import PRESETS


def main(argv=None) -> int:
    return cli(argv, name="spectral_gap", doc=__doc__, presets=PRESETS, run=run_spectral_gap)


if __name__ == "__main__":
    from solver.parallel import abort_on_error

    abort_on_error()
    sys.exit(main())
