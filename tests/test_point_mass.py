"""A cluster far narrower than a cell must drift as a point mass does (model.md, "A point mass").

Q = K = V = I and a tied perturbation Ṽ = I - ε e eᵀ: a point mass stays a point,
``p(t) = e^{tṼ} p0 / |e^{tṼ} p0|``, and for V = I it does not move (``X[δ_p](p) = P_p(p) = 0``).
The initial density is ``exp(κ(<x0, x> - 1))`` with ``1/√κ`` far below the cell size; the
mean direction (normalised first moment ``Σ_K ρ_K |K| c_K``) of the PDE is compared with the
point-mass ODE started from the initial mean direction.

Measured (relative error = angle(PDE mean, ODE point) / angle(ODE point, start)):

* ``flux="donor"`` on S^1, 120 cells: 0.045 % and 0.14 % of displacements of 8 - 9 cells;
  the issue's case (200 cells, ε = 0.01, T = 60, x0 at 45°): 2.3e-6 rad of 0.283.
  With the directional donor outflow each cell's mass moves at exactly ``u_K``
  (transport/_dg0.py, "First moment"), so what is left is the spread of the cluster over a
  few cells (the velocity is evaluated at the centroids, not at the point): tolerance 1 %.
* ``flux="donor"`` on S^2 (icosphere level 3, 1280 cells, h ≈ 0.1): 0.19 %, 0.14 % and
  0.085 % for three directions and sizes (tolerance 2 %); the issue's case (ε = 0.02, T = 60,
  ``scripts/point_mass_drift.py --sphere 2 --level 3``): 0.26 % of 0.41 rad (0.03 % at level 4,
  the script's default). With the plain donor
  outflow (``first_moment=False``) one cell's mass moves at 2/3 to 4/3 of its velocity: 5.8 %
  in the first case (checked below) and 41 % in the issue's case.
* ``flux="facet"`` (the vertex-velocity upwind scheme) pins the cluster: on S^1 it moves by
  5.5 % of the displacement in the issue's case and lags by 41 % in the first case below, so
  these tests fail for it (checked below).
* DG1 (:class:`~solver.transport.DGUpwind`) with its cluster zones (transport/_dg.py): 0.07 %
  and 1.1 % on S^1, 0.22 - 0.44 % on S^2 at level 3 (four cases, one with a non-symmetric
  rank-one ``dV``); without the zones 9.3 % in the first S^1 case and 94.5 % in the issue's
  case (pinned).
"""

import numpy as np
import pytest
from mpi4py import MPI
from scipy.linalg import expm
from scipy.optimize import brentq

import solver
from solver.transport import DG0Upwind, DGUpwind, NonlocalField, advance

COMM = MPI.COMM_WORLD


def angle(a: np.ndarray, b: np.ndarray) -> float:
    """Angle between two vectors, accurate for tiny angles."""
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    return 2.0 * float(np.arctan2(np.linalg.norm(a - b), np.linalg.norm(a + b)))


def mean_direction(op, rho: np.ndarray) -> np.ndarray:
    sm = op.sm
    m = COMM.allreduce((op.cell_averages(rho) * sm.areas) @ sm.centroids, op=MPI.SUM)
    return m / np.linalg.norm(m)


def drift(op, eps, T, e, x0, kappa, cfl=0.5, f=None):
    """``(ODE displacement, PDE error, base-flow displacement)`` in radians, for
    ``Ṽ = I - ε e fᵀ`` (``f = e`` by default: the symmetric rank-one case)."""
    d = op.sm.gdim
    eye = np.eye(d)
    e = np.asarray(e, float) / np.linalg.norm(e)
    f = e if f is None else np.asarray(f, float) / np.linalg.norm(f)
    x0 = np.asarray(x0, float) / np.linalg.norm(x0)
    Vt = eye - eps * np.outer(e, f)
    rho0 = op.initial_state(lambda x: np.exp(kappa * (x @ x0 - 1.0)))
    m0 = mean_direction(op, rho0)
    out = []
    for V in (eye, Vt):
        rho, info = advance(op, NonlocalField(op, solver.Model(eye, eye, V)), rho0, T, cfl)
        assert info["mass_drift"] <= 1e-12 and info["min_average"] >= 0.0, info
        out.append(mean_direction(op, rho))
    p = expm(T * Vt) @ m0
    disp = angle(p, m0)
    err, base = angle(out[1], p), angle(out[0], m0)
    if COMM.rank == 0:
        name = getattr(op, "flux", f"DG{op.degree}")
        print(f"\n{name} S^{d - 1} ({op.sm.num_cells} cells) eps={eps} T={T}: point mass "
              f"moves {disp:.4f} rad, PDE error {err:.2e} ({100 * err / disp:.3f} %), "
              f"base flow moved {base:.1e}")  # fmt: skip
    return disp, err, base


CASES_S1 = [  # (eps, T, e, x0): displacements of 7-9 cells at 120 cells
    (0.1, 10.0, (0.0, 1.0), (1.0, 1.0)),
    (0.3, 4.0, (np.cos(0.3), np.sin(0.3)), (np.cos(1.2), np.sin(1.2))),
]


@pytest.mark.parametrize("eps,T,e,x0", CASES_S1)
def test_point_mass_drift_s1(eps, T, e, x0):
    op = DG0Upwind(solver.sphere_mesh(COMM, 1, cells=120), "donor")
    h = 2 * np.pi / 120
    disp, err, base = drift(op, eps, T, e, x0, kappa=1e5)  # width 0.003 << h = 0.052
    assert disp > 5 * h
    assert err <= 0.01 * disp  # measured 0.045 %, 0.26 % (2026-12-07): 3.8x margin
    assert base <= 1e-3 * disp


CASES_S2 = [  # (eps, T, e, x0): displacements of 4-6 cells at level 3 (h ≈ 0.1)
    (0.3, 4.0, (0.0, 0.0, 1.0), (1.0, 0.3, 1.0)),
    (0.2, 5.0, (1.0, 1.0, 0.0), (0.2, 1.0, -0.6)),
    (-0.15, 5.0, (0.3, -1.0, 0.4), (1.0, -0.5, 0.5)),  # Ṽ = I + 0.15 e eᵀ: towards ±e
]


@pytest.mark.parametrize("eps,T,e,x0", CASES_S2)
def test_point_mass_drift_s2(eps, T, e, x0):
    """On triangles the donor flux alone moves one cell's mass at 2/3 - 4/3 of its velocity
    (5.8 % off in the first case); the directional outflow makes it ``u_K`` exactly."""
    op = DG0Upwind(solver.sphere_mesh(COMM, 2, refinement=3), "donor")
    h = np.sqrt(4 * np.pi / op.sm.num_cells)
    disp, err, base = drift(op, eps, T, e, x0, kappa=1e4)  # width 0.01 << h
    assert disp > 3 * h
    assert err <= 0.006 * disp  # measured 0.19 %, 0.14 %, 0.085 % (2026-12-07): 3x margin
    assert base <= 0.01 * h  # the collapse onto the mesh shifts the mean by 2e-4 - 4e-4 rad


def test_point_mass_leaves_the_delta_ball_with_its_centre():
    """The measure-level δ-state (:class:`solver.run.ClusterState`) of a point mass: it
    leaves the δ-ball about the base cluster when its centre does, ``|p(t) − p(0)| = δ``.

    Cell averages hold the point mass as a blob of about ``R`` = :func:`point_mass_radius`
    (0.19 at level 3) around its first moment; the state reads the blob at its centre
    (:func:`solver.snap_to_clusters`). Tolerance: the step in which the crossing falls (the
    state is sampled per step) plus the time the point takes to move 2 % of δ (the mean
    direction's error bound above). Read from the cells themselves (plain
    :func:`cluster_mass_outside` of the saved densities) the blob's 1 % edge crosses the
    ball much earlier: checked below, so that the test can fail. Measured: exit 6.401 against
    the point's 6.456 (tolerance 0.247); cell by cell 4.05.
    """
    eps, e, x0, delta = 0.1, np.array([0.0, 0.0, 1.0]), np.array([1.0, 0.3, 1.0]), 0.3
    sm = solver.sphere_mesh(COMM, 2, refinement=3)
    eye = np.eye(3)
    base = solver.Model(eye, eye, eye)
    pert = base.perturbed(solver.TiedLoRA(dA=np.zeros((3, 3)), dV=-eps * np.outer(e, e)))
    op = DG0Upwind(sm, "donor")
    x0, T = x0 / np.linalg.norm(x0), 8.0
    m0 = mean_direction(op, op.initial_state(lambda x: np.exp(1e4 * (x @ x0 - 1.0))))
    res = solver.evolve(sm, base, lambda x: np.exp(1e4 * (x @ x0 - 1.0)), T, perturbed=pert,
                        save_every=0.1, w2=False, progress=False, cluster_delta=delta,
                        cluster_tol=0.01)  # fmt: skip
    Vt = eye - eps * np.outer(e, e)

    def point(t):
        p = expm(t * Vt) @ m0
        return p / np.linalg.norm(p)

    t_star = brentq(lambda t: np.linalg.norm(point(t) - m0) - delta, 0.0, T)
    p = point(t_star)
    speed = np.linalg.norm(Vt @ p - (p @ Vt @ p) * p)
    steps = np.diff(res.step_times)
    step = steps[np.searchsorted(res.step_times, t_star) - 1]
    tol = step + 0.02 * delta / speed
    if COMM.rank:
        return
    assert res.t_enter == 0.0
    assert abs(res.t_exit - t_star) <= tol, (res.t_exit, t_star, tol)
    w = res.areas
    centres = [solver.density_clusters(res.centroids, d * w, w).centres for d in res.density]
    plain = [solver.cluster_mass_outside(res.centroids, d * w, c, delta)
             for d, c in zip(res.density_perturbed, centres, strict=True)]  # fmt: skip
    _, plain_exit = solver.measure_cluster_times(res.times, plain, 0.01)
    assert plain_exit < t_star - 5 * tol, (plain_exit, t_star, tol)


def test_donor_flux_without_first_moment_lags_on_triangles():
    """The same case as the first S^2 one with the plain donor outflow: 5.8 % off (3 times
    the tolerance above), so the tests above check what the directional outflow does."""
    op = DG0Upwind(solver.sphere_mesh(COMM, 2, refinement=3), "donor", first_moment=False)
    disp, err, _ = drift(op, *CASES_S2[0], kappa=1e4)
    assert 0.03 * disp <= err <= 0.12 * disp  # measured 5.8 %: a factor 2 either way


def test_facet_flux_pins_the_cluster():
    """The vertex-velocity scheme is why the donor flux exists: here the cluster lags by 41 %
    of its displacement (40 times the tolerance above); in the issue's case (ε = 0.01, the
    drift below the attraction at the facets) it moves by 5.5 % of it."""
    op = DG0Upwind(solver.sphere_mesh(COMM, 1, cells=120), "facet")
    disp, err, _ = drift(op, *CASES_S1[0], kappa=1e5)
    assert 0.2 * disp <= err <= 0.8 * disp  # measured 41 %: a factor 2 either way


@pytest.mark.parametrize("eps,T,e,x0", CASES_S1)
def test_point_mass_drift_dg1_s1(eps, T, e, x0):
    """DG1 with its cluster zones (transport/_dg.py): measured 0.07 % and 1.1 % (the fast drift
    of the second case keeps the cluster at the edge of the zone criterion; 0.87 % with a
    0/1 criterion, which is discontinuous in the data)."""
    op = DGUpwind(solver.sphere_mesh(COMM, 1, cells=120), 1)
    disp, err, base = drift(op, eps, T, e, x0, kappa=1e5)
    assert err <= 0.02 * disp
    assert base <= 1e-3 * disp


CASES_DG1_S2 = [  # (eps, T, e, x0, f): Ṽ = I - ε e fᵀ, symmetric and not
    (*CASES_S2[0], None),
    (0.25, 4.0, (1.0, -0.5, 0.2), (0.3, 1.0, 0.8), (0.2, 1.0, -0.4)),
]


@pytest.mark.parametrize("eps,T,e,x0,f", CASES_DG1_S2)
def test_point_mass_drift_dg1_s2(eps, T, e, x0, f):
    """DG1 on icosphere level 3 (h ≈ 0.1), rank-one perturbations symmetric and not: the
    cluster zones (two layers of neighbours) move a sub-cell cluster as DG0 does. Measured
    0.35 % and 0.44 % (and 0.22 %, 0.39 % for the other two S^2 cases above); with one layer
    of neighbours 3.0 % in the first case. Tolerance 2 % (the issue's bar), the base flow at
    rest within 0.5 % of the displacement (measured 1.2e-4 and 4.3e-4 rad of 0.49 / 0.52)."""
    op = DGUpwind(solver.sphere_mesh(COMM, 2, refinement=3), 1)
    h = np.sqrt(4 * np.pi / op.sm.num_cells)
    disp, err, base = drift(op, eps, T, e, x0, kappa=1e4, f=f)
    assert disp > 3 * h
    assert err <= 0.02 * disp
    assert base <= 5e-3 * disp


def test_point_mass_drift_dg2_s2():
    """DG2 with the same cluster zones, icosphere level 2 (h ≈ 0.2), the non-symmetric
    rank-one perturbation: measured 0.16 % (0.63 % for the symmetric case; S^1 at 120 cells
    0.016 % and 1.6 %; level 3 0.33 %, 11 min on a loaded machine, so level 2 here), the base
    flow moved 5.7e-4 rad of 0.53. Tolerance 2 % (the issue's bar); the base flow within
    0.5 % of the displacement."""
    op = DGUpwind(solver.sphere_mesh(COMM, 2, refinement=2), 2)
    eps, T, e, x0, f = CASES_DG1_S2[1]
    disp, err, base = drift(op, eps, T, e, x0, kappa=1e4, f=f)
    assert disp > 2 * np.sqrt(4 * np.pi / op.sm.num_cells)
    assert err <= 0.02 * disp
    assert base <= 5e-3 * disp


def test_dg1_without_cluster_zones_lags():
    """The same S^1 case without the zones lags by 9.3 % of its displacement (30 times the
    0.30 % with them; in the issue's case, ε = 0.01, it is pinned: 94.5 %), so the tests above
    check what the zones do."""
    op = DGUpwind(solver.sphere_mesh(COMM, 1, cells=120), 1, clusters=False)
    disp, err, _ = drift(op, *CASES_S1[0], kappa=1e5)
    assert 0.05 * disp <= err <= 0.2 * disp  # measured 9.3 %: a factor 2 either way


@pytest.mark.parametrize("flux", ["facet", "donor"])
@pytest.mark.parametrize("sphere,kw", [(1, {"cells": 45}), (2, {"refinement": 1})])
def test_positivity_time_step_is_exact(sphere, kw, flux):
    """``positivity_time_step`` is ``min_K |K| / o_K``, with the outflow rate ``o_K`` read off
    the right-hand side of a density concentrated in ``K`` (``dρ_K/dt = -o_K ρ_K / |K|``)."""
    if COMM.size > 1:
        pytest.skip("one cell at a time: serial")
    sm = solver.sphere_mesh(COMM, sphere, **kw)
    op = DG0Upwind(sm, flux)
    rng = np.random.default_rng(2)
    u = solver.velocity.tangent_project(op.targets, rng.normal(size=(op.num_targets, sm.gdim)))
    rate = np.empty(sm.num_owned)
    for k in range(sm.num_owned):
        e = np.zeros(sm.num_owned)
        e[k] = 1.0
        rate[k] = -op.rhs(u, e)[k]  # o_K / |K|
    dt = op.positivity_time_step(u)
    assert abs(dt - 1.0 / rate.max()) <= 1e-12 * dt
    k = int(np.argmax(rate))
    e = np.zeros(sm.num_owned)
    e[k] = 1.0
    assert (e + dt * op.rhs(u, e)).min() >= -1e-14  # just positive at the limit
    assert (e + 1.01 * dt * op.rhs(u, e)).min() < 0  # and not beyond it
    # and forward Euler at that step keeps random densities >= 0
    for _ in range(5):
        rho = rng.random(sm.num_owned) * (rng.random(sm.num_owned) < 0.5)
        assert (rho + dt * op.rhs(u, rho)).min() >= -1e-14


@pytest.mark.parametrize(
    "sphere,kw", [(1, {"cells": 45}), (2, {"refinement": 2}), (2, {"refinement": 4})]
)
def test_directional_outflow_stays_within_the_a_priori_step(sphere, kw):
    """The directional outflow of a cell is not bounded by ``|∂K| max|u|`` a priori
    (transport/_dg0.py), but for random tangent fields — independent per cell, the worst of
    smooth ones — it stays below it (measured at most 0.59 of it), so the fixed step
    ``max_time_step(U, cfl=1)`` is within the exact positivity limit; and on triangles it is
    not the plain donor outflow (``> 1.2`` times it somewhere; measured up to 1.78)."""
    sm = solver.sphere_mesh(COMM, sphere, **kw)
    op, plain = DG0Upwind(sm, "donor"), DG0Upwind(sm, "donor", first_moment=False)
    rng = np.random.default_rng(7)
    more = 0.0
    for it in range(6):
        w = rng.normal(size=(op.num_targets, sm.gdim)) if it % 2 else rng.normal(size=sm.gdim)
        u = solver.velocity.tangent_project(op.targets, np.broadcast_to(w, op.targets.shape))
        U = COMM.allreduce(float(np.linalg.norm(u, axis=1).max()), op=MPI.MAX)
        assert op.positivity_time_step(u) >= op.max_time_step(U, 1.0)
        more = max(more, plain.positivity_time_step(u) / op.positivity_time_step(u))
    if sphere == 2:
        assert more > 1.2


MPI_SCRIPT = """
import sys
import numpy as np
from mpi4py import MPI
import solver
from solver.transport import DG0Upwind, DGUpwind, NonlocalField, advance

comm = MPI.COMM_WORLD
out = {}
for sphere, kw in ((1, {"cells": 61}), (2, {"refinement": 2})):
    op = DG0Upwind(solver.sphere_mesh(comm, sphere, **kw), "donor")
    d = op.sm.gdim
    rng = np.random.default_rng(0)
    m = solver.Model(2 * np.eye(d), np.eye(d), np.eye(d) + 0.3 * rng.normal(size=(d, d)))
    x0 = np.eye(d)[0]
    s0 = op.initial_state(lambda x: np.exp(30 * (x @ x0 - 1)))
    s, _ = advance(op, NonlocalField(op, m), s0, 1.0)
    out[f"s{sphere}"] = op.sm.gather(s)
    out[f"dt{sphere}"] = np.array([op.positivity_time_step(NonlocalField(op, m)(0, 0, s))])
if comm.rank == 0:
    np.savez(sys.argv[1], **out)
"""


@pytest.mark.mpi
def test_donor_flux_one_and_two_ranks_agree(tmp_path, run):
    """The donor flux and its positivity step do not depend on the partition."""
    if COMM.size > 1:
        pytest.skip("launches mpiexec itself: run it from a single-rank pytest")
    script = tmp_path / "donor.py"
    script.write_text(MPI_SCRIPT)
    for n in (1, 2):
        p = run([str(script), str(tmp_path / f"r{n}.npz")], n)
        assert p.returncode == 0, p.stderr
    a, b = np.load(tmp_path / "r1.npz"), np.load(tmp_path / "r2.npz")
    for k in a.files:
        assert np.abs(a[k] - b[k]).max() <= 1e-12 * np.abs(a[k]).max(), k
