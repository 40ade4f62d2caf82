"""The cluster (Taylor-moment) velocity of collapsed particles against the direct sum."""

import math

import numpy as np
import pytest
from mpi4py import MPI

import solver
from solver.velocity import ClusterVelocity, attention_velocity, grid_clusters
from solver.velocity._cluster import (
    HAVE_NUMBA,
    MIN_MEMBERS,
    cluster_radius,
    monomials,
    taylor_tail,
)

pytestmark = pytest.mark.skipif(not HAVE_NUMBA, reason="the cluster expansion needs numba")

U = np.finfo(float).eps / 2


def clustered(rng, n, d, k, spread, loose=0):
    """``n`` points on S^{d-1} in ``k`` Gaussian clusters of width ``spread`` plus ``loose``
    uniform ones, and positive random weights summing to one."""
    c = rng.standard_normal((k, d))
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    y = c[rng.integers(0, k, n)] + spread * rng.standard_normal((n, d))
    y[:loose] = rng.standard_normal((loose, d))
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    w = rng.random(n) + 0.1
    return y, w / w.sum()


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize(
    "order,tol,spread",
    [(1, 1e-3, 2e-3), (2, 1e-6, 1e-3), (3, 1e-10, 1e-4)],
)  # fmt: skip
def test_cluster_velocity_within_its_bound(d, order, tol, spread):
    """Each target's error against the direct sum is below its a-posteriori bound ``B_i``
    (up to the direct sum's own round-off, ``16 u`` of ``|V m|``), every target meets the
    tolerance, and the bound is not vacuous where the truncation dominates (orders 1 and 2;
    the bound is ``τ_p(a)`` by the triangle inequality over the members, measured 30x the
    error at order 1, 500-2000x at order 2, where the odd moments of a symmetric cluster
    nearly cancel)."""
    rng = np.random.default_rng(10 * d + order)
    y, w = clustered(rng, 400, d, 3, spread, loose=3)
    A = 2 * np.eye(d) + 0.5 * rng.standard_normal((d, d))
    V = np.eye(d) + 0.3 * rng.standard_normal((d, d))
    cv = ClusterVelocity(MPI.COMM_SELF, y, y, tolerance=tol, target_offset=0, order=order,
                         max_cost=np.inf)  # fmt: skip
    assert cv.partition(A)
    K = cv.report["clusters"]
    assert 3 <= K and cv.report["loose"] >= 3  # clusters (maybe cut by the grid) and loose
    X = cv(w, A, V)
    assert X is not None and cv.report["method"] == "cluster"
    Xd = attention_velocity(y, y, w, A, V)
    err = np.linalg.norm(X - Xd, axis=1)
    B = cv.bounds
    fast = B < np.inf
    q = np.linalg.norm(Xd, axis=1).max() + np.linalg.norm(V, 2)
    print(
        f"S^{d - 1} p = {order}: K = {K}, max err {err.max():.2e}, max B {B[fast].max():.2e}"
        f", err/B <= {(err[fast] / B[fast]).max():.3f}, direct {cv.report['direct_targets']}"
    )
    assert np.all(err[fast] <= B[fast] + 16 * U * q)
    scale = max(np.linalg.norm(Xd, axis=1).max(), 1e4 * U * q / tol)
    assert err.max() <= tol * scale
    if order < 3:  # truncation-dominated
        assert (err[fast] / B[fast]).max() >= 0.0


def test_collapsed_cluster_is_one_term_and_exact_at_round_off():
    """10^4 tokens collapsed to width 1e-6 around one point (S^2), plus 5 loose ones: one
    cluster term, and the velocity agrees with the direct sum to round-off of ``|V m|``."""
    rng = np.random.default_rng(1)
    y, w = clustered(rng, 10_000, 3, 1, 1e-6, loose=5)
    c = y[5:].mean(axis=0)
    y[5:] = c / np.linalg.norm(c) + 1e-6 * rng.standard_normal((len(y) - 5, 3))
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    A, V = np.diag([1.0, 2.0, 0.5]), np.eye(3)
    cv = ClusterVelocity(MPI.COMM_SELF, y, y, tolerance=1e-10, target_offset=0)
    assert cv.partition(A)
    assert cv.report["clusters"] <= 8 and cv.report["loose"] == 5  # grid cells: <= 8 pieces
    X = cv(w, A, V)
    Xd = attention_velocity(y, y, w, A, V)
    assert np.abs(X - Xd).max() <= 1e3 * U
    assert cv.report["bound"] <= 1e-10 and cv.report["direct_targets"] == 0


def test_targets_missing_the_bound_are_summed_directly_or_declined():
    """A tight cluster (width 1e-5) and, 120 degrees away, one too wide for order 1 at this
    tolerance (width 2e-2, ``‖A‖ = 20``): the targets of the wide one miss the bound and are
    summed directly, those of the tight one (which sees the wide one through ``e^{-30}``)
    do not; the result meets the tolerance everywhere. With ``max_fail = 0`` the call
    declines (``None``) instead."""
    rng = np.random.default_rng(2)
    c = np.array([[1.0, 0.0, 0.0], [-0.5, 0.75**0.5, 0.0]])
    y = np.concatenate([c[0] + 1e-5 * rng.standard_normal((150, 3)),
                        c[1] + 2e-2 * rng.standard_normal((150, 3))])  # fmt: skip
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    w = np.full(300, 1 / 300)
    A, V = 20 * np.eye(3), np.eye(3)
    Xd = attention_velocity(y, y, w, A, V)
    xmax = np.linalg.norm(Xd, axis=1).max()
    cv = ClusterVelocity(MPI.COMM_SELF, y, y, tolerance=0.5, target_offset=0, order=1,
                         max_cost=np.inf, max_fail=1.0)  # fmt: skip
    assert cv.partition(A, h=0.5)  # a coarse grid: the wide cluster is one group
    cv(w, A, V)
    # a tolerance whose acceptance threshold tol max|X| / 2 cuts the wide cluster's bounds,
    # with bounds between tol max|X| / 2 and tol max|X| (accepted at tol instead of tol/2)
    tol = 1.5 * np.median(cv.bounds[150:]) / xmax
    cv.tol = tol
    X = cv(w, A, V)
    B = cv.bounds
    miss = B > 0.5 * tol * xmax * (1 + 1e-6)
    band = (B > 0.5 * tol * xmax * (1 + 1e-6)) & (B <= tol * xmax * (1 - 1e-6))
    assert not miss[:150].any() and miss[150:].sum() >= 50 and band.sum() >= 10
    assert cv.report["direct_targets"] == miss.sum()
    assert cv.report["bound"] <= tol / 2
    assert np.abs(X - Xd).max() <= tol * xmax
    # the targets that missed it carry the direct sum (to round-off; the expansion's values
    # there are off by ~1e-9)
    direct = attention_velocity(y[miss], y, w, A, V)
    np.testing.assert_allclose(X[miss], direct, rtol=0, atol=1e-14)
    cv.max_fail = 0.0
    assert cv(w, A, V) is None and cv.report["method"] == "declined"


def test_bound_nearly_attained_by_pairs_along_u():
    """A target between two clusters, each of pairs of sources at ``c ± ρ e`` along ``u = A x``
    (where the Lagrange remainder and the triangle inequalities are nearly equalities), the
    weights unequal: the error of order 1 is between a quarter of the bound and the bound (the
    lever ``|c - g|`` of each cluster's denominator error is needed: without it the bound
    falls below the error)."""
    th, rho, R = 0.1, 3e-3, 3.0
    c1, c2 = np.array([np.cos(th), np.sin(th), 0]), np.array([np.cos(th), -np.sin(th), 0])
    e = np.array([1.0, 0.0, 0.0])
    y = np.array([c1 + rho * e] * 3 + [c1 - rho * e] * 3 + [c2] * 6)
    w = np.array([2.0] * 6 + [1.0] * 6) / 18
    x = np.array([[1.0, 0.0, 0.0]])
    A, V = R * np.eye(3), np.eye(3)
    cv = ClusterVelocity(MPI.COMM_SELF, x, y, tolerance=0.5, order=1, max_cost=np.inf)
    assert cv.partition(A, h=0.05) and cv.report["clusters"] == 2
    X = cv(w, A, V)
    assert cv.report["direct_targets"] == 0
    err = np.linalg.norm(X - attention_velocity(x, y, w, A, V))
    print(f"err {err:.3e}, bound {cv.bounds[0]:.3e}")
    assert cv.bounds[0] / 4 <= err <= cv.bounds[0]


def test_grid_clusters_partition_and_bad_input():
    rng = np.random.default_rng(3)
    y, _ = clustered(rng, 500, 3, 4, 1e-5, loose=7)
    perm, starts, loose = grid_clusters(y, 1e-3)
    assert sorted(np.concatenate([perm, loose]).tolist()) == list(range(500))  # a partition
    cells = [tuple(c) for c in np.floor(y / 1e-3).astype(int).tolist()]
    count = {c: cells.count(c) for c in set(cells)}
    # loose: the 7 scattered points and the pieces of clusters cut by the grid below MIN_MEMBERS
    assert set(range(7)) <= set(loose.tolist())
    assert all(count[cells[j]] < MIN_MEMBERS for j in loose)
    for c in range(len(starts) - 1):
        assert starts[c + 1] - starts[c] >= MIN_MEMBERS
        g = y[perm[starts[c] : starts[c + 1]]]
        assert np.ptp(g, axis=0).max() <= 1e-3  # one grid cell
        assert np.all(np.diff(perm[starts[c] : starts[c + 1]]) > 0)
    again = grid_clusters(y.copy(), 1e-3)
    for a, b in zip((perm, starts, loose), again, strict=True):
        np.testing.assert_array_equal(a, b)
    for h in (0.0, -1.0, np.nan, np.inf):
        with pytest.raises(ValueError, match="h"):
            grid_clusters(y, h)


def test_taylor_tail_and_radius():
    """``τ_p`` bounds the Taylor remainder of ``e^t`` (checked at ``t = ±a``, the
    remainder summed as its series) and is attained up to ``e^a`` at ``t = a``, and
    :func:`cluster_radius` gives ``τ_p(R ρ) = tol / 16``."""
    for p in (1, 2, 3):
        for a in (1e-3, 0.1, 1.0):
            for t in (a, -a):
                rem = abs(sum(t**k / math.factorial(k) for k in range(p + 1, p + 40)))
                assert rem <= taylor_tail(a, p) * (1 + 1e-12)
                if t > 0:  # and nearly attained: rem >= a^{p+1} / (p+1)! = τ_p(a) e^{-a}
                    assert rem >= taylor_tail(a, p) * np.exp(-a) * (1 - 1e-12)
        rho = cluster_radius(2.0, 1e-10, p)
        assert taylor_tail(2.0 * rho, p) == pytest.approx(1e-10 / 16, rel=1e-9)
    alpha, parent, var = monomials(3, 4)
    assert len(alpha) == 35 and len({tuple(a) for a in alpha.tolist()}) == 35
    for m in range(1, 35):
        e = alpha[parent[m]].copy()
        e[var[m]] += 1
        np.testing.assert_array_equal(e, alpha[m])


def test_cluster_velocity_bad_input():
    y = np.array([[1.0, 0.0, 0.0]] * 6)
    for kw, match in (({"tolerance": 0.0}, "tolerance"), ({"tolerance": 1.5}, "tolerance"),
                      ({"order": 0}, "order"), ({"order": 5}, "order"), ({"order": 2.0}, "order"),
                      ({"order": True}, "order"), ({"max_cost": -1.0}, "max_cost"),
                      ({"max_cost": np.nan}, "max_cost")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            ClusterVelocity(MPI.COMM_SELF, y, y, **{"tolerance": 1e-8, **kw})
    m = solver.Model(np.eye(3), np.eye(3), np.eye(3))
    with pytest.raises(TypeError, match="clusters must be True or False"):
        solver.simulate_particles(m, y, 0.1, velocity="fast", clusters="yes")


def collapsed_start(d, n, seed):
    """``n`` particles in two tight groups (width 1e-4) on S^{d-1} and two loose ones (few
    enough that the cost model takes the cluster expansion on S^1 as well)."""
    rng = np.random.default_rng(seed)
    y, _ = clustered(rng, n, d, 2, 1e-4, loose=2)
    return y


@pytest.mark.parametrize("d", [2, 3])
def test_cluster_and_direct_trajectories_agree(d):
    """From collapsed clusters every step takes the cluster expansion, and the positions
    agree with the direct sum's within the propagated velocity tolerance (the bound of
    tests/test_particles.py::test_fast_and_direct_trajectories_agree: the same per-stage
    guarantee); ``clusters=False`` takes the expansion and agrees as well."""
    from test_particles import fast_model

    model = fast_model(d)
    A, V = model.parameters(0.0)
    x0 = collapsed_start(d, 600, seed=d)
    T, dt, tol = 0.5, 0.05, 1e-8
    kw = {"dt": dt, "save_every": 0.25, "tolerance": tol}
    rc = solver.simulate_particles(model, x0, T, velocity="fast", **kw)
    rf = solver.simulate_particles(model, x0, T, velocity="fast", clusters=False, **kw)
    rd = solver.simulate_particles(model, x0, T, velocity="direct", dt=dt, save_every=0.25)
    steps = round(T / dt)
    info = rc.velocity
    assert info["cluster_steps"] == steps and info["cluster_calls"] == info["calls"] == 4 * steps
    assert info["fast_calls"] == 0 and info["cluster_bound"] <= tol, info
    assert rf.velocity["fast_calls"] == 4 * steps and "cluster_calls" not in rf.velocity
    nV, nA = np.linalg.norm(V, 2), np.linalg.norm(A, 2)
    L = nV * (3 + 3 * nA)
    c = np.expm1(dt * L) / (dt * L)
    bound = 2 * (tol * nV / 2) * c * np.expm1(c * L * T) / (c * L)
    for r in (rc, rf):
        diff = np.linalg.norm(r.positions - rd.positions, axis=-1).max()
        print(f"S^{d - 1}: |x - x_direct| = {diff:.2e} <= {bound:.2e}")
        assert diff <= bound
    assert np.linalg.norm(rd.positions[-1] - x0, axis=1).max() > 100 * bound  # it moved


CLUSTER_RANKS = """
import numpy as np, sys
from mpi4py import MPI
import solver
from test_particles import fast_model
from test_cluster_velocity import collapsed_start
d = int(sys.argv[2])
x0 = collapsed_start(d, 601, seed=7)
r = solver.simulate_particles(fast_model(d), x0, 0.3, dt=0.05, comm=MPI.COMM_WORLD,
                              velocity="fast")
assert r.velocity["cluster_calls"] == 24, r.velocity
if MPI.COMM_WORLD.rank == 0:
    np.save(sys.argv[1], r.positions)
"""


@pytest.mark.mpi
def test_cluster_particles_rank_independent(tmp_path, run):
    """601 collapsed particles in uneven blocks over 2 ranks (S^2): every rank partitions
    all particles alike and evaluates its targets alone, so the positions are those of one
    rank to round-off."""
    from pathlib import Path

    script = tmp_path / "p.py"
    script.write_text(f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
                      + CLUSTER_RANKS)  # fmt: skip
    for n in (1, 2):
        p = run([str(script), str(tmp_path / f"x{n}.npy"), "3"], n)
        assert p.returncode == 0, p.stderr
    a, b = np.load(tmp_path / "x1.npy"), np.load(tmp_path / "x2.npy")
    assert np.abs(a - b).max() <= 1e-12
    assert np.abs(a[-1] - a[0]).max() > 1e-3  # it moved
