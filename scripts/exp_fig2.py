"""Fig 2 of arXiv 2402.15415: Q = K = V = I vs V~ = I - eps e2 e2^T, particles and PDE,
on S^1 (d = 2, n = 20 tokens, the paper's setting) and on S^2 (d = 3).

S^1: the PDE starts from narrow von Mises-Fisher bumps (concentration kappa) at the 20
particles' initial positions and evolves the base and the perturbed densities together
(DOLFINx, DG0 donor flux, adaptive steps, `cells` segments).
S^2: the PDE on the icosphere of level s2_refinement starts from the cloud
vMF(s2_centre, s2_kappa); the particles are s2_seeds draws of s2_n tokens from it (median and
min-max over the draws). Forgetting = W2(mu_t, nu_t) and the drift angle of the mean direction.
Outputs in the --output folder: particles.csv (t, particle, x, y, theta per flow),
comparison.csv (W2 base vs perturbed for particles and PDE, W2 PDE vs particles), pde/
(result.npz with the densities, checkpoint), fig2.png; particles_s2.csv (per draw: t, w2,
drift), comparison_s2.csv (PDE, particles' median / min / max, point-mass law), pde_s2/,
fig2_s2.png; summary.json, params.toml.

Commands (from the repository root):

    mpiexec -n 2 .venv/bin/python scripts/exp_fig2.py --output out/fig2
    .venv/bin/python scripts/exp_fig2.py --preset paper --output out/fig2-paper
    .venv/bin/python scripts/exp_fig2.py --config my.toml --output out/fig2-mine

Presets: tiny (tests: S^1 T = 12; S^2 level 3, T = 4, 4 draws of 64); small (S^1 T = 60,
200 cells; S^2 level 3, T = 20, 5 draws of 256); paper (S^1 T = 200, 300 cells; S^2 level 4,
T = 60, 8 draws of 1000). Wall times measured: docs/experiments.md.
A TOML file's top-level keys override the preset (keys: n, seed, eps, T, dt, save_every,
cells, kappa, cfl, s2_refinement, s2_T, s2_save_every, s2_n, s2_seeds, s2_kappa, s2_centre).
Rerunning the same command resumes: finished cases are kept, the PDEs continue from their
last checkpoints.
"""

import sys

from solver.experiments import cli, run_fig2
from solver.experiments.fig2 import PRESETS


def main(argv=None) -> int:
    return cli(argv, name="fig2", doc=__doc__, presets=PRESETS, run=run_fig2)


if __name__ == "__main__":
    from solver.parallel import abort_on_error

    abort_on_error()
    sys.exit(main())
