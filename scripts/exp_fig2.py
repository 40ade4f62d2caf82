"""Fig 2 of arXiv 2402.15415: d = 2, n = 20 tokens, Q = K = V = I_2 vs V~ = I_2 - eps e2 e2^T.

The particle system and the PDE on S^1 side by side: the PDE starts from narrow von
Mises-Fisher bumps (concentration kappa) at the 20 particles' initial positions and evolves
the base and the perturbed densities together (DOLFINx, DG0 upwind, `cells` segments).
Outputs in the --output folder: particles.csv (t, particle, x, y, theta per flow),
comparison.csv (W2 base vs perturbed for particles and PDE, W2 PDE vs particles), pde/
(result.npz with the densities, checkpoint), fig2.png, summary.json, params.toml.

Commands (from the repository root):

    mpiexec -n 2 .venv/bin/python scripts/exp_fig2.py --output out/fig2
    .venv/bin/python scripts/exp_fig2.py --preset paper --output out/fig2-paper
    .venv/bin/python scripts/exp_fig2.py --config my.toml --output out/fig2-mine

Presets (wall time on 2 cores): tiny ~5 s (tests); small ~1 min (T = 60, 200 cells);
paper ~7 min (T = 200, 300 cells). Note: on a fixed mesh a collapsed cluster stays in its
cell unless its drift speed eps |sin 2 theta| / 2 exceeds about half a cell (pi / cells): the
PDE shows the eps = 0.01 drift only with more than ~600 cells (see docs/experiments.md).
A TOML file's top-level keys override the preset (keys: n, seed, eps, T, dt, save_every,
cells, kappa, cfl). Rerunning the same command resumes: finished cases are kept, the PDE
continues from its last checkpoint.
"""

import sys

from solver.experiments import cli, run_fig2
from solver.experiments.fig2 import PRESETS


def main(argv=None) -> int:
    return cli(argv, name="fig2", doc=__doc__, presets=PRESETS, run=run_fig2)


if __name__ == "__main__":
    sys.exit(main())
