"""Fig 4 of arXiv 2402.15415: two-point clustering with Q~ = K~ = e1 e1^T, V = I_2.

d = 2, n = 20 tokens from uniform initial conditions (seeds 0..seeds-1); base Q = K = I_2
against Q~ = K~ = sqrt(beta) e1 e1^T for each beta in `betas` (beta = 1 is the paper's
matrix). Clusters are counted over time by quick shift (geodesic radius `radius`).
Outputs: clusters.csv (cluster count, two heaviest masses and first coordinates over time,
every model and seed), trajectories.csv (angles of seed `plot_seed`), two_clusters.png,
summary.json, params.toml.

Commands (from the repository root):

    mpiexec -n 2 .venv/bin/python scripts/exp_two_clusters.py --output out/two_clusters
    .venv/bin/python scripts/exp_two_clusters.py --preset paper --output out/two_clusters-paper

Presets (wall time on 2 cores): tiny ~3 s (tests); small 11 s measured 2026-11-30 (8 seeds,
T = 100, beta in {1, 4}); paper 3 min 20 s measured (16 seeds, T = 400, beta in {1, 2, 4, 9}).
TOML keys override the preset (n, seeds, T, dt, save_every, betas, radius, plot_seed).
Rerunning resumes.
"""

import sys

from solver.experiments import cli, run_two_clusters
from solver.experiments.two_clusters import PRESETS


def main(argv=None) -> int:
    return cli(argv, name="two_clusters", doc=__doc__, presets=PRESETS, run=run_two_clusters)


if __name__ == "__main__":
    from solver.parallel import abort_on_error

    abort_on_error()
    sys.exit(main())
