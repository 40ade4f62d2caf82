"""Thm 4.2 of arXiv 2402.15415: random adapters, the eta_L vs sqrt(L) norm transition.

Base Q = K = V = I_d; L layers of length h = T / L, layer l gets its own
dV^l = eta_L sum_a s_a u_a^l (v_a^l)^T with u, v ~ N(0, I_d / d) i.i.d. The sweep runs over
L, the ratio eta_L / sqrt(L) (log-spaced) and several adapter seeds (same x0), and records
the final W2(mu_T, nu_T). The figure plots it against eta_L and against eta_L / sqrt(L): the
paper predicts a collapse (cumulative drift ~ eta_L T / sqrt(L)), no forgetting for
eta_L << sqrt(L) and drift for eta_L >> sqrt(L). Outputs: random_adapters.csv (one row per L,
ratio, seed), random_adapters.png (mean +- std over seeds), summary.json, params.toml.

Commands (from the repository root):

    mpiexec -n 2 .venv/bin/python scripts/exp_random_adapters.py --output out/random
    .venv/bin/python scripts/exp_random_adapters.py --preset paper --output out/random-paper

Presets (wall time on 2 cores): tiny ~2 s (tests); small ~15 s (d = 3, L in {4, 16, 64},
7 ratios, 4 seeds); paper ~5 min (L up to 256, 13 ratios, 16 seeds, n = 64). TOML keys
override the preset (d, n, x0_seed, T, dt, Ls, ratio_min, ratio_max, n_ratio, seeds, s,
linear_max). Rerunning resumes.
"""

import sys

from solver.experiments import cli, run_random_adapters
from solver.experiments.random_adapters import PRESETS


def main(argv=None) -> int:
    return cli(argv, name="random_adapters", doc=__doc__, presets=PRESETS, run=run_random_adapters)


if __name__ == "__main__":
    sys.exit(main())
