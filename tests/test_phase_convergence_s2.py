"""The S² phase boundary under refinement with the state read without the cells' floor
(``pde_criterion = "atoms_w2_hull"``, :func:`solver.hull_w2`), against particles from the same
ρ0 (issue #25 item 3).

The small preset's S² case ε = 0.0464 (ρ0 = 1 + 3⟨m, x⟩, δ = 0.1, T = 14, DG0) on icosphere
levels 3 / 4 / 5, and n = 2,000 particles at the Fibonacci-lattice quantiles of ρ0
(``conv_draw = "quantile"``). Measured 2026-12-08 (quiet 2-core box, one process: 8.4 / 28.7 /
57.9 s, particles 7.7 s): ν exit 12.9633 / 13.1558 / 13.2555 (level 6 on 2 ranks: 13.2874),
ν entry 6.2636 / 6.0165 / 5.8419 (5.7523), μ entry 6.0434 / 5.8430 / 5.6702 (5.5956);
particles n = 2,000: exit 13.3031, entries 5.6277 / 5.4955 (n = 20,000: 13.2734, 5.6488,
5.5019). The plain ``atoms_w2`` exits, 11.8888 / 12.8674 / 12.9634, come early by the cells'
floor ``s_min² / (2δv)`` with a mesh-dependent prefactor (tests/test_exit_spread.py) and
do not converge at a rate (ratio 10.2).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mpi4py import MPI

from solver.experiments._experiment import Run
from solver.experiments._params import load_presets
from solver.experiments.phase_diagram import phase_eps, phase_particles_case, phase_pde_case

LEVELS = (3, 4, 5)
#: first order: successive differences halve with h; accepted within a factor 1.45 either way
#: (measured 1.93 for the exit)
RATIO = (2 / 1.45, 2 * 1.45)
#: the lattice particles' own error at n = 2,000 against n = 20,000: 0.030 (exit), 0.021 and
#: 0.006 (entries), counted twice
PARTICLE_ERROR = 0.06

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def measured():
    p = load_presets("phase_diagram")["small"]
    eps = [e for e in phase_eps(p) if 0.046 < e < 0.047][0]
    p.update(pde_criterion="atoms_w2_hull", conv_draw="quantile", pde_T=14.0, conv_T=14.0,
             conv_dt=0.1, conv_save_every=0.1, conv_eps_min=eps, conv_eps_max=eps,
             conv_spheres=[2])  # fmt: skip
    run = Run(Path("."), MPI.COMM_SELF, False, {})  # every rank its own serial runs
    pde = [phase_pde_case({**p, "pde_refinement": lv}, {"sphere": 2, "eps": eps}, run)
           for lv in LEVELS]  # fmt: skip
    (part,) = phase_particles_case(p, {"sphere": 2, "n": 2000, "seed": 0})
    return pde, part


def test_s2_exit_converges_at_first_order_to_the_particles(measured):
    """The exit rises monotonically at first order (ratio of successive differences in
    (1.38, 2.9), measured 1.93), and the level-5 exit is within its first-order error (the
    last difference, 0.0997) plus the particles' own error of theirs (measured 0.048)."""
    pde, part = measured
    t = [r["t_exit"] for r in pde]
    assert t[0] < t[1] < t[2], t
    r = (t[1] - t[0]) / (t[2] - t[1])
    assert RATIO[0] < r < RATIO[1], (t, r)
    assert abs(t[2] - part["t_exit"]) <= (t[2] - t[1]) + PARTICLE_ERROR, (t, part["t_exit"])


@pytest.mark.parametrize("what", ["t_enter", "t_base_enter"])
def test_s2_entries_move_towards_the_particles(measured, what):
    """Both entries fall monotonically towards the particles' (ν 6.2636 / 6.0165 / 5.8419,
    μ 6.0434 / 5.8430 / 5.6702 against 5.6277, 5.4955): levels 3 – 5 are not yet in the
    first-order range (ratios 1.41, 1.16; 1.95, 2.32 from level 4 to 6,
    docs/experiments.md), so only the direction and the ordering are asserted here."""
    pde, part = measured
    t = [r[what] for r in pde]
    assert t[0] > t[1] > t[2] > part[what] - PARTICLE_ERROR, (t, part[what])
