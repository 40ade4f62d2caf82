"""Thm 4.2 of arXiv 2402.15415 by exact linear response: c_L of W2 ~ c_L eta_L / sqrt(L) with the
random adapters averaged exactly (only the initial draw is random), the exponent gamma of
c_L ~ L^gamma per draw with a bootstrap interval over the draws, and the most forgetful unit
adapter of each rank, on particles on S^1 (d = 2) and S^2 (d = 3).

Base Q = K = V = I_d, n uniform tokens (seed x0_seed + s: random_adapters' draws), T, RK4 dt;
the scheme's per-layer Jacobians at max(Ls) layers (solver.analysis.layer_jacobians). Draws
whose largest particle speed at T exceeds speed_tol have not clustered by T and are named.
The PDE's measure (pde_seeds draws: the draw's smooth density on its mesh quadrature, pde_cells
cells on S^1, icosphere level pde_level on S^2): the exact c_L (measure.csv) and the most
forgetful per-layer adapter of rank r at every L (measure_forgetful.csv: its c^max_L against
the random adapters' c_L and the particles' most forgetful adapter; on S^1 also the measure's
own first-order W2). The tied full-rank one of draw 0 on S^1 is checked on the PDE
(forgetful_pde.csv: solver.evolve at eps of check_eps on the meshes of check_cells, W2/eps
against the first-order prediction).
Outputs: exact.csv (d, seed, L), forgetful.csv (d, seed, rank), measure.csv (d, seed, L),
measure_forgetful.csv (d, seed, L, rank), forgetful_pde.csv (cells, eps),
linear_response.png, summary.json, params.toml.

Commands (from the repository root):

    .venv/bin/python scripts/exp_linear_response.py --output out/linear_response
    mpiexec -n 2 .venv/bin/python scripts/exp_linear_response.py --preset paper --output out/lr

Presets: tiny (d = 2, T = 6, L in {1, 4, 16}, 8 draws), small (d = 2, 3; T = 10; L in {1, 8,
64}; 24 draws), paper (L in {1, 4, 16, 64}, 96 draws); wall times in docs/experiments.md.
TOML keys override the preset (dims, n, x0_seed, T, dt, Ls, seeds, s, ranks, speed_tol,
pde_seeds, pde_cells, pde_level, check_cells, check_eps).
Rerunning resumes.
"""

import sys

from solver.experiments import cli, run_linear_response
from solver.experiments.linear_response import PRESETS


def main(argv=None) -> int:
    return cli(argv, name="linear_response", doc=__doc__, presets=PRESETS,
               run=run_linear_response)  # fmt: skip


if __name__ == "__main__":
    from solver.parallel import abort_on_error

    abort_on_error()
    sys.exit(main())
