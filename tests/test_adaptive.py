"""Adaptive time steps: the cost of a run follows its dynamics, not its emptiest cell.

After clustering nearly all cells are empty but still carry velocities of order ‖V‖, and the
a-priori step (``cfl · h / sup|X|``) is held by them. Adaptive stepping takes ``cfl`` times the
positivity limit of the cells that hold all but 1e-9 of the mass and caps the outflow of the
other cells at their content (``DG0Upwind.euler_step``). Checked here: positivity and mass for
any step, the same answer as fixed small steps, steps that land on saves and layer
boundaries, and far fewer steps once the mass has clustered.
"""

import numpy as np
import pytest
from mpi4py import MPI
from scipy.linalg import expm

import solver
from solver.transport import DG0Upwind, NonlocalField

COMM = MPI.COMM_WORLD


def test_capped_euler_step_is_positive_and_conservative_for_any_step():
    sm = solver.sphere_mesh(COMM, 2, refinement=2)
    op = DG0Upwind(sm)
    rng = np.random.default_rng(0)
    rho = rng.random(sm.num_owned) ** 4  # many nearly empty cells
    u = rng.normal(size=(op.num_targets, 3))
    mass = sm.integrate(rho)
    dt_pos = op.positivity_time_step(u)
    # within the positivity limit it is the plain forward-Euler step
    small = op.euler_step(u, rho, 0.5 * dt_pos)
    np.testing.assert_allclose(small, rho + 0.5 * dt_pos * op.rhs(u, rho), rtol=0, atol=1e-14)
    for dt in (3 * dt_pos, 100 * dt_pos):  # far beyond it: capped, still >= 0, same mass
        new = op.euler_step(u, rho, dt)
        assert new.min() >= 0.0
        assert abs(sm.integrate(new) - mass) <= 1e-13 * mass
        plain = rho + dt * op.rhs(u, rho)
        assert plain.min() < 0  # the uncapped step would not be positive


def test_step_limits_leave_out_only_the_light_tail():
    sm = solver.sphere_mesh(COMM, 1, cells=200)
    op = DG0Upwind(sm)
    x = sm.centroids
    rho = np.exp(400 * (x[:, 0] - 1.0))  # a bump: the far cells hold ~e^-800
    rho /= sm.integrate(rho)
    u = np.column_stack([-x[:, 1], x[:, 0]])  # rotation, |u| = 1 everywhere
    dt_pos, dt_mass = op.step_limits(u, rho, 1e-9)
    h = 2 * np.pi / 200
    # the first moment of a cell's mass moves at u_K: outflow o with o d = |K| |u_K|, d = sin h
    # the step between neighbouring centroids, so |K| / o = d
    assert dt_pos == pytest.approx(np.sin(h), rel=1e-9)
    assert dt_mass == pytest.approx(dt_pos, rel=1e-6)  # uniform speed: the same limit
    u2 = u * np.abs(x[:, :1] - 1.0)  # fast where there is no mass, slow in the bump
    dt_pos2, dt_mass2 = op.step_limits(u2, rho, 1e-9)
    assert dt_mass2 > 10 * dt_pos2
    # the cells it leaves out hold at most the tail
    out = op._outflow(u2)
    ok = sm.areas / np.where(out > 0, out, np.inf) >= dt_mass2 * (1 - 1e-12)
    assert COMM.allreduce(float((rho * sm.areas)[~ok].sum())) <= 1e-9


def point_mass_run(stepping, cells=100, eps=0.05, T=30.0, save_every=None):
    sm = solver.sphere_mesh(COMM, 1, cells=cells)
    eye = np.eye(2)
    base = solver.Model(eye, eye, eye)
    pert = base.perturbed(solver.TiedLoRA(dA=np.zeros((2, 2)), dV=-eps * np.diag([0.0, 1.0])))
    x0 = np.array([1.0, 1.0]) / np.sqrt(2)
    res = solver.evolve(sm, base, lambda x: np.exp(1e4 * (x @ x0 - 1)), T, perturbed=pert,
                        stepping=stepping, save_every=save_every, progress=False)  # fmt: skip
    m = np.array([res.column("moment_perturbed_x"), res.column("moment_perturbed_y")])
    p = expm(T * (eye - eps * np.diag([0.0, 1.0]))) @ m[:, 0]
    return res, m[:, -1], p, m[:, 0]


def angle(a, b):
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    return 2.0 * float(np.arctan2(np.linalg.norm(a - b), np.linalg.norm(a + b)))


def test_adaptive_matches_fixed_steps_on_a_drifting_cluster():
    """The perturbed cluster drifts by 0.566 rad (9 cells); adaptive and fixed steps end at
    the same place, with several times fewer steps. Measured (2026-12-07): adaptive vs fixed
    1.5e-6 rad, both 3.2-3.4e-5 from the point mass, 97 against 1063 steps; with every
    adaptive step doubled (cfl 1.8: capped stages) they are 8.3e-4 apart. Asserted: 5e-6
    and 1e-4 (3x the measured values)."""
    fixed, mf, p, m0 = point_mass_run("fixed")
    adapt, ma, _, _ = point_mass_run("adaptive")
    disp = angle(p, m0)
    print(f"displacement {disp:.4f}; fixed: {len(fixed.step_times) - 1} steps, error "
          f"{angle(mf, p):.2e}; adaptive: {len(adapt.step_times) - 1} steps, error "
          f"{angle(ma, p):.2e}, {angle(ma, mf):.2e} from fixed")  # fmt: skip
    assert 0.5 < disp < 0.6
    assert angle(ma, mf) <= 5e-6
    assert angle(ma, p) <= 1e-4 and angle(mf, p) <= 1e-4
    assert len(adapt.step_times) * 5 < len(fixed.step_times)
    for r in (fixed, adapt):
        assert r.column("min").min() >= 0 and r.column("min_perturbed").min() >= 0
        assert np.abs(r.column("mass_perturbed") - 1).max() <= 1e-12


def test_steps_land_on_saves_and_layer_boundaries():
    sm = solver.sphere_mesh(COMM, 1, cells=64)
    eye = np.eye(2)
    base = solver.Model(2 * eye, eye, eye)
    pert = base.perturbed(solver.RandomLoRA(d=2, eta=0.5, h=0.13, seed=3))
    res = solver.evolve(sm, base, solver.VonMisesFisher((1.0, 0.0), 3.0), 1.0, perturbed=pert,
                        save_every=0.25, progress=False)  # fmt: skip
    t = res.step_times
    for event in [*np.arange(0.13, 1.0, 0.13), 0.25, 0.5, 0.75, 1.0]:
        assert np.min(np.abs(t - event)) == 0.0, event  # exactly, not to round-off
    np.testing.assert_array_equal(res.times, [0.0, 0.25, 0.5, 0.75, 1.0])
    assert np.all(np.diff(t) > 0)


def test_nonlocal_field_shape_for_the_donor_flux():
    """The donor flux evaluates the velocity at the owned cell centroids."""
    sm = solver.sphere_mesh(COMM, 2, refinement=1)
    op = DG0Upwind(sm)
    f = NonlocalField(op, solver.Model(np.eye(3), np.eye(3), np.eye(3)))
    assert f(0.0, 0.0, op.initial_state(lambda x: 1 + x[:, 0])).shape == (sm.num_owned, 3)


def test_clock_reaches_an_end_time_that_is_not_a_round_number():
    """``T = 152 * 0.1 = 15.200000000000001``: the last event is ``T`` itself (saves are
    rounded to 1e-12, ``T`` is not), so a run never steps past its event list."""
    from solver.transport import Clock

    T = 152 * 0.1
    clock = Clock(T, 0.1)
    assert clock.events[-1] == T and len(clock.saves) == 153
    t, n = 0.0, 0
    while t < T:
        _, t = clock.land(t, 0.03)
        n += 1
    assert t == T and n == 152 * 4


def test_dg1_adaptive_steps_follow_the_mass():
    """DG1 takes adaptive steps as DG0 does (``DGUpwind.step_limits`` / ``euler_step``: the
    positivity step of each cell with its own speed, the lightest cells capped): the Fig 3
    style point mass on S^2 (level 2, ε = 0.3, T = 6) ends where fixed steps put it (measured
    1.3e-4 rad apart; bound 6e-4), with 137 steps instead of 188 (bound: 0.85 of them), mass to
    round-off and no negative average (a capped cell whose outflow is not scaled goes
    negative and stops the run)."""
    eye, e = np.eye(3), np.array([0.0, 0.0, 1.0])
    x0 = solver.normalize(np.array([1.0, 0.3, 1.0]))
    base = solver.Model(eye, eye, eye)
    pert = base.perturbed(solver.TiedLoRA(dA=np.zeros((3, 3)), dV=-0.3 * np.outer(e, e)))
    sm = solver.sphere_mesh(COMM, 2, refinement=2)

    def init(x):  # a background of 2e-10 of the mass: light cells that adaptive steps cap
        return np.exp(1e4 * (x @ x0 - 1.0)) + 1e-14

    out, steps = {}, {}
    for stepping in ("adaptive", "fixed"):
        res = solver.evolve(sm, base, init, 6.0, perturbed=pert, degree=1, stepping=stepping,
                            w2=False, progress=False, cluster_delta=None)  # fmt: skip
        if COMM.rank == 0:
            assert np.abs(res.column("mass_perturbed") - 1).max() <= 1e-12
            assert res.column("min_perturbed").min() >= 0.0
            m = (np.asarray(res.density_perturbed[-1]) * res.areas) @ res.centroids
            out[stepping] = m / np.linalg.norm(m)
            steps[stepping] = len(res.step_times) - 1
    if COMM.rank == 0:
        gap = np.arccos(min(1.0, out["adaptive"] @ out["fixed"]))
        print(f"DG1 adaptive vs fixed: {gap:.2e} rad, steps {steps}")
        assert gap <= 6e-4
        assert steps["adaptive"] <= 0.85 * steps["fixed"]


@pytest.mark.parametrize("sphere,kw", [(1, {"cells": 40}), (2, {"refinement": 2})])
def test_dg1_capped_euler_step_is_positive_for_any_step(sphere, kw):
    """``DGUpwind.euler_step`` at 5 times the positivity step of every cell: the capped cells
    send out at most their content, so no average goes negative and the mass is kept, where
    the plain Euler stage at that step empties cells below zero (checked, so the test can
    fail)."""
    op = solver.transport.DGUpwind(solver.sphere_mesh(COMM, sphere, **kw), 1)
    rng = np.random.default_rng(4)
    u = solver.tangent_project(op.targets, rng.normal(size=(op.num_targets, op.sm.gdim)))
    state = op.initial_state(lambda x: np.exp(3 * x @ np.eye(op.sm.gdim)[0]))
    dt = 5 * op.positivity_time_step(u)
    capped = op.euler_step(u, state, dt)
    mass = op.sm.integrate(state[:, 0])
    assert abs(op.sm.integrate(capped[:, 0]) - mass) <= 1e-13 * mass
    assert COMM.allreduce(float(capped[:, 0].min()), op=MPI.MIN) >= 0.0
    plain = state + dt * op.rhs(u, state)
    assert COMM.allreduce(float(plain[:, 0].min()), op=MPI.MIN) < 0.0
