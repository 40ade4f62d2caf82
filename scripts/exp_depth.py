"""Thm 4.6 of arXiv 2402.15415: the critical depth T* at which the perturbed flow leaves the
base cluster, for tied and for random adapters, on particles and on the mean-field PDE (S^1).

Base Q = K = V = I_d; tokens start as a von Mises-Fisher cloud (kappa) centred at angle
theta0 from e1 towards e2. Tied: V~ = I_d - eps e2 e2^T; law T* = ln(tan phi0 /
tan(phi0 - dtheta)) / eps (phi0: angle of the base cluster to e2^perp). Random: layer l of
length h (layer) gets its own dV^l = eps u v^T, u, v ~ N(0, I_d / d); the cluster does a
random walk, law E T* = d^2 dtheta^2 / ((d - 1) eps^2 h) (diffusive). T* is the depth at
which the cluster directions of the two flows are dtheta = 2 arcsin(delta / 2) apart; the
PDE (d = 2: the vMF density, DG0 on pde_cells cells, adaptive steps; random adapters of the
first pde_seeds seeds, the particles' adapters of the same seed) measures it on the first
moments at every step. T* = c eps^-alpha is fitted on the mean over seeds with a 90 %
bootstrap interval on alpha over the seeds (none for one run per eps: a deterministic curve).
Outputs: depth.csv (particles, one row per kind, d, theta0, eps, seed), pde.csv, depth.png,
summary.json, params.toml.

Commands (from the repository root):

    mpiexec -n 2 .venv/bin/python scripts/exp_depth.py --output out/depth
    .venv/bin/python scripts/exp_depth.py --preset paper --output out/depth-paper

Presets (wall time with mpiexec -n 2 on the 2-core machine): tiny ~40 s (tests); small
(tied: d in {2, 3}, theta0 in {20, 45} degrees, 5 eps in [6e-3, 0.3], 2 seeds; random: d = 2,
3 eps in [0.12, 0.3], h = 0.1, 8 particle seeds, 4 PDE seeds; 128 cells) particles
15 s, PDE 23 s (each PDE case one rank's serial run), 44 s in all, measured
2026-11-30 03:30 UTC (docs/experiments.md); paper (d in {2, 3, 8}, n = 64,
6 eps, 24 random seeds, 6 PDE seeds) 1 min 34 s measured. TOML keys override the preset
(dims, n, kappa, theta0_deg, eps_min, eps_max, n_eps, seeds, delta, dt, t_factor, kinds,
layer, random_dims, r_factor, random_eps_min, random_eps_max, random_n_eps, random_seeds,
pde_cells, pde_seeds). Rerunning resumes.
"""

import sys

from solver.experiments import cli, run_depth
from solver.experiments.depth import PRESETS


def main(argv=None) -> int:
    return cli(argv, name="depth", doc=__doc__, presets=PRESETS, run=run_depth)


if __name__ == "__main__":
    from solver.parallel import abort_on_error

    abort_on_error()
    sys.exit(main())
