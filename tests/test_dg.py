"""Upwind DG1/DG2 on curved (P2) sphere meshes with the Zhang-Shu limiter.

Convergence on the standard transport tests, mass to round-off, no negative cell average,
1 rank = 2 ranks. Expected rates are class attributes; errors are printed in the normalised
form of Williamson et al. (1992) (run with ``-s`` to see the tables).

Cost: about 2 minutes on 2 cores by default: the Nair-Lauritzen flow at half the standard
deformation on icosphere levels 3 and 4, Williamson test 1 at levels 3 and 4, the S^1 exact
solution; the standard Nair-Lauritzen case (levels 4 and 5 under ``mpiexec -n 2``, about 4
minutes) is marked slow.
"""

import json
import textwrap

import numpy as np
import pytest
from mpi4py import MPI

import solver
import solver.run
from solver.analysis import poisson_kernel, poisson_radius, williamson1
from solver.mesh import CurvedSphereMesh, curve, curved_sphere_mesh
from solver.transport import DGUpwind, NonlocalField, PrescribedField, advance

COMM = MPI.COMM_WORLD


def rates(hs, errs):
    return np.polyfit(np.log(hs), np.log(errs), 1)[0]


def table(title, rows, keys=("l1", "l2", "linf")):
    """Print errors of successive resolutions with the observed orders between them."""
    if COMM.rank:
        return
    print(f"\n{title}")
    print(f"{'mesh':>8} {'steps':>6} " + " ".join(f"{k:>10} {'rate':>5}" for k in keys))
    prev = None
    for name, h, steps, e in rows:
        cols = []
        for k in keys:
            r = "" if prev is None else f"{np.log(prev[1][k] / e[k]) / np.log(prev[0] / h):5.2f}"
            cols.append(f"{e[k]:10.3e} {r:>5}")
        print(f"{name:>8} {steps:>6} " + " ".join(cols))
        prev = (h, e)


# ------------------------------------------------------------------------------------------
# geometry and the limiter


def test_curved_mesh_geometry():
    """P2 cells: the area of the sphere to O(h^4), same cell keys as the P1 mesh."""
    for lev in (2, 3):
        sm1 = solver.sphere_mesh(COMM, 2, refinement=lev)
        sm2 = curve(sm1)
        assert isinstance(sm2, CurvedSphereMesh) and sm2.num_cells == sm1.num_cells
        area = sm2.integrate(np.ones(sm2.num_owned))
        flat = sm1.integrate(np.ones(sm1.num_owned))
        assert abs(area - 4 * np.pi) < 0.01 * abs(flat - 4 * np.pi)
        c1, c2 = sm1.gather(sm1.centroids), sm2.gather(sm2.centroids)
        if COMM.rank == 0:
            assert np.abs(c1 - c2).max() < 0.01  # same cells in the same original order
    s1 = curved_sphere_mesh(COMM, 1, cells=40)
    assert abs(s1.integrate(np.ones(s1.num_owned)) - 2 * np.pi) < 1e-5


@pytest.mark.parametrize("sphere,kw", [(1, {"cells": 30}), (2, {"refinement": 2})])
@pytest.mark.parametrize("degree", [1, 2])
def test_limiter_keeps_averages_bitwise_and_clips(sphere, kw, degree):
    op = DGUpwind(curved_sphere_mesh(COMM, sphere, **kw), degree)
    rng = np.random.default_rng(COMM.rank)
    state = rng.normal(size=(op.sm.num_owned, op.ndofs))
    state[:, 0] = np.abs(state[:, 0]) * 0.1
    lim = op.limit(state)
    assert np.array_equal(lim[:, 0], state[:, 0])
    vals = op.point_values(lim, op.limit_points)
    assert vals.min() >= -1e-14 * np.abs(state).max()
    assert np.allclose(op.limit(lim), lim, rtol=1e-12, atol=0)
    # DG1: linear on the reference cell, so non-negative everywhere in the cell
    if degree == 1:
        import basix

        pts, _ = basix.make_quadrature(op.sm.cell_type, 6)
        assert op.point_values(lim, pts).min() >= -1e-14


@pytest.mark.parametrize("sphere,kw", [(1, {"cells": 30}), (2, {"refinement": 2})])
@pytest.mark.parametrize("degree", [1, 2])
def test_limiter_minimum_is_margin_times_mean(sphere, kw, degree):
    """Where it limits, the scaling leaves ``min_p ρ(p) = MARGIN ρ̄`` exactly (θ = ρ̄ /
    (ρ̄ - min ρ) shrunk by MARGIN, relative): measured within 1.0e-3 of MARGIN (round-off of
    ``ρ̄ + θ (ρ - ρ̄)``, 1e-15 ρ̄), asserted 5e-3; cells already above it are left bitwise."""
    from solver.transport._dg import MARGIN

    op = DGUpwind(curved_sphere_mesh(COMM, sphere, **kw), degree)
    rng = np.random.default_rng(COMM.rank)
    state = rng.normal(size=(op.sm.num_owned, op.ndofs))
    state[:, 0] = np.abs(state[:, 0]) * 0.1
    state[::4, 1:] *= 1e-3  # some cells that need no limiting
    lim = op.limit(state)
    mean = state[:, 0]
    bad = op.point_values(state, op.limit_points).min(axis=1) < MARGIN * mean
    assert 0 < bad.sum() < len(bad)
    ratio = op.point_values(lim, op.limit_points)[bad].min(axis=1) / mean[bad]
    np.testing.assert_allclose(ratio, MARGIN, rtol=5e-3, atol=0)
    np.testing.assert_array_equal(lim[~bad], state[~bad])


# ------------------------------------------------------------------------------------------
# S^1: exact solution of the nonlocal problem (uniform attention, V = I; model.md)


def s1_exact(degree, cells, r0=0.5, T=2.0):
    op = DGUpwind(curved_sphere_mesh(COMM, 1, cells=cells), degree)
    model = solver.Model(np.zeros((2, 2)), np.zeros((2, 2)), np.eye(2))
    state, info = advance(op, NonlocalField(op, model), op.initial_state(poisson_kernel(r0)), T)
    e = op.errors(state, poisson_kernel(poisson_radius(r0, T)))
    return (f"n={cells}", 2 * np.pi / cells, info["steps"], e), info


class TestExactS1:
    """DG1 and DG2 against the Poisson-kernel solution (L1 and L2 of the DG function)."""

    expected_rate = {1: 1.8, 2: 2.7}
    cells = {1: (128, 256, 512, 1024), 2: (64, 128, 256)}

    @pytest.mark.parametrize("degree", [1, 2])
    def test_convergence_order(self, degree):
        out = [s1_exact(degree, n) for n in self.cells[degree]]
        rows = [r for r, _ in out]
        table(f"S^1 exact (Poisson kernel, r0 = 0.5, T = 2), DG{degree}", rows,
              ("l1", "l2", "linf", "L1", "L2"))  # fmt: skip
        hs = [h for _, h, _, _ in rows]
        for norm in ("L1", "L2"):
            rate = rates(hs, [e[norm] for *_, e in rows])
            assert rate >= self.expected_rate[degree], (norm, rate)
        for _, info in out:
            assert info["mass_drift"] <= 1e-12 and info["min_average"] >= 0.0


# ------------------------------------------------------------------------------------------
# S^2: standard tests with prescribed velocity (exact solution at T = initial state)


def standard(case, level, degree=1, cfl=0.9):
    op = DGUpwind(curved_sphere_mesh(COMM, 2, refinement=level), degree)
    s0 = op.initial_state(case.initial)
    scale = op.sm.integrate(op.sm.cell_averages(case.initial, 10))  # states have unit mass
    state, info = advance(op, PrescribedField(op, case.velocity, case.speed), s0, case.T, cfl)
    e = op.errors(state, lambda x: case.exact(x) / scale)
    h = np.sqrt(4 * np.pi / op.sm.num_cells)
    return (f"L{level}", h, info["steps"], e), info


class StandardTest:
    case = None
    levels = (3, 4)
    expected_rate = 1.8

    def test_convergence_order(self):
        out = [standard(self.case, lev) for lev in self.levels]
        rows = [r for r, _ in out]
        table(f"{self.case.name}, T = {self.case.T:g}, DG1", rows)
        hs = [h for _, h, _, _ in rows]
        for norm in ("l1", "l2"):
            rate = rates(hs, [e[norm] for *_, e in rows])
            assert rate >= self.expected_rate, (norm, rate)
        for _, info in out:
            assert info["mass_drift"] <= 1e-12, info
            assert info["min_average"] >= 0.0, info


NL_SCRIPT = """
import json, sys
import numpy as np
from mpi4py import MPI
import solver
from solver.analysis import nair_lauritzen
from solver.mesh import curved_sphere_mesh
from solver.transport import DGUpwind, advance
from solver.transport import PrescribedField

comm = MPI.COMM_WORLD
case = nair_lauritzen(T=5.0)  # the standard case: κ = 10/T
out = []
for level in (4, 5):
    op = DGUpwind(curved_sphere_mesh(comm, 2, refinement=level), 1)
    s0 = op.initial_state(case.initial)
    scale = op.sm.integrate(op.sm.cell_averages(case.initial, 10))  # states have unit mass
    state, info = advance(op, PrescribedField(op, case.velocity, case.speed), s0, case.T, 0.9)
    e = op.errors(state, lambda x: case.exact(x) / scale)
    out.append(dict(level=level, h=float(np.sqrt(4 * np.pi / op.sm.num_cells)), info=info,
                    errors={k: float(v) for k, v in e.items()}))
if comm.rank == 0:
    json.dump(out, open(sys.argv[1], "w"))
"""


def test_ssp_rk3_is_third_order_in_time():
    """``y' = cos(t) y + sin(t)`` (non-autonomous: every stage time matters) over [0, 3]:
    the error of SSP-RK3 falls 8x per halved step (measured order 2.98-3.00 from 30 to 240
    steps); a wrong stage time (e.g. the third stage at t + dt instead of t + dt/2) makes it
    first order, which the band [2.8, 3.2] refuses."""
    from scipy.integrate import solve_ivp

    from solver.transport import ssp_rk3_step

    def rhs(t, y):
        return np.cos(t) * y + np.sin(t)

    ref = solve_ivp(rhs, (0.0, 3.0), [1.0], rtol=1e-13, atol=1e-14).y[0, -1]
    errs = []
    for n in (30, 60, 120, 240):
        y, dt = np.array([1.0]), 3.0 / n
        for k in range(n):
            y = ssp_rk3_step(rhs, y, k * dt, dt)
        errs.append(abs(y[0] - ref))
    orders = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
    assert np.all((orders > 2.8) & (orders < 3.2)), orders


NL_KAPPA = 1.0  # half the standard deformation (κ = 10/T = 2)


def test_nair_lauritzen_order():
    """The Nair-Lauritzen flow with translation (Gaussian hills, T = 5) at κ = 1, half the
    standard deformation, so that icosphere levels 3 -> 4 are already asymptotic: order in
    [1.8, 2.3] in l1 and l2 (DG1 on a smooth field: 2). Measured (2026-12-07, 1 rank):
    l1 0.1654 -> 0.0390 (2.08), l2 0.1518 -> 0.0382 (1.99); about 40 s on 2 cores. The
    standard κ = 2 needs levels 4 -> 5 (``test_nair_lauritzen_standard_order``, slow).
    Its time error stays far below the spatial one at every affordable level (a wrong
    SSP-RK3 stage time moves the level-4 l1 error by 3 % only): the time
    integrator's order is checked on its own by ``test_ssp_rk3_is_third_order_in_time``."""
    from solver.analysis import nair_lauritzen

    case = nair_lauritzen(T=5.0, kappa=NL_KAPPA)
    rows, out = [], []
    for level in (3, 4):
        row, info = standard(case, level)
        rows.append(row)
        out.append(info)
    table(f"Nair-Lauritzen flow, κ = {NL_KAPPA}, T = 5, DG1", rows)
    hs = [h for _, h, _, _ in rows]
    for norm in ("l1", "l2"):
        rate = rates(hs, [e[norm] for *_, e in rows])
        assert 1.8 <= rate <= 2.3, (norm, rate)
    for info in out:
        assert info["mass_drift"] <= 1e-12 and info["min_average"] >= 0.0, info


@pytest.mark.mpi
@pytest.mark.slow
def test_nair_lauritzen_standard_order(tmp_path, run):
    """The standard case (Gaussian hills, κ = 10/T, T = 5; Lauritzen et al. 2012) at icosphere
    levels 4 and 5 (3.8° and 1.9°), under ``mpiexec -n 2``: order >= 1.8 in l1 and l2.

    Measured: l1 0.1948 -> 0.0517 (1.91), l2 0.1882 -> 0.0539 (1.80); levels 3 -> 4 are
    pre-asymptotic (1.46 / 1.23), so the pair 4 -> 5 is the coarsest that shows the order;
    5 -> 6 (15 minutes, not run here) gives 2.53 / 2.47. Asserted: l1 >= 1.8 and l2 >= 1.4
    (the regression threshold for smooth tracers, docs conventions: the l2 pair 4 -> 5 is
    still at the edge of the asymptotic range). About 4 minutes on 2 cores: slow.
    """
    if COMM.size > 1:
        pytest.skip("launches mpiexec itself: run it from a single-rank pytest")
    script = tmp_path / "nl.py"
    script.write_text(NL_SCRIPT)
    p = run([str(script), str(tmp_path / "nl.json")], 2, timeout=1200)
    assert p.returncode == 0, p.stderr
    out = json.loads((tmp_path / "nl.json").read_text())
    rows = [(f"L{o['level']}", o["h"], o["info"]["steps"], o["errors"]) for o in out]
    table("Nair-Lauritzen deformational flow (standard, κ = 10/T), T = 5, DG1, 2 ranks", rows)
    for norm, least in (("l1", 1.8), ("l2", 1.4)):
        rate = rates([r[1] for r in rows], [r[3][norm] for r in rows])
        assert rate >= least, (norm, rate)
    for o in out:
        assert o["info"]["mass_drift"] <= 1e-12 and o["info"]["min_average"] >= 0.0, o["info"]


class TestWilliamson1(StandardTest):
    """Cosine bell, one revolution of solid-body rotation over the poles (α = π/2 - 0.05)."""

    case = williamson1(alpha=np.pi / 2 - 0.05, T=5.0)


def test_dg2_standard_positive_and_conservative():
    """DG2 with the limiter on the cosine bell (zero outside it): mass kept, averages >= 0."""
    (_, _, _, e), info = standard(williamson1(alpha=0.05, T=5.0), 2, degree=2)
    assert info["mass_drift"] <= 1e-12 and info["min_average"] >= 0.0
    assert e["l2"] < 0.6


# ------------------------------------------------------------------------------------------
# the nonlocal problem through solver.evolve


@pytest.mark.parametrize("degree", [1, 2])
def test_evolve_nonlocal_mass_positivity(monkeypatch, degree):
    """Attention dynamics on S^2 (sharpening clusters, LoRA drift) through solver.evolve."""
    op = DGUpwind(solver.sphere_mesh(COMM, 2, refinement=2), degree)
    monkeypatch.setattr(solver.run, "make_operator", lambda sm, degree=0: op)
    d = 3
    rng = np.random.default_rng(3)
    Q, K, V = 2 * np.eye(d), np.eye(d), np.eye(d) + 0.3 * rng.normal(size=(d, d))
    base = solver.Model(Q, K, V)
    pert = base.perturbed(solver.RandomLoRA(d=d, eta=0.5, h=0.2, seed=1))
    init = solver.VonMisesFisher((1.0, 0.0, 0.0), 5.0)
    T = 1.0 if degree == 1 else 0.4  # DG2: 6 sources per cell, P2 targets, 3x more steps
    res = solver.evolve(op.sm, base, init, T, perturbed=pert, cfl=0.9, progress=False,
                        degree=degree)  # fmt: skip
    for name in ("mass", "mass_perturbed"):
        assert np.abs(res.column(name) - 1.0).max() <= 1e-12
    assert res.column("min").min() >= 0.0 and res.column("min_perturbed").min() >= 0.0
    assert res.column("max")[-1] > (1.5 if degree == 1 else 1.1) * res.column("max")[0]
    assert res.column("l1_difference")[-1] > 1e-3


# ------------------------------------------------------------------------------------------
# 1 rank = 2 ranks

MPI_SCRIPT = """
import sys
import numpy as np
from mpi4py import MPI
import solver, solver.run
from solver.mesh import curved_sphere_mesh
from solver.transport import DGUpwind, advance
from solver.transport import NonlocalField

comm = MPI.COMM_WORLD
out = {}
# S^2, DG1, nonlocal attention with a LoRA-perturbed twin, through solver.evolve
op = DGUpwind(solver.sphere_mesh(comm, 2, refinement=2), 1)
solver.run.make_operator = lambda sm, degree=0: op
base = solver.Model([[2.0, 0.5, 0.0], [0.0, 1.0, 0.0], [0.3, 0.0, 1.5]], np.eye(3),
                    [[1.0, 0.2, 0.0], [0.0, 0.8, 0.1], [0.0, 0.0, 0.6]])
pert = base.perturbed(solver.RandomLoRA(d=3, eta=0.8, h=0.1, seed=2))
init = solver.VonMisesFisher((1.0, 0.0, 0.0), 4.0)
res = solver.evolve(op.sm, base, init, 0.3, perturbed=pert, save_every=0.15, progress=False,
                    degree=1)
# S^1, DG1 and DG2: the full DG state
for k in (1, 2):
    opk = DGUpwind(curved_sphere_mesh(comm, 1, cells=61), k)
    m = solver.Model([[3.0, 0.0], [1.0, 3.0]], np.eye(2), [[1.0, 0.0], [0.0, 0.5]])
    f = lambda x: np.exp(2 * x[:, 0] + np.cos(3 * np.arctan2(x[:, 1], x[:, 0])))
    s, _ = advance(opk, NonlocalField(opk, m), opk.initial_state(f), 0.5)
    out[f"s1_dg{k}"] = opk.sm.gather(s)
if comm.rank == 0:
    np.savez(sys.argv[1], density=res.density, diagnostics=res.diagnostics, **out)
"""


@pytest.mark.mpi
def test_one_and_two_ranks_agree(tmp_path, run):
    if COMM.size > 1:
        pytest.skip("launches mpiexec itself: run it from a single-rank pytest")
    script = tmp_path / "dg.py"
    script.write_text(textwrap.dedent(MPI_SCRIPT))
    for n in (1, 2):
        p = run([str(script), str(tmp_path / f"r{n}.npz")], n)
        assert p.returncode == 0, p.stderr
    a, b = np.load(tmp_path / "r1.npz"), np.load(tmp_path / "r2.npz")
    assert a.files == b.files
    for k in a.files:
        assert a[k].shape == b[k].shape, k
        scale = max(1.0, np.abs(a[k]).max())
        assert np.abs(a[k] - b[k]).max() <= 1e-12 * scale, (k, np.abs(a[k] - b[k]).max())
