"""Fig 3 of arXiv 2402.15415: phase diagram of the delta-cluster state over (eps, t).

n = 20 tokens, uniform x0 (the same for every eps), Q = K = V = I_d vs V~ = I_d - eps e2 e2^T,
on S^1 (d = 2) and S^2 (d = 3). C = final positions of the unperturbed run; the perturbed
configuration is in the delta-cluster state when max_i min_c |x_i(t) - c| < delta. Phases:
t < t_enter (not yet clustered), t_enter <= t < t_exit (no forgetting), t >= t_exit
(forgetting). The transition curve t_exit(eps) is fitted as c eps^-alpha and compared with the
point-mass law ln(tan phi0 / tan(phi0 - dtheta)) / eps, dtheta = 2 arcsin(delta / 2).

PDE (pde.csv, geometry = "sphere" only): for every sphere of pde_spheres and every eps (on
S^2 those in pde_s2_eps = [lo, hi]), one solver.evolve of both flows (DG0, adaptive steps;
S^1: pde_cells cells, S^2: the icosphere of level pde_refinement) to pde_T or to the first
saved time after the exit, from rho0 ~ 1 + d <m, x> with m the mean of the particles' draw
(pde_initial = "mean"; the uniform density itself is stationary) or the authors' cube draw
projected to the sphere, rho0 ~ 1 / max_i |x_i|^d ("cube"). Measure-level state
(pde_criterion = "atoms_w2", the default): W2(nu_t, measures on the base flow's current
cluster centres) < delta, continuous in the data and converging under refinement; "reach":
at most pde_tol of the mass farther than delta from those clusters, each cell within the
point-mass radius of its own cluster's centre counted at that centre. Four phases: not yet
clustered, no forgetting, forgetting, and forgotten before clustering (the perturbed flow
never enters while the base flow is clustered: t >= t_base_enter). The figure shows the PDE's
phases with the particles' t_enter / t_exit on top.

Particles converging to the PDE (particles.csv, one case per sphere of conv_spheres,
n = conv_n[i] and draw seed < conv_seeds[i]; one row per eps of the PDE sweep in
[conv_eps_min, conv_eps_max]):
n tokens drawn i.i.d. from the PDE's rho0, base and perturbed runs to conv_T (step conv_dt,
saved every conv_save_every), t_enter / t_exit by the PDE's measure-level criterion (W2 to
the centres of the final base configuration's clusters, or with "reach" at most pde_tol of
the tokens farther than delta from the final base configuration). The figure
overlays, per n, the median over the draws with its 10-90 % band; the summary gives per n the
median relative distance |t - t_PDE| / t_PDE and, for the PDE and per n, the fit
t_exit = c eps^slope with 95 % bootstrap intervals over the eps (free slope and slope -1).

Outputs: phase.csv (one row per sphere and eps; eps = 0 is the base flow), pde.csv (one row
per PDE sphere and eps), particles.csv, phase_diagram.png, summary.json (fits),
timing.json (measured wall time of each sweep, summed over resumed runs), params.toml.

Commands (from the repository root):

    mpiexec -n 2 .venv/bin/python scripts/exp_phase_diagram.py --output out/phase
    .venv/bin/python scripts/exp_phase_diagram.py --preset paper --output out/phase-paper

Presets (wall time, mpiexec -n 2 on the project's 2-core machine, docs/experiments.md): tiny
~1 min (tests; S^1 PDE only, 128 cells, T = 32; particles -> PDE n = 20, 200 x 8 draws);
small 1 min 10 s measured 2026-11-30 03:29 UTC (10 eps in [1e-3, 0.075], particles to
T = 300; PDE S^1 for all, S^2 level 4 for the 3 eps in [0.015, 0.05], each PDE case one
rank's serial run; particles -> PDE on S^1, n = 20, 200, 2000 with 4, 4, 2 draws); paper
(16 eps, particles to T = 600, S^2 PDE for eps in [0.002, 0.05], particles -> PDE on S^1 and
S^2 with n up to 20000, T = 50, eps in [0.013, 0.025]) 7 min 1 s measured 2026-11-30.
TOML keys override the preset (spheres, n, seed, eps_min, eps_max, n_eps, T, dt, delta,
geometry, pde_spheres, pde_s2_eps, conv_spheres, pde_cells, pde_refinement, pde_initial,
pde_tol, pde_save_every, pde_T, pde_criterion, conv_draw, conv_n, conv_seeds, conv_eps_min,
conv_eps_max, conv_T, conv_dt, conv_save_every). pde_criterion = "reach" reads the PDE and
the particles through the snapped reach (the criterion of solver.evolve's default) instead of
W2 to the base atoms; conv_draw = "quantile" draws the particles deterministically from rho0
(S^1: its quantiles; S^2: a Fibonacci lattice through its inverse Rosenblatt transform)
instead of i.i.d. Rerunning resumes.
"""

import sys

from solver.experiments import cli, run_phase_diagram
from solver.experiments.phase_diagram import PRESETS


def main(argv=None) -> int:
    return cli(argv, name="phase_diagram", doc=__doc__, presets=PRESETS, run=run_phase_diagram)


if __name__ == "__main__":
    from solver.parallel import abort_on_error

    abort_on_error()
    sys.exit(main())
