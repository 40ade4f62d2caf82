"""Cluster diagnostics on the sphere: clusters, δ-cluster state, entry/exit times, drift."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import brentq

import solver.analysis._clusters as C
from solver.model import VonMisesFisher


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
