"""Fig 3 of arXiv 2402.15415: phase diagram of the delta-cluster state over (eps, t).

n = 20 tokens, uniform x0 (the same for every eps), Q = K = V = I_d vs V~ = I_d - eps e2 e2^T,
on S^1 (d = 2) and S^2 (d = 3). C = final positions of the unperturbed run; the perturbed
configuration is in the delta-cluster state when max_i min_c |x_i(t) - c| < delta. Phases:
t < t_enter (not yet clustered), t_enter <= t < t_exit (no forgetting), t >= t_exit
(forgetting). The transition curve t_exit(eps) is fitted as c eps^-alpha and compared with the
point-mass law ln(tan phi0 / tan(phi0 - dtheta)) / eps, dtheta = 2 arcsin(delta / 2).
Outputs: phase.csv (one row per sphere and eps; eps = 0 is the base flow), phase_diagram.png,
summary.json (fits), params.toml.

Commands (from the repository root):

    mpiexec -n 2 .venv/bin/python scripts/exp_phase_diagram.py --output out/phase
    .venv/bin/python scripts/exp_phase_diagram.py --preset paper --output out/phase-paper

Presets (wall time on 2 cores): tiny ~5 s (tests); small ~1 min (10 eps in [1e-3, 0.075],
T = 400); paper ~10 min (24 eps, T = 1000, dt = 0.05). TOML keys override the preset
(spheres, n, seed, eps_min, eps_max, n_eps, T, dt, delta). Rerunning resumes.
"""

import sys

from solver.experiments import cli, run_phase_diagram
from solver.experiments.phase_diagram import PRESETS


def main(argv=None) -> int:
    return cli(argv, name="phase_diagram", doc=__doc__, presets=PRESETS, run=run_phase_diagram)


if __name__ == "__main__":
    sys.exit(main())
