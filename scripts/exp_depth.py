"""Thm 4.6 of arXiv 2402.15415: the critical depth T* at which the perturbed flow leaves the
base cluster, as a function of the perturbation norm.

Base Q = K = V = I_d, perturbed V~ = I_d - eps e2 e2^T; tokens start as a von Mises-Fisher
cloud (kappa) centred at angle theta0 from e1 towards e2. T* is measured twice: the depth at
which the cluster directions of the two flows are dtheta = 2 arcsin(delta / 2) apart, and the
exit time of the delta-cluster state around the base's final configuration. Both are
compared with the point-mass law T* = ln(tan phi0 / tan(phi0 - dtheta)) / eps (phi0: angle
of the base cluster to the hyperplane e2^perp) and fitted as c eps^-alpha.
Outputs: depth.csv (one row per d, theta0, eps, seed), depth.png, summary.json, params.toml.

Commands (from the repository root):

    mpiexec -n 2 .venv/bin/python scripts/exp_depth.py --output out/depth
    .venv/bin/python scripts/exp_depth.py --preset paper --output out/depth-paper

Presets (wall time on 2 cores): tiny ~2 s (tests); small ~1 min (d in {2, 3},
theta0 in {20, 45} degrees, 7 eps in [3e-3, 0.3], 2 seeds); paper ~5 min (d in {2, 3, 8},
three angles, 9 eps in [2e-3, 0.3], 3 seeds, n = 100). TOML keys override the preset (dims,
n, kappa, theta0_deg, eps_min, eps_max, n_eps, seeds, delta, dt, t_factor). Rerunning resumes.
"""

import sys

from solver.experiments import cli, run_depth
from solver.experiments.depth import PRESETS


def main(argv=None) -> int:
    return cli(argv, name="depth", doc=__doc__, presets=PRESETS, run=run_depth)


if __name__ == "__main__":
    sys.exit(main())
