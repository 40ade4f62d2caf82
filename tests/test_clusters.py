"""Cluster diagnostics on the sphere: clusters, δ-cluster state, entry/exit times, drift."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.integrate import quad
from scipy.optimize import brentq
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

import solver
import solver.analysis._clusters as C
from solver.analysis._clusters import _walks
from solver.model import VonMisesFisher
from solver.run import ClusterState


def vmf_s2(rng, n, mu, kappa):
    """n samples of the von Mises-Fisher law on S^2 (the library's exact sampler)."""
    return VonMisesFisher(tuple(np.asarray(mu, float)), float(kappa)).sample(n, 3, rng)


def fibonacci_sphere(n):
    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    phi = np.pi * (1 + np.sqrt(5)) * i
    r = np.sqrt(1 - z**2)
    return np.column_stack((r * np.cos(phi), r * np.sin(phi), z))


def unit(v):
    v = np.asarray(v, float)
    return v / np.linalg.norm(v)


@pytest.fixture(scope="module")
def two_clouds():
    # κ = 1000: geodesic spread ~ 1/√κ = 0.03, so no point is farther than ~0.15 from its
    # centre (P(θ > 0.15) = e^{-κ 0.15²/2} ~ 1e-5 per point); the centres are π/2 apart.
    rng = np.random.default_rng(0)
    a = vmf_s2(rng, 300, [0, 0, 1], 1000.0)
    b = vmf_s2(rng, 100, [1, 0, 0], 1000.0)
    return a, b


def test_two_vmf_clouds(two_clouds):
    a, b = two_clouds
    x = np.vstack((a, b))
    cl = C.find_clusters(x, None, radius=0.1)
    assert len(cl) == 2
    np.testing.assert_allclose(cl.masses, [0.75, 0.25], rtol=0, atol=1e-14)
    # centres are the normalised means of the clouds, exactly
    np.testing.assert_allclose(cl.centres[0], C.cluster_direction(a), atol=1e-14)
    np.testing.assert_allclose(cl.centres[1], C.cluster_direction(b), atol=1e-14)
    # ... and close to the true directions: the mean direction of n vMF samples deviates by
    # ~ 1/√(κ n) (2e-3 and 3e-3 here); allow 5 standard deviations
    assert C.direction_drift(cl.centres[0], [0, 0, 1]) < 5 / np.sqrt(1000 * 300)
    assert C.direction_drift(cl.centres[1], [1, 0, 0]) < 5 / np.sqrt(1000 * 100)
    np.testing.assert_array_equal(cl.labels, np.repeat([0, 1], [300, 100]))
    assert np.allclose(np.linalg.norm(cl.centres, axis=1), 1.0)


def test_clusters_do_not_depend_on_the_order(two_clouds):
    x = np.vstack(two_clouds)
    w = np.random.default_rng(1).uniform(0.5, 1.5, x.shape[0])
    ref = C.find_clusters(x, w, radius=0.1)
    for seed in range(3):
        perm = np.random.default_rng(seed).permutation(x.shape[0])
        cl = C.find_clusters(x[perm], w[perm], radius=0.1)
        np.testing.assert_allclose(cl.centres, ref.centres, atol=1e-14)
        np.testing.assert_allclose(cl.masses, ref.masses, atol=1e-14)
        np.testing.assert_array_equal(cl.labels, ref.labels[perm])


def test_weighted_mesh_like_density():
    # cell centroids of a quasi-uniform point set with a density made of two bumps of
    # different widths on a uniform background carrying ~5% of the mass
    x = fibonacci_sphere(6000)
    p1, p2 = unit([0, 0.2, 1]), unit([1, -0.5, 0])
    w = np.exp(60 * (x @ p1 - 1)) + 0.4 * np.exp(150 * (x @ p2 - 1))
    w += 0.05 * w.sum() / w.size
    cl = C.find_clusters(x, w, radius=0.1, min_mass=0.01)
    assert len(cl) == 2
    # the centres lie on the bump axes up to the asymmetry of the mesh (spacing ~0.05) and of
    # the background each basin captures (measured: 1e-3 and 2e-4)
    assert C.direction_drift(cl.centres[0], p1) < 0.01
    assert C.direction_drift(cl.centres[1], p2) < 0.01
    # bump masses: ∫ e^{κ(cos θ - 1)} dA ≈ 2π/κ, so the two bumps carry 2π/60 : 0.4·2π/150
    # = 0.104 : 0.0168 of the bump mass; the basins add part of the background
    bump = np.array([2 * np.pi / 60, 0.4 * 2 * np.pi / 150])
    frac = 0.95 * bump / bump.sum()
    assert np.all(cl.masses >= frac - 1e-3)
    assert cl.masses.sum() <= 1.0
    # without the mass cut the background shows up as many light clusters
    assert len(C.find_clusters(x, w, radius=0.1, min_mass=0.0)) > 2


def test_close_clusters_merge_and_zero_weights():
    base = unit([0, 0, 1])
    x = np.array([base, unit([0.05, 0, 1]), unit([0.0, 0.06, 1]), unit([1, 0, 0]), unit([0, 1, 0])])
    w = np.array([2.0, 1.0, 1.0, 1.0, 0.0])
    # the three points near the pole are within r of each other: one cluster
    cl = C.find_clusters(x, w, radius=0.2, min_mass=0.0)
    assert len(cl) == 2
    np.testing.assert_allclose(cl.masses, [0.8, 0.2], atol=1e-15)
    np.testing.assert_array_equal(cl.labels, [0, 0, 0, 1, -1])
    np.testing.assert_allclose(cl.centres[0], C.cluster_direction(x[:3], w[:3]), atol=1e-15)
    # with a radius below their separation they split
    assert len(C.find_clusters(x, w, radius=0.01, min_mass=0.0)) == 4
    # min_mass drops the light ones and labels their points -1
    cl = C.find_clusters(x, w, radius=0.01, min_mass=0.3)
    assert len(cl) == 1 and cl.masses[0] == pytest.approx(0.4)
    np.testing.assert_array_equal(cl.labels, [0, -1, -1, -1, -1])


def test_find_clusters_validation():
    x = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    with pytest.raises(ValueError, match="radius"):
        C.find_clusters(x, None, radius=0.0)
    with pytest.raises(ValueError, match="min_mass"):
        C.find_clusters(x, None, min_mass=1.0)
    with pytest.raises(ValueError, match="w must be non-negative"):
        C.find_clusters(x, [1.0, -1.0])
    with pytest.raises(ValueError, match="x contains the zero vector"):
        C.find_clusters(np.zeros((2, 3)), None)


def test_delta_cluster_state():
    c = np.array([[1.0, 0.0], [-1.0, 0.0]])
    th = np.array([0.05, -0.08, np.pi + 0.02])
    x = np.column_stack((np.cos(th), np.sin(th)))
    # chordal distances 2 sin(|θ|/2): 0.0499948, 0.0799787, 0.0199993 -> max 0.0799787
    assert C.delta_cluster_state(x, c, delta=0.1)
    assert C.delta_cluster_state(x, c, delta=0.08)
    assert not C.delta_cluster_state(x, c, delta=0.0799)
    # strict inequality at the boundary: a point at distance exactly δ is not inside
    y = np.array([[1.0, 0.5]])
    assert not C.delta_cluster_state(y, [[1.0, 0.0]], delta=0.5)
    assert C.delta_cluster_state(y, [[1.0, 0.0]], delta=0.5 + 1e-12)
    # Euclidean, not geodesic: chord 2 sin(0.1/2) = 0.09996 < 0.1 while the arc is 0.1
    z = np.array([[np.cos(0.1), np.sin(0.1)]])
    assert C.delta_cluster_state(z, [[1.0, 0.0]], delta=0.1)
    # a far point with negligible mass is ignored only when weights are given
    far = np.vstack((x, [[0.0, 1.0]]))
    w = np.array([0.3, 0.3, 0.4, 1e-14])
    assert not C.delta_cluster_state(far, c, delta=0.1)
    assert not C.delta_cluster_state(far, c, delta=0.1, w=w)
    assert C.delta_cluster_state(far, c, delta=0.1, w=w, mass_tol=1e-12)


def test_delta_cluster_state_threshold_is_the_max_min_distance():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((50, 3))
    centres = rng.standard_normal((4, 3))
    dmax = np.max(np.min(np.linalg.norm(x[:, None] - centres[None], axis=2), axis=1))
    assert C.delta_cluster_state(x, centres, delta=dmax * (1 + 1e-12))
    assert not C.delta_cluster_state(x, centres, delta=dmax)


def test_delta_cluster_state_validation():
    with pytest.raises(ValueError, match="centres"):
        C.delta_cluster_state(np.zeros((2, 3)), np.zeros((1, 2)))
    with pytest.raises(ValueError, match="delta"):
        C.delta_cluster_state(np.zeros((2, 3)), np.zeros((1, 3)), delta=0.0)
    with pytest.raises(ValueError, match="w must be"):
        C.delta_cluster_state(np.zeros((2, 3)), np.zeros((1, 3)), w=[1.0])


def test_cluster_times():
    t = np.linspace(0.0, 6.0, 7)
    assert C.cluster_times(t, [0, 0, 1, 1, 1, 0, 1]) == (2.0, 5.0)
    enter, exit_ = C.cluster_times(t, [0, 0, 0, 1, 1, 1, 1])
    assert enter == 3.0 and np.isnan(exit_)
    enter, exit_ = C.cluster_times(t, np.zeros(7, bool))
    assert np.isnan(enter) and np.isnan(exit_)
    assert C.cluster_times(t, [1, 0, 1, 1, 1, 1, 1]) == (0.0, 1.0)
    # a synthetic trajectory: a particle approaches the base cluster at c = e_1 (distance
    # e^{-t}) and a drift of speed ε takes it away again: |x(t) - c| = e^{-t} + ε t,
    # state = |x - c| < δ
    eps, delta, dt = 1e-3, 0.1, 0.25
    tt = np.arange(0, 200 + dt / 2, dt)
    dist = np.exp(-tt) + eps * tt
    states = [C.delta_cluster_state(np.array([[1.0 + d, 0.0]]), [[1.0, 0.0]], delta) for d in dist]
    enter, exit_ = C.cluster_times(tt, states)
    # exact crossings of e^{-t} + εt = δ: near ln(1/δ) = 2.3 and δ/ε = 100; on the grid the
    # entry/exit is the first sample at or after the crossing
    t1 = brentq(lambda t: np.exp(-t) + eps * t - delta, 0, 10)
    t2 = brentq(lambda t: np.exp(-t) + eps * t - delta, 10, 200)
    assert t1 <= enter < t1 + dt
    assert t2 <= exit_ < t2 + dt
    with pytest.raises(ValueError, match="non-decreasing"):
        C.cluster_times([0.0, 2.0, 1.0], [1, 1, 1])
    with pytest.raises(ValueError, match="equal length"):
        C.cluster_times([0.0, 1.0], [1])


def test_cluster_direction_and_drift():
    x = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    np.testing.assert_allclose(C.cluster_direction(x), unit([1, 1, 0]), atol=1e-15)
    np.testing.assert_allclose(C.cluster_direction(x, [3.0, 1.0]), unit([3, 1, 0]), atol=1e-15)
    u, v = unit([1, 0, 0]), unit([np.cos(0.2), np.sin(0.2), 0])
    assert C.direction_drift(u, v) == pytest.approx(2 * np.sin(0.1), abs=1e-15)
    assert C.direction_drift(u, u) == 0.0
    with pytest.raises(ValueError, match="undefined"):
        C.cluster_direction(np.array([[1.0, 0, 0], [-1.0, 0, 0]]))
    with pytest.raises(ValueError, match="equal shape"):
        C.direction_drift([1.0, 0.0], [1.0, 0.0, 0.0])


# --- the measure-level δ-cluster state and mode finding on a mesh --------------------------


def particle_trajectory(rng, nt=41, n=60):
    """Particles contracting onto two centres, then a drift of speed 0.004 carries them off:
    ``x_i(t) = (c_i + e^{-t} a_i + 0.004 t b) / |…|`` (positions (nt, n, 3), centres (2, 3))."""
    centres = np.array([unit([0, 0, 1]), unit([1, 0.2, 0])])
    a = rng.standard_normal((n, 3))
    b = unit([0, 1, 0.3])
    times = np.linspace(0, 40, nt)
    pos = centres[np.arange(n) % 2][None] + np.exp(-times)[:, None, None] * a[None]
    pos = pos + 0.004 * times[:, None, None] * b
    return times, pos / np.linalg.norm(pos, axis=2, keepdims=True), centres


def max_min_distance(pos, centres):
    return np.max(np.min(np.linalg.norm(pos[..., None, :] - centres, axis=-1), axis=-1), axis=-1)


def test_mass_outside_is_the_particle_criterion():
    rng = np.random.default_rng(3)
    times, pos, centres = particle_trajectory(rng)
    n = pos.shape[1]
    D = max_min_distance(pos, centres)
    dist = np.min(np.linalg.norm(pos[..., None, :] - centres, axis=-1), axis=-1)
    for delta in (0.05, 0.1, 0.3, D[-1], float(np.median(D))):
        m = solver.cluster_mass_outside(pos, None, centres, delta)
        # the fraction of particles at distance >= δ, exactly
        np.testing.assert_array_equal(m * n, np.sum(dist >= delta, axis=1))
        for k, x in enumerate(pos):
            state = solver.delta_cluster_state(x, centres, delta)
            assert solver.cluster_mass_outside(x, None, centres, delta) == m[k]
            for tol in (0.0, 0.5 / n, (1 - 1e-9) / n):
                assert (m[k] <= tol) == state
            # equal weights of any normalisation
            assert solver.cluster_mass_outside(x, np.full(n, 7.0), centres, delta) == m[k]
        # entry/exit on the same samples as the particle criterion D < δ
        for tol in (0.0, 0.5 / n):
            te, tx = solver.measure_cluster_times(times, m, tol)
            ke, kx = solver.cluster_times(times, D < delta)
            for t, tk in ((te, ke), (tx, kx)):
                if np.isnan(tk):
                    assert np.isnan(t)
                else:  # interpolated within the sample interval that ends at the change
                    k = int(np.searchsorted(times, tk))
                    assert times[max(k - 1, 0)] <= t <= tk
    # δ = 0.1: enters (e^{-t}|a_i| < 0.1 - 0.004 t), then the drift takes it out (t ~ 25)
    te, tx = solver.measure_cluster_times(
        times, solver.cluster_mass_outside(pos, None, centres, 0.1)
    )
    assert 0 < te < tx < times[-1]


def test_mass_outside_weights_and_times():
    x = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    c = np.array([[1.0, 0, 0]])
    # chordal distances 0, √2, √2
    assert solver.cluster_mass_outside(x, [2.0, 1.0, 1.0], c, 1.0) == 0.5
    assert solver.cluster_mass_outside(x, [2.0, 1.0, 1.0], c, np.sqrt(2) + 1e-12) == 0.0
    # closed complement: a point at distance exactly δ is outside (particle state: < δ)
    y = np.array([[1.0, 0.5]])
    assert solver.cluster_mass_outside(y, None, [[1.0, 0.0]], 0.5) == 1.0
    # a time axis on the weights (fixed centroids, changing density)
    w = np.array([[1.0, 0, 0], [1.0, 1.0, 2.0], [0.0, 3.0, 1.0]])
    np.testing.assert_array_equal(solver.cluster_mass_outside(x, w, c, 1.0), [0.0, 0.75, 1.0])
    with pytest.raises(ValueError, match="non-negative"):
        solver.cluster_mass_outside(x, [1.0, -1.0, 1.0], c, 1.0)
    with pytest.raises(ValueError, match="positive total"):
        solver.cluster_mass_outside(x, [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]], c, 1.0)
    with pytest.raises(ValueError, match="centres"):
        solver.cluster_mass_outside(x, None, np.zeros((1, 2)), 1.0)
    with pytest.raises(ValueError, match="delta"):
        solver.cluster_mass_outside(x, None, c, 0.0)
    with pytest.raises(ValueError, match="weights must be"):
        solver.cluster_mass_outside(x, np.ones(2), c, 1.0)


def test_atoms_distance_is_the_wasserstein_distance_to_the_atoms():
    """``W_p(μ, P(C))``: exact optimal transport (POT, chordal cost) from ``μ`` to its
    nearest-atom push-forward equals it, and to any other measure on ``C`` is no smaller;
    1-Lipschitz in ``W_p(μ, μ')`` (a distance to a set: to round-off); ``p = ∞`` is the
    particle criterion ``max min |x - c|`` over the atoms of positive weight; hand values,
    time axes, bad ``p`` refused."""
    import ot

    rng = np.random.default_rng(8)
    centres = np.array([unit([1, 0, 0]), unit([0, 1, 1]), unit([-1, 0.2, 0])])
    x = np.vstack([vmf_s2(rng, 40, c, 30.0) for c in centres] + [vmf_s2(rng, 10, [0, 0, 1], 1)])
    w = rng.uniform(0.2, 1.0, len(x))
    a = w / w.sum()
    chord = np.linalg.norm(x[:, None] - centres[None], axis=-1)
    near = np.argmin(chord, axis=1)
    for p in (1.0, 2.0, 3.5):
        D = solver.atoms_distance(x, w, centres, p)
        push = np.bincount(near, weights=a, minlength=3)
        assert ot.emd2(a, push, chord**p) ** (1 / p) == pytest.approx(D, rel=1e-12)
        for _ in range(5):  # any other measure on the atoms is farther
            other = rng.dirichlet(np.ones(3))
            assert ot.emd2(a, other, chord**p) ** (1 / p) >= D * (1 - 1e-12)
        # μ' = μ moved: |D(μ) - D(μ')| <= W_p(μ, μ') (chordal cost, exact)
        y = Rotation.from_rotvec(0.05 * rng.normal(size=3)).apply(x[::-1])
        b = rng.uniform(0.2, 1.0, len(y))
        Wp = ot.emd2(a, b / b.sum(), np.linalg.norm(x[:, None] - y[None], axis=-1) ** p)
        gap = abs(D - solver.atoms_distance(y, b, centres, p))
        assert 0.01 * Wp ** (1 / p) < gap <= Wp ** (1 / p) * (1 + 1e-9)
    # p = ∞: the particle criterion over the atoms of positive weight
    w0 = w.copy()
    w0[-10:] = 0.0  # the spread atoms carry no mass
    dmin = chord.min(axis=1)
    assert solver.atoms_distance(x, w0, centres, np.inf) == dmin[:-10].max()
    assert solver.atoms_distance(x, None, centres, np.inf) == dmin.max()
    assert solver.delta_cluster_state(x, centres, dmin.max() * (1 + 1e-12))
    # hand values: distances 0, √2, √2 with weights 2, 1, 1 -> (2·0 + 2·2^{p/2}) / 4
    e = np.eye(3)
    for p in (1.0, 2.0, 4.0):
        want = (0.5 * np.sqrt(2) ** p) ** (1 / p)
        got = solver.atoms_distance(e, [2.0, 1.0, 1.0], e[:1], p)
        assert got == pytest.approx(want, rel=1e-15)
    # a time axis on the weights (fixed centroids), and on the points
    wt = np.array([[1.0, 0, 0], [1.0, 1.0, 2.0]])
    np.testing.assert_allclose(solver.atoms_distance(e, wt, e[:1]), [0.0, np.sqrt(1.5)],
                               rtol=1e-15)  # fmt: skip
    xt = np.stack([x, x[::-1]])
    np.testing.assert_allclose(solver.atoms_distance(xt, None, centres),
                               solver.atoms_distance(x, None, centres), rtol=1e-15)  # fmt: skip
    for bad in (0.5, np.nan, -np.inf):
        with pytest.raises(ValueError, match="p must be"):
            solver.atoms_distance(x, w, centres, bad)
    with pytest.raises(ValueError, match="non-negative"):
        solver.atoms_distance(e, [1.0, -1.0, 1.0], e[:1])


def test_cluster_reach_is_the_state_at_every_delta():
    """``q_tol < δ`` exactly when ``m_δ <= tol``, for every δ (ties and δ at an atom's own
    distance included); equal weights with ``tol < 1/n``: the particle criterion's max-min
    distance; a time axis on points or weights; bad ``tol`` refused."""
    rng = np.random.default_rng(5)
    times, pos, centres = particle_trajectory(rng)
    n = pos.shape[1]
    dist = np.min(np.linalg.norm(pos[..., None, :] - centres, axis=-1), axis=-1)
    np.testing.assert_array_equal(solver.cluster_reach(pos, None, centres, 0.5 / n),
                                  max_min_distance(pos, centres))  # fmt: skip
    x = pos[3]
    w = rng.uniform(0.0, 1.0, n)
    w[::5] = 0.0  # atoms of no mass
    w[1] = w[2]  # and equal weights at equal distances below
    x[2] = x[1]
    for tol in (0.0, 0.05, 0.3, float(w[w > 0].min() / w.sum()), 0.99):
        q = solver.cluster_reach(x, w, centres, tol)
        assert q in np.min(np.linalg.norm(x[:, None] - centres, axis=-1), axis=1)
        for delta in np.r_[np.sort(dist[3]), q, np.nextafter(q, 3.0), 0.5 * q, 1.5]:
            if delta > 0:
                m = solver.cluster_mass_outside(x, w, centres, delta)
                assert (m <= tol) == (q < delta), (tol, delta, m, q)
    # time axes: on the points, and on the weights over fixed atoms
    q = solver.cluster_reach(pos, w, centres, 0.1)
    assert q.shape == times.shape
    assert q[4] == solver.cluster_reach(pos[4], w, centres, 0.1)
    wt = np.stack([w, w[::-1]])
    each = [solver.cluster_reach(x, v, centres, 0.1) for v in wt]
    np.testing.assert_array_equal(solver.cluster_reach(x, wt, centres, 0.1), each)
    # split over "ranks": the farthest atoms of each part decide the reach of the whole
    from solver.analysis import centre_distances, mass_reach, reach_candidates

    d = centre_distances(x, centres)
    for tol in (0.0, 0.05, 0.3, 0.99):
        parts = [reach_candidates(d[k::3], w[k::3], tol, w.sum()) for k in range(3)]
        union = [np.concatenate(a) for a in zip(*parts, strict=True)]
        assert mass_reach(*union, tol, w.sum()) == solver.cluster_reach(x, w, centres, tol)
        assert sum(len(p[0]) for p in parts) < n or tol == 0.99
    # a collapsed cluster's thousands of equal centres: the same distances as one of each
    many = np.repeat(centres, 500, axis=0)
    np.testing.assert_array_equal(solver.analysis.centre_distances(pos, many),
                                  solver.analysis.centre_distances(pos, centres))  # fmt: skip
    assert solver.cluster_reach(x, w, many, 0.1) == solver.cluster_reach(x, w, centres, 0.1)
    for bad in (-0.1, 1.0, np.nan):
        with pytest.raises(ValueError, match="tol"):
            solver.cluster_reach(x, w, centres, bad)
    with pytest.raises(ValueError, match="non-negative"):
        solver.cluster_reach(x, -w, centres, 0.1)


def test_crossing_times_interpolate():
    t = np.linspace(0.0, 4.0, 5)
    f = np.array([1.0, 0.6, 0.2, 0.4, 0.8])  # <= 0.5 on [1.25, 3.25] (piecewise linear)
    assert solver.crossing_times(t, f, 0.5) == pytest.approx((1.25, 3.25), abs=1e-15)
    assert solver.measure_cluster_times(t, f, 0.5) == pytest.approx((1.25, 3.25), abs=1e-15)
    # the state at the first sample: t_0; no exit: nan; never: nan, nan
    te, tx = solver.crossing_times(t, [0.1, 0.2, 0.2, 0.3, 0.4], 0.5)
    assert te == 0.0 and np.isnan(tx)
    assert np.all(np.isnan(solver.crossing_times(t, np.ones(5), 0.5)))
    # strict: f < level (the particle criterion D < δ); f = level counts as outside
    assert solver.crossing_times(t, [1.0, 0.5, 0.5, 0.0, 1.0], 0.5) == (1.0, 3.5)
    assert solver.crossing_times(t, [1.0, 0.5, 0.5, 0.0, 1.0], 0.5, strict=True) == (2.0, 3.5)
    with pytest.raises(ValueError, match="fractions"):
        solver.measure_cluster_times(t, f + 1.0, 0.5)
    with pytest.raises(ValueError, match="tol"):
        solver.measure_cluster_times(t, f, 1.0)


# Cell masses of a density on a rotated icosphere: the flat triangle is mapped onto the sphere
# by y = p/|p| (area element |n·p|/|p|^3 dA_flat), integrated by Dunavant's 7-point rule of
# degree 5 (barycentric points, weights summing to 1).
_A1, _B1, _A2, _B2 = 0.059715871789770, 0.470142064105115, 0.797426985353087, 0.101286507323456
_BARY = np.array([[1 / 3] * 3, [_A1, _B1, _B1], [_B1, _A1, _B1], [_B1, _B1, _A1],
                  [_A2, _B2, _B2], [_B2, _A2, _B2], [_B2, _B2, _A2]])  # fmt: skip
_WQ = np.array([0.225] + [0.132394152788506] * 3 + [0.125939180544827] * 3)
_ROT = Rotation.from_euler("zyx", [0.3, 0.5, 0.7])  # no mesh symmetry plane is a basin boundary


def mesh_masses(f, level):
    """(vertices, cells, centroids, areas, masses, h) of ``f`` on the rotated icosphere; the
    centroid is the normalised mean of the cell's vertices, ``h`` the largest geodesic
    distance from a centroid to its cell's vertices."""
    pts, cells = solver.icosphere(level)
    pts = _ROT.apply(pts)
    v = pts[cells]
    cen = solver.normalize(v.mean(axis=1))
    nrm = np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
    flat = 0.5 * np.linalg.norm(nrm, axis=1)
    nrm /= 2 * flat[:, None]
    q = np.einsum("kv,cvd->ckd", _BARY, v)
    r = np.linalg.norm(q, axis=2)
    jac = np.abs(np.einsum("ckd,cd->ck", q, nrm)) / r**3
    vals = f((q / r[..., None]).reshape(-1, 3)).reshape(r.shape)
    h = np.max(np.arccos(np.clip(np.einsum("cvd,cd->cv", v, cen), -1, 1)))
    return pts, cells, cen, flat * (jac @ _WQ), flat * ((jac * vals) @ _WQ), h


def vmf_cap(mu, kappa, c, alpha):
    """Mass and first moment of the vMF law (mean ``mu``, concentration ``kappa``) on S^2 over
    the cap ``{y: y·c >= cos α}``. With ``θ`` the angle from ``mu``, ``β`` that of ``c``,
    the cap meets the circle ``θ`` in the arc ``|φ| <= φ_0``, ``cos φ_0 = (cos α − cos θ cos
    β)/(sin θ sin β)``, so mass = ∫ g 2φ_0 sin θ dθ and moment = μ ∫ g 2φ_0 sin θ cos θ dθ
    + e ∫ g 2 sin φ_0 sin²θ dθ (``e`` the unit tangent towards ``c``), with the density
    ``g(θ) = κ e^{κ(cos θ − 1)} / (2π (1 − e^{−2κ}))``."""
    mu, c = unit(mu), unit(c)
    cb = float(np.clip(mu @ c, -1, 1))
    sb = np.sqrt(max(0.0, 1 - cb * cb))
    e = (c - cb * mu) / sb if sb > 0 else np.zeros(3)  # β = 0: no tangential part

    def g(t):
        return kappa * np.exp(kappa * (np.cos(t) - 1)) / (2 * np.pi * (1 - np.exp(-2 * kappa)))

    def phi0(t):
        q = (np.cos(alpha) - np.cos(t) * cb) / max(np.sin(t) * sb, 1e-300)
        return np.arccos(np.clip(q, -1, 1))

    beta = np.arccos(cb)
    kw = dict(points=[abs(beta - alpha), min(beta + alpha, 2 * np.pi - beta - alpha)],
              limit=200, epsabs=1e-14, epsrel=1e-13)  # fmt: skip
    m = quad(lambda t: g(t) * np.sin(t) * 2 * phi0(t), 0, np.pi, **kw)[0]
    a = quad(lambda t: g(t) * np.sin(t) * np.cos(t) * 2 * phi0(t), 0, np.pi, **kw)[0]
    b = quad(lambda t: g(t) * np.sin(t) ** 2 * 2 * np.sin(phi0(t)), 0, np.pi, **kw)[0]
    return m, a * mu + b * e


def test_vmf_cap_is_the_closed_form():
    # the cap centred on the mean: (1 − e^{κ(cos α − 1)}) / (1 − e^{−2κ}); the half-space
    # through the mean: 1/2; the whole sphere: 1 with moment (coth κ − 1/κ) μ
    mu, k = unit([0, 0, 1]), 10.0
    m, _ = vmf_cap(mu, k, unit([1e-9, 0, 1]), 0.5)
    assert m == pytest.approx((1 - np.exp(k * (np.cos(0.5) - 1))) / (1 - np.exp(-2 * k)), abs=1e-9)
    assert vmf_cap(mu, k, [1, 0, 0], np.pi / 2)[0] == pytest.approx(0.5, abs=1e-12)
    m, mom = vmf_cap(mu, k, [1, 1, 1], np.pi)
    assert m == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(mom, (1 / np.tanh(k) - 1 / k) * mu, atol=1e-12)


def test_mass_outside_converges_under_refinement():
    # two vMF bumps 100° apart, δ-balls (chordal δ = 0.6, angle α = 2 arcsin(δ/2)) around
    # their means; the balls are disjoint (2α < 100°), so the exact mass outside is
    # 1 − Σ_i p_i Σ_c P_i(cap_c) (vmf_cap)
    m1 = unit([0.2, -0.4, 0.9])
    m2 = np.cos(np.deg2rad(100)) * m1 + np.sin(np.deg2rad(100)) * unit(np.cross(m1, [1, 0, 0]))
    p, kappa, centres, delta = (0.65, 0.35), (15.0, 25.0), np.array([m1, m2]), 0.6
    alpha = 2 * np.arcsin(delta / 2)
    mix = solver.Mixture(
        tuple(solver.VonMisesFisher(tuple(m), k) for m, k in zip(centres, kappa, strict=True)), p
    )
    comps = zip(p, centres, kappa, strict=True)
    exact = 1 - sum(pi * vmf_cap(m, k, c, alpha)[0] for pi, m, k in comps for c in centres)
    hs, errs, bands = [], [], []
    for level in range(2, 6):
        _, _, cen, areas, masses, h = mesh_masses(mix, level)
        out = solver.cluster_mass_outside(cen, masses, centres, delta)
        # the midpoint rule errs only on cells the sphere |y − c| = δ may cross: those whose
        # centroid is within h of angle α from a centre (a cell lies in the ball of radius h
        # about its centroid); plus the quadrature error of the masses (~ |1 − Σ m|)
        theta = np.arccos(np.clip(cen @ centres.T, -1, 1))
        band = masses[np.any(np.abs(theta - alpha) <= h, axis=1)].sum() / masses.sum()
        assert abs(out - exact) <= band + 2 * abs(1 - masses.sum())
        hs.append(h)
        errs.append(abs(out - exact))
        bands.append(band)
    # the band is first order in h (a strip of width 2h along the two circles) ...
    band_rate = np.polyfit(np.log(hs), np.log(bands), 1)[0]
    assert 0.8 <= band_rate <= 1.2  # measured 1.12
    # ... and the errors cancel within it: measured order 1.8 (errors 7.1e-3, 6.7e-4,
    # 1.1e-3, 9.3e-5 on levels 2..5); assert at least first order
    rate = np.polyfit(np.log(hs), np.log(errs), 1)[0]
    assert rate >= 1.0
    assert errs[-1] < 2e-4


def test_density_clusters_converge_under_refinement():
    # two equal vMF bumps 90° apart: by the mirror symmetry the basins are the two
    # half-spheres y·n >< 0, n = (μ_1 − μ_2)/|μ_1 − μ_2|, of mass 1/2 each; the exact centre
    # of a basin is its normalised first moment (vmf_cap with α = π/2)
    k = 10.0
    m1 = unit([0.2, -0.4, 0.9])
    m2 = unit(np.cross(m1, [1, 0.3, 0]))
    mix = solver.Mixture((solver.VonMisesFisher(tuple(m1), k), solver.VonMisesFisher(tuple(m2), k)),
                         (0.5, 0.5))  # fmt: skip
    n = unit(m1 - m2)
    moment = [0.5 * (vmf_cap(m1, k, s * n, np.pi / 2)[1] + vmf_cap(m2, k, s * n, np.pi / 2)[1])
              for s in (1, -1)]  # fmt: skip
    exact = np.array([unit(s) for s in moment])
    hs, cerr, merr = [], [], []
    for level in range(2, 6):
        pts, cells, cen, areas, masses, h = mesh_masses(mix, level)
        cl = solver.density_clusters(cen, masses, areas, cells=cells, min_mass=0.01)
        assert len(cl) == 2
        order = np.argsort(-(cl.centres @ m1))
        centres, cm = cl.centres[order], cl.masses[order]
        np.testing.assert_allclose(cm.sum(), 1.0, atol=1e-15)  # every cell in a basin
        # a basin boundary within h of the true one moves at most the mass of the strip
        # |y·n| <= sin h; the centre (|Σ_B m y| = |moment|) moves by at most twice that
        # mass plus the O(h²) of the midpoint rule for the first moment, over |moment|
        strip = masses[np.abs(cen @ n) <= np.sin(h)].sum() / masses.sum()
        assert np.all(np.abs(cm - 0.5) <= strip)
        bound = 2 * (strip + h**2) / np.linalg.norm(moment[0])
        assert np.all(np.linalg.norm(centres - exact, axis=1) <= bound)
        # the k-nearest-neighbour graph of the centroids gives the same answer here
        knn = solver.density_clusters(cen, masses, areas, min_mass=0.01)
        np.testing.assert_allclose(knn.masses, cl.masses, atol=1e-6)
        hs.append(h)
        cerr.append(np.max(np.linalg.norm(centres - exact, axis=1)))
        merr.append(abs(cm[0] - 0.5))
    # measured (levels 2..5): centre errors 1.4e-3, 6.8e-4, 4.6e-4, 2.3e-4 (order 0.85),
    # mass errors 7.0e-4, 1.2e-4, 2.4e-4, 1.0e-4 (order 0.75): first order up to the
    # cancellations along the boundary; assert order >= 0.5
    assert np.polyfit(np.log(hs), np.log(cerr), 1)[0] >= 0.5
    assert np.polyfit(np.log(hs), np.log(merr), 1)[0] >= 0.5
    assert cerr[-1] < 1e-3 and merr[-1] < 5e-4


def test_density_clusters_on_the_circle_and_validation():
    # S^1: two bumps at ±1 rad on 400 equal arcs, adjacency from neighbours=2 (the default)
    t = (np.arange(400) + 0.5) * 2 * np.pi / 400
    x = np.column_stack((np.cos(t), np.sin(t)))
    rho = np.exp(8 * (np.cos(t - 1) - 1)) + 0.5 * np.exp(8 * (np.cos(t + 1) - 1))
    areas = np.full(400, 2 * np.pi / 400)
    cl = solver.density_clusters(x, rho * areas, areas)
    assert len(cl) == 2
    # basins split at the minima of rho between the bumps (the only critical points)
    assert cl.masses[0] > cl.masses[1]
    for c, a in zip(cl.centres, (1.0, -1.0), strict=True):
        assert abs(np.arctan2(c[1], c[0]) - a) < 0.1
    # zero-mass cells belong to no cluster
    w = rho * areas
    w[:10] = 0.0
    assert np.all(solver.density_clusters(x, w, areas).labels[:10] == -1)
    with pytest.raises(ValueError, match="areas"):
        solver.density_clusters(x, w, -areas)
    with pytest.raises(ValueError, match="cells"):
        solver.density_clusters(x, w, areas, cells=np.zeros((3, 2), dtype=int))
    with pytest.raises(ValueError, match="neighbours"):
        solver.density_clusters(x, w, areas, neighbours=0)


def test_density_clusters_do_not_depend_on_the_cell_order():
    m1, m2 = unit([0.2, -0.4, 0.9]), unit([1, 0.5, 0.1])
    bumps = (solver.VonMisesFisher(tuple(m1), 8.0), solver.VonMisesFisher(tuple(m2), 20.0))
    mix = solver.Mixture(bumps, (0.7, 0.3))
    _, cells, cen, areas, masses, _ = mesh_masses(mix, 3)
    ref = solver.density_clusters(cen, masses, areas, cells=cells)
    assert len(ref) == 2
    perm = np.random.default_rng(4).permutation(len(cen))
    cl = solver.density_clusters(cen[perm], masses[perm], areas[perm], cells=cells[perm])
    np.testing.assert_allclose(cl.centres, ref.centres, atol=1e-14)
    np.testing.assert_allclose(cl.masses, ref.masses, atol=1e-14)
    np.testing.assert_array_equal(cl.labels, ref.labels[perm])


def test_density_clusters_with_isolated_specks():
    """The directional donor flux leaves cells exactly empty, so a speck of the tail can sit
    in a cell whose neighbours are all empty (one or no positive neighbour: the gradient's
    least-squares matrix is singular, as in the level-5 forgetting benchmark). The specks
    are their own modes and do not change the clusters above ``min_mass``."""
    m1 = unit([0.2, -0.4, 0.9])
    _, cells, cen, areas, masses, _ = mesh_masses(solver.VonMisesFisher(tuple(m1), 30.0), 3)
    ref = solver.density_clusters(cen, masses, areas, cells=cells, min_mass=1e-3)
    far = np.flatnonzero(cen @ m1 < -0.5)
    masses = np.where(cen @ m1 < 0.0, 0.0, masses)  # exactly empty far half
    masses[far[:3]] = 1e-12  # three isolated specks, no positive neighbour
    pair = far[np.flatnonzero(np.isin(far, cells[np.any(cells == cells[far[10]][0], axis=1)]))]
    masses[pair[:2]] = 1e-12  # two cells that share a vertex: one positive neighbour each
    cl = solver.density_clusters(cen, masses, areas, cells=cells, min_mass=1e-3)
    assert len(cl) == len(ref) == 1
    np.testing.assert_allclose(cl.centres, ref.centres, atol=1e-9)
    every = solver.density_clusters(cen, masses, areas, cells=cells, min_mass=0.0)
    assert np.all(np.isfinite(every.centres)) and len(every) >= 1 + 3 + 1  # specks are modes


def _snap_reference(y, w, labels, R, anchor):
    """:func:`solver.snap_to_clusters` written out from its docstring, one point at a time:
    free points within ``R`` of an anchor join the nearest; then members within ``R`` of
    their anchor move onto their centre (``R`` is a centroid distance itself: a relative
    margin of 1e-9 keeps its own pairs)."""
    k = int(labels.max()) + 1
    lab = labels.copy()

    def centres():
        c = np.array([(w[lab == i, None] * y[lab == i]).sum(axis=0) for i in range(k)])
        return c / np.linalg.norm(c, axis=1)[:, None]

    a = np.array([anchor(c) for c in centres()])
    for j in np.flatnonzero(lab < 0):
        dist = np.linalg.norm(a - y[j], axis=1)
        if dist.min() <= R * (1 + 1e-9):
            lab[j] = int(np.argmin(dist))
    c = centres()
    a = np.array([anchor(ci) for ci in c])
    out = y.copy()
    for j in np.flatnonzero(lab >= 0):
        if np.linalg.norm(y[j] - a[lab[j]]) <= R * (1 + 1e-9):
            out[j] = c[lab[j]]
    return out


def test_run_reports_the_mass_outside_of_its_saved_densities():
    """``diagnostics.csv``'s ``mass_outside`` (ν) and ``mass_outside_base`` (μ) at a saved time
    are :func:`solver.cluster_mass_outside` of the saved densities, each snapped to its own
    basins (:func:`solver.snap_to_clusters`, radius :func:`solver.point_mass_radius`), against
    the base clusters of that time (the run sums the basins' moments over the ranks; a
    centre's anchor is the centroid of the cell that holds it)."""
    from mpi4py import MPI

    sm = solver.sphere_mesh(MPI.COMM_WORLD, 1, cells=96)
    eye = np.eye(2)
    base = solver.Model(3 * eye, eye, eye)
    pert = base.perturbed(solver.TiedLoRA(dA=np.zeros((2, 2)), dV=-0.3 * np.diag([0.0, 1.0])))
    init = solver.Mixture([VonMisesFisher((1.0, 0.0), 4.0), VonMisesFisher((0.0, 1.0), 4.0)],
                          [0.5, 0.5])  # fmt: skip
    res = solver.evolve(sm, base, init, 6.0, perturbed=pert, save_every=2.0, progress=False)
    mesh = sm.gather_mesh()
    if MPI.COMM_WORLD.rank:
        return
    w, cells = res.areas, mesh[1]
    radius = solver.point_mass_radius(res.centroids, cells)
    light = ClusterState.LIGHT * 0.01  # the run's tol
    tree = cKDTree(res.centroids)

    def cell_of(c):  # the centroid of the cell holding a centre
        return res.centroids[tree.query(c)[1]]

    assert radius == pytest.approx(2 * np.sin(np.pi / 96), rel=1e-12)  # one arc on S^1
    checked = moved = 0
    for k, t in enumerate(res.times):
        row = np.flatnonzero(res.step_times == t)[0]
        found = [solver.density_clusters(res.centroids, dens[k] * w, w, cells=cells, light=light)
                 for dens in (res.density, res.density_perturbed)]  # fmt: skip
        for col, dens, labels in (
            ("mass_outside_base", res.density, found[0].labels),
            ("mass_outside", res.density_perturbed, found[1].labels),
        ):
            # the expected values from the definitions, brute force (not the library's code)
            m, centres = dens[k] * w, found[0].centres
            y = _snap_reference(res.centroids, m, labels, radius, cell_of)
            D = np.linalg.norm(y[:, None, :] - centres[None], axis=2).min(axis=1)
            want = m[D >= 0.1].sum() / m.sum()
            assert res.column(col)[row] == pytest.approx(want, abs=1e-12), (t, col)
            reach = col.replace("mass_outside", "reach")
            q = max(Dj for Dj in D if m[D >= Dj].sum() > 0.01 * m.sum())
            assert res.column(reach)[row] == pytest.approx(q, abs=1e-12), (t, reach)
            checked += want > 0.05  # not only zeros: the flows are spread at first
            D0 = np.linalg.norm(res.centroids[:, None, :] - centres[None], axis=2).min(axis=1)
            moved += abs(want - m[D0 >= 0.1].sum() / m.sum()) > 0
    assert checked >= 2 and moved >= 1


def test_snap_to_clusters():
    """Points within ``R`` of their cluster's centre (normalised first moment) move onto it;
    the others stay; a point of no cluster within ``R`` of a centre joins it first (a moving
    cluster spills into cells that were empty at the last mode search); ``R = 0`` moves
    nothing off-centre (1 vs 2 MPI ranks, where ``reduce`` sums the moments: test_mpi.py)."""
    a = np.deg2rad([0.0, 2.0, 4.0, 30.0, 90.0, 93.0, 180.0, 6.0])
    x = np.column_stack((np.cos(a), np.sin(a)))
    w = np.array([1.0, 2.0, 1.0, 0.5, 1.0, 1.0, 3.0, 1.5])
    labels = np.array([0, 0, 0, 0, 1, 1, -1, -1])
    c0 = unit(w[[0, 1, 2, 3, 7]] @ x[[0, 1, 2, 3, 7]])  # the point at 6° joins cluster 0
    c1 = unit(x[4] + x[5])
    y = solver.snap_to_clusters(x, w, labels, 0.1)
    np.testing.assert_allclose(y[[0, 1, 2, 7]], [c0] * 4, atol=1e-15)
    np.testing.assert_allclose(y[3], x[3], atol=1e-15)  # 30° is farther than R = 0.1 from c0
    np.testing.assert_allclose(y[4:6], [c1] * 2, atol=1e-15)
    np.testing.assert_allclose(y[6], x[6], atol=1e-15)  # no cluster within R
    np.testing.assert_allclose(solver.snap_to_clusters(x, w, labels, 0.0), x, atol=1e-15)
    # k and reduce: one MPI rank's part with the other ranks' moments added (here none)
    y1 = solver.snap_to_clusters(x, w, labels, 0.1, k=3, reduce=lambda m: m + 0.0)
    np.testing.assert_allclose(y1, y, atol=1e-15)
    assert solver.cluster_mass_outside(y, w, c0[None], 0.05) == pytest.approx(5.5 / 11.0)
    with pytest.raises(ValueError, match="radius"):
        solver.snap_to_clusters(x, w, labels, -1.0)
    with pytest.raises(ValueError, match="labels"):
        solver.snap_to_clusters(x, w, labels[:3], 0.1)
    with pytest.raises(ValueError, match="cells"):
        solver.point_mass_radius(x, np.zeros((3, 2), dtype=int))


def test_point_mass_radius_is_first_order():
    """``R`` = the largest centroid distance over vertex-sharing cells: ``O(h)``, halving
    with every icosphere level (measured 0.190, 0.095, 0.048 on levels 3, 4, 5)."""
    from mpi4py import MPI

    radii = []
    for level in (2, 3, 4):
        sm = solver.sphere_mesh(MPI.COMM_SELF, 2, refinement=level)
        radii.append(solver.point_mass_radius(sm.gather(sm.centroids), sm.gather_mesh()[1]))
    ratios = np.array(radii[:-1]) / np.array(radii[1:])
    assert np.all(np.abs(ratios - 2.0) < 0.1), radii


def test_density_clusters_leave_out_the_light_tail():
    """``light``: the lightest cells, together at most that fraction of the mass, are empty
    (label -1): the tail's many modes vanish, the clusters stay (centres move by at most
    about ``light`` over the cluster mass)."""
    m1, m2 = unit([0.2, -0.4, 0.9]), unit([1, 0.5, 0.1])
    mix = solver.Mixture((VonMisesFisher(tuple(m1), 400.0), VonMisesFisher(tuple(m2), 400.0)),
                         (0.7, 0.3))  # fmt: skip
    _, cells, cen, areas, masses, _ = mesh_masses(mix, 3)
    masses = masses + 1e-9 * np.random.default_rng(0).random(len(masses))  # a speckled tail
    every = solver.density_clusters(cen, masses, areas, cells=cells, min_mass=0.0)
    ref = solver.density_clusters(cen, masses, areas, cells=cells)
    cl = solver.density_clusters(cen, masses, areas, cells=cells, light=1e-5)
    assert len(every) > 50 and len(cl) == len(ref) == 2
    np.testing.assert_allclose(cl.centres, ref.centres, atol=1e-5 / 0.3)
    np.testing.assert_allclose(cl.masses, ref.masses, atol=1e-5)
    left_out = cl.labels == -1
    assert masses[left_out].sum() <= 1e-5 * masses.sum() and left_out.sum() > len(cen) / 2
    with pytest.raises(ValueError, match="light"):
        solver.density_clusters(cen, masses, areas, light=1.0)


def test_run_stops_after_the_exit():
    """``stop_after_exit``: the run ends at the first saved time after ν's exit, with the same
    rows up to there as the run to T (and an error without a perturbation)."""
    from mpi4py import MPI

    sm = solver.sphere_mesh(MPI.COMM_WORLD, 1, cells=96)
    eye = np.eye(2)
    base = solver.Model(eye, eye, eye)
    pert = base.perturbed(solver.TiedLoRA(dA=np.zeros((2, 2)), dV=-0.2 * np.diag([0.0, 1.0])))
    init = VonMisesFisher((np.cos(0.6), np.sin(0.6)), 50.0)
    kw = dict(perturbed=pert, save_every=0.5, progress=False, w2=False, cluster_delta=0.3)
    full = solver.evolve(sm, base, init, 12.0, **kw)
    short = solver.evolve(sm, base, init, 12.0, stop_after_exit=True, **kw)
    assert 0 <= full.t_enter < full.t_exit < 11.0
    assert short.t_exit == full.t_exit
    # at every step the state read from the reach is the mass criterion, and the entry and
    # exit lie in the steps where the mass outside crosses the tolerance
    inside = full.column("mass_outside") <= 0.01
    np.testing.assert_array_equal(inside, full.column("reach") < 0.3)
    ke = int(np.argmax(inside))
    kx = ke + int(np.argmax(~inside[ke:]))
    for t, k in ((full.t_enter, ke), (full.t_exit, kx)):
        assert full.step_times[k - 1] <= t <= full.step_times[k]
    assert short.times[-1] == np.ceil(full.t_exit / 0.5) * 0.5 < 12.0
    assert short.step_times[-1] == short.times[-1]
    n = len(short.step_times)
    np.testing.assert_array_equal(short.diagnostics, full.diagnostics[:n])
    if MPI.COMM_WORLD.rank == 0:
        assert len(short.density) == len(short.times)
    with pytest.raises(ValueError, match="stop_after_exit"):
        solver.evolve(sm, base, init, 1.0, stop_after_exit=True, progress=False)


def test_tail_mass_lets_the_steps_grow_and_keeps_the_exit():
    """A collapsed cluster drifting out of the δ-ball: with ``tail_mass = 1e-5`` the steps grow
    once the light tail no longer holds them (fewer steps), and the exit moves only as far as
    the tail can move the cluster's first moment: at most ``2 · 1e-5`` (chordal), which the
    point mass (``dφ/dt = −ε sin φ cos φ``, ε = 0.05, φ from 0.6 to 0.3 before the exit: speed
    at least 0.014) covers in 1.4e-3."""
    from mpi4py import MPI

    sm = solver.sphere_mesh(MPI.COMM_WORLD, 1, cells=96)
    eye = np.eye(2)
    base = solver.Model(eye, eye, eye)
    pert = base.perturbed(solver.TiedLoRA(dA=np.zeros((2, 2)), dV=-0.05 * np.diag([0.0, 1.0])))
    init = VonMisesFisher((np.cos(0.6), np.sin(0.6)), 50.0)
    kw = dict(perturbed=pert, save_every=0.5, progress=False, w2=False, cluster_delta=0.3,
              stop_after_exit=True)  # fmt: skip
    fine = solver.evolve(sm, base, init, 40.0, **kw)
    coarse = solver.evolve(sm, base, init, 40.0, tail_mass=1e-5, **kw)
    assert 10.0 < fine.t_exit < 30.0
    assert len(coarse.step_times) < 0.9 * len(fine.step_times)
    assert coarse.t_exit == pytest.approx(fine.t_exit, abs=1.4e-3)
    for bad in (-1e-9, 1.0, np.nan):
        with pytest.raises(ValueError, match="tail_mass"):
            solver.evolve(sm, base, init, 1.0, tail_mass=bad, **kw)


@pytest.mark.parametrize("graph", ["cells", "knn"])
def test_compiled_gradient_paths_find_the_kd_tree_cells(monkeypatch, graph):
    """The compiled gradient paths (a walk over the adjacency, certified nearest or searched)
    against the k-d tree's nearest-centroid queries step by step (without numba): the same
    labels, centres and masses on noisy multi-modal densities, whose many paths are long."""
    if _walks._nb is None:  # pragma: no cover - depends on the environment
        pytest.skip("numba is not installed")
    rng = np.random.default_rng(5)
    mus = [unit(v) for v in rng.normal(size=(4, 3))]
    mix = solver.Mixture(tuple(solver.VonMisesFisher(tuple(m), 6.0) for m in mus),
                         (0.4, 0.3, 0.2, 0.1))  # fmt: skip
    _, cells, cen, areas, masses, _ = mesh_masses(mix, 4)
    kw = {"cells": cells} if graph == "cells" else {}
    for noise in (0.0, 0.05):
        m = masses * (1 + noise * rng.random(len(masses)))
        a = solver.density_clusters(cen, m, areas, min_mass=1e-4, **kw)
        with monkeypatch.context() as mp:
            mp.setattr(_walks, "_nb", None)
            b = solver.density_clusters(cen, m, areas, min_mass=1e-4, **kw)
        assert len(a) >= 3
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.centres, b.centres)
        np.testing.assert_array_equal(a.masses, b.masses)


def test_snap_radius_edge():
    """Points at exactly ``R`` from their centre (rings at polar angle φ around e_z, with
    ``R = 2 sin(φ/2)``, equal up to round-off: a few ulps) are snapped, and a
    point of no cluster at ``R`` joins; at ``R (1 + 1e-7)`` nothing moves, at ``R (1 - 1e-7)``
    everything does. The symmetric rings keep the centre at e_z to round-off."""
    rng = np.random.default_rng(3)
    phi = 0.3
    R = 2 * np.sin(phi / 2)

    def ring(angle, n=16):
        az = 2 * np.pi * np.arange(n) / n + rng.uniform(0, 2 * np.pi)
        return np.column_stack((np.sin(angle) * np.cos(az), np.sin(angle) * np.sin(az),
                                np.full(n, np.cos(angle))))  # fmt: skip

    def angle_at(chord):
        return 2 * np.arcsin(chord / 2)

    ez = np.array([0.0, 0.0, 1.0])
    for f, snapped in ((1.0, True), (1 - 1e-7, True), (1 + 1e-7, False)):
        rings = [ring(angle_at(R * f)) for _ in range(8)]
        y = np.vstack([ez[None], *rings])
        w = np.ones(len(y))
        lab = np.zeros(len(y), dtype=np.int64)
        lab[-16:] = -1  # the last ring: no cluster yet
        dist = np.linalg.norm(y - ez, axis=1)[1:]
        # at the edge R is the shortest of these computed distances (R is itself a computed
        # distance in use): the others exceed it by round-off, which the margin absorbs
        r = dist.min() if f == 1.0 else R
        if f == 1.0:
            assert np.sum(dist > r) > 100 and np.all(dist <= R * (1 + 1e-15))
        out = solver.snap_to_clusters(y, w, lab, r)
        moved = np.all(np.abs(out[1:] - ez) <= 1e-15, axis=1)
        assert np.all(moved == snapped), (f, moved.sum())
        if not snapped:
            np.testing.assert_allclose(out[1:], y[1:], rtol=0, atol=1e-15)  # (normalised)


def test_compiled_walk_finds_the_nearest_centroid_after_every_step():
    """The compiled walk's cell after one step is the nearest centroid of the stepped point,
    also on an adjacency where greedy descent stops early (a random ring graph: each point
    linked to two random others), so that its certificate (nearer than half the distance
    to the nearest non-neighbour) must send walks to the full search. Each cell is its
    own root and done, so the returned label is the cell after one step of length size_c."""
    if _walks._nb is None:  # pragma: no cover - depends on the environment
        pytest.skip("numba is not installed")
    from scipy.sparse import csr_matrix

    rng = np.random.default_rng(11)
    n = 400
    x = vmf_s2(rng, n, [0, 0, 1], 0.5)
    order = rng.permutation(n)
    a, b = order, np.roll(order, 1)
    adj = csr_matrix((np.ones(2 * n), (np.r_[a, b], np.r_[b, a])), shape=(n, n))
    adj.sum_duplicates()
    g = rng.normal(size=(n, 3))
    g -= np.sum(g * x, axis=1)[:, None] * x
    gnorm = np.linalg.norm(g, axis=1)
    stuck = 0
    for size in (0.02, 0.2, 1.0):  # within the cell, a few cells away, across the sphere
        sizes = np.full(n, size)
        k = int(np.diff(adj.indptr).max()) + 2
        knn_d, knn_i = cKDTree(x).query(x, k=k)
        ids = np.arange(n)
        got = _walks._nb_gradient_walk(x, g, gnorm, sizes, np.ones(n, bool), ids, ids, adj.indptr,
                                       adj.indices, knn_d, knn_i, 1)  # fmt: skip
        y = x + (size / gnorm)[:, None] * g
        y /= np.linalg.norm(y, axis=1)[:, None]
        want = cKDTree(x).query(y)[1]
        np.testing.assert_array_equal(got, want)
        stuck += int(np.sum(_greedy_walk(x, y, adj) != want))
    assert stuck > 200  # the graph does trap greedy descent (measured 814 of 1200 walks)


def _greedy_walk(x, y, adj):
    """The cell where plain greedy descent over ``adj`` stops, from each point's own cell."""
    out = np.arange(len(x))
    for p in range(len(x)):
        c = p
        while True:
            nb = adj.indices[adj.indptr[c] : adj.indptr[c + 1]]
            j = nb[np.argmin(np.sum((x[nb] - y[p]) ** 2, axis=1))]
            if np.sum((x[j] - y[p]) ** 2) >= np.sum((x[c] - y[p]) ** 2):
                break
            c = j
        out[p] = c
    return out
