"""Thm 4.2 of arXiv 2402.15415: random adapters, the eta_L vs sqrt(L) norm transition, on
particles and on the mean-field PDE (S^1).

Base Q = K = V = I_d; L layers of length h = T / L, layer l gets its own
dV^l = eta_L sum_a s_a u_a^l (v_a^l)^T with u, v ~ N(0, I_d / d) i.i.d. The sweep runs over
L, the ratio eta_L / sqrt(L) (log-spaced) and seeds; seed s fixes the adapters and the
particles' initial draw (n uniform tokens, seed x0_seed + s). For d = 2 the PDE runs the
first pde_seeds seeds (DG0 on pde_cells cells, adaptive steps) from the density the seed's
draw approximates, 1 + d<m, x> (m: the draw's mean), with the same adapters. Both record the
final W2(mu_T, nu_T) (PDE: each cell's mass spread over its arc). In the linear regime
(mean W2 < linear_max) c_L = RMS W2 / (eta_L / sqrt(L)) is fitted against L^gamma with a 90 %
bootstrap interval over the seeds: the theory says gamma = 0 (a law in eta_L alone would give
gamma = 1/2). Outputs: random_adapters.csv (particles, one row per L, ratio, seed), pde.csv
(the PDE), random_adapters.png (W2 against eta_L and eta_L / sqrt(L), c_L against L),
summary.json, params.toml.

Commands (from the repository root):

    mpiexec -n 2 .venv/bin/python scripts/exp_random_adapters.py --output out/random
    .venv/bin/python scripts/exp_random_adapters.py --preset paper --output out/random-paper

Presets (wall time with mpiexec -n 2 on the 2-core machine): tiny ~30 s (tests); small
(L in {1, 8, 64}, 3 ratios, 24 particle seeds, 6 PDE seeds, 64 cells) 31 s measured
2026-11-30 03:30 UTC (each PDE case one rank's serial run; docs/experiments.md); paper (L in
{1, 4, 16, 64}, 5 ratios, 48 + 12 seeds, 128 cells) 3 min 53 s measured. TOML keys override
the preset (d, n, x0_seed, T, dt, Ls, ratio_min, ratio_max, n_ratio, seeds, s, linear_max,
pde_cells, pde_seeds). Rerunning resumes.
"""

import sys

from solver.experiments import cli, run_random_adapters
from solver.experiments.random_adapters import PRESETS


def main(argv=None) -> int:
    return cli(argv, name="random_adapters", doc=__doc__, presets=PRESETS, run=run_random_adapters)


if __name__ == "__main__":
    from solver.parallel import abort_on_error

    abort_on_error()
    sys.exit(main())
