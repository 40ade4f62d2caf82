"""Wasserstein distances on S^1 and S^2 against closed forms, bounds and each other."""

from __future__ import annotations

import numpy as np
import ot
import pytest

import solver.analysis._wasserstein as W
from solver.model import VonMisesFisher

TWO_PI = 2 * np.pi


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------


def circle_dist(a, b):
    d = np.mod(np.abs(np.subtract.outer(a, b)), TWO_PI)
    return np.minimum(d, TWO_PI - d)


def emd_circle(ta, wa, tb, wb, p):
    """Brute-force W_p on the circle: network simplex on the geodesic cost."""
    return ot.emd2(wa / wa.sum(), wb / wb.sum(), circle_dist(ta, tb) ** p) ** (1 / p)


def levy_median_w1(ta, wa, tb, wb):
    """W_1 on the circle by Delon, Salomon & Sobolevski: ∫_0^{2π} |F - G - α| dx, α = median.

    F, G are the cdfs on [0, 2π); F - G is a step function, so the integral and the
    (Lebesgue) median α of F - G are computed exactly on the merged breakpoints.
    """
    ta, tb = np.mod(ta, TWO_PI), np.mod(tb, TWO_PI)
    wa, wb = wa / wa.sum(), wb / wb.sum()
    x = np.unique(np.concatenate(([0.0, TWO_PI], ta, tb)))
    mid = 0.5 * (x[1:] + x[:-1])
    F = (wa[None, :] * (ta[None, :] <= mid[:, None])).sum(1)
    G = (wb[None, :] * (tb[None, :] <= mid[:, None])).sum(1)
    h, dx = F - G, np.diff(x)
    o = np.argsort(h)
    c = np.cumsum(dx[o])
    alpha = h[o][np.searchsorted(c, 0.5 * c[-1])]
    return float(np.dot(dx, np.abs(h - alpha)))


def random_circle_measure(rng, n):
    return rng.uniform(0, TWO_PI, n), rng.uniform(0.1, 1.0, n)


def vmf_s2(rng, n, mu, kappa):
    """n samples of the von Mises-Fisher law on S^2 (the library's exact sampler)."""
    return VonMisesFisher(tuple(np.asarray(mu, float)), float(kappa)).sample(n, 3, rng)


def rotation(axis, angle):
    k = np.asarray(axis, float) / np.linalg.norm(axis)
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * K + (1 - np.cos(angle)) * K @ K


def unit(v):
    v = np.asarray(v, float)
    return v / np.linalg.norm(v)


# ------------------------------------------------------------------------------------------
# S^1
# ------------------------------------------------------------------------------------------

# Accuracy of the methods: "quantile" is exact to round-off. POT's binary search stops at a
# bracket of 1e-6 in the shift (then one secant step); the cost is piecewise linear in the
# shift with slopes up to (2π)^p, so POT's W_p^p is accurate to ~1e-6 (2π)^p (measured: far
# better on typical measures, ~1e-10, and worst for point masses straddling the cut at 0).


def close(got, ref, p, method):
    if method == "quantile":
        return abs(got - ref) <= 1e-12 + 1e-12 * ref
    return abs(got**p - ref**p) <= 1e-6 * TWO_PI**p


@pytest.mark.parametrize("method", ["quantile", "pot"])
@pytest.mark.parametrize("p", [1, 2, 3])
@pytest.mark.parametrize(
    "a, b",
    [(0.3, 1.1), (0.1, TWO_PI - 0.2), (-3.0, 3.0), (0.0, np.pi), (5.0, 5.0), (1.0, 1.0 + 2e-7)],
)
def test_circle_point_masses_is_geodesic_distance(a, b, p, method):
    # W_p(δ_a, δ_b) = d(a, b): the only coupling moves all the mass along the shorter arc.
    d = circle_dist(np.array([a]), np.array([b]))[0, 0]
    got = W.wasserstein_circle([a], [1.0], [b], [2.5], p=p, method=method)
    assert close(got, d, p, method)


@pytest.mark.parametrize("method", ["quantile", "pot"])
@pytest.mark.parametrize("n", [1, 5, 64])
@pytest.mark.parametrize("p", [1, 2])
def test_circle_rotated_uniform_grid_is_the_rotation_angle(n, p, method):
    # n equal atoms at 2πi/n rotated by s < π/n. The rotation is a coupling, so W_p <= s. By
    # the W_1 formula W_1 = min_α ∫|F - G - α|, with F - G = 1/n on n arcs of length s
    # (total ns < π, less than half the circle) and 0 elsewhere: the median is α = 0 and
    # W_1 = s. Hence s = W_1 <= W_p <= s for every p >= 1: W_p = s exactly.
    th = TWO_PI * np.arange(n) / n
    w = np.ones(n)
    for s in (1e-3, 0.37 * np.pi / n, 0.999 * np.pi / n):
        got = W.wasserstein_circle(th, w, th + s, w, p=p, method=method)
        assert close(got, s, p, method)


def _von_mises_grid(N, kappa, mu=1.0):
    th = TWO_PI * np.arange(N) / N
    w = np.exp(kappa * (np.cos(th - mu) - 1.0))
    return th, w / w.sum()


@pytest.mark.parametrize("kappa", [30.0, 4.0, 0.5])
@pytest.mark.parametrize("method", ["quantile", "pot"])
def test_circle_shifted_von_mises(kappa, method):
    # μ = von Mises weights on N equally spaced atoms, ν = μ shifted by k grid steps (s = kΔ):
    # ν lives on the same grid. Is the rotation by s optimal? Not always:
    # - upper bound: the rotation is a coupling, so W_1 <= W_2 <= s;
    # - lower bound: with the W_1 formula, F(t) - G(t) = g(t) := μ((t - s, t]) >= 0 with
    #   ∫ g = s, and W_1 = ∫|g - med g| >= s - 2π med g (med = Lebesgue median over t).
    # So the rotation is optimal (W_1 = W_2 = s) exactly when more than half of the circle
    # sees no mass within s behind it, and it is optimal up to 2π med g otherwise. For a
    # concentrated law the median of g sits a quarter turn from the mode, med g ~ s ρ(π/2) ~
    # s √(κ/2π) e^{-κ}: for κ = 30, W_2 = s to ~1e-12 (2e-8 for κ = 20); for a flat one
    # (κ = 0.5) mass moves both ways round and W_2 < s by a visible margin (the uniform law
    # is the extreme case: every rotation leaves it invariant, W = 0).
    N, k = 720, 6
    th, w = _von_mises_grid(N, kappa)
    s = k * TWO_PI / N
    wb = np.roll(w, k)  # weight of atom i moves to atom i + k
    # g is constant on each grid interval: the mass of k consecutive atoms.
    g = np.convolve(np.concatenate((w[-(k - 1) :], w)), np.ones(k), mode="valid")
    lower = s - TWO_PI * np.median(g)
    w1 = W.wasserstein_circle(th, w, th, wb, p=1, method=method)
    w2 = W.wasserstein_circle(th, w, th, wb, p=2, method=method)
    if method == "quantile":
        assert lower - 1e-14 <= w1 <= w2 + 1e-14
        assert w2 <= s + 1e-14
    else:
        assert lower - 1e-6 * TWO_PI <= w1
        assert w2**2 <= s**2 + 1e-6 * TWO_PI**2
    if kappa >= 30:
        assert s - lower < 1e-11 * s  # the bracket is tight: the rotation is optimal
        assert close(w2, s, 2, method) and close(w1, s, 1, method)
    if kappa <= 0.5:
        assert w2 < 0.9 * s  # the rotation is far from optimal
    # both methods agree
    other = "pot" if method == "quantile" else "quantile"
    assert close(w2, W.wasserstein_circle(th, w, th, wb, p=2, method=other), 2, "pot")


def test_circle_uniform_grid_shifted_by_whole_steps_is_zero():
    th = TWO_PI * np.arange(12) / 12
    w = np.ones(12)
    assert W.wasserstein_circle(th, w, th + 3 * TWO_PI / 12, w, p=2) == pytest.approx(0, abs=1e-12)


@pytest.mark.parametrize("p", [1, 2, 3.5])
def test_circle_against_network_simplex(p):
    rng = np.random.default_rng(1)
    for n, m in [(1, 4), (5, 8), (30, 17), (60, 60)]:
        ta, wa = random_circle_measure(rng, n)
        tb, wb = random_circle_measure(rng, m)
        ref = emd_circle(ta, wa, tb, wb, p)
        assert W.wasserstein_circle(ta, wa, tb, wb, p=p) == pytest.approx(ref, abs=1e-10)
        assert close(W.wasserstein_circle(ta, wa, tb, wb, p=p, method="pot"), ref, p, "pot")


def test_circle_w1_against_levy_median_formula():
    rng = np.random.default_rng(2)
    for n, m in [(3, 7), (40, 25), (200, 300)]:
        ta, wa = random_circle_measure(rng, n)
        tb, wb = random_circle_measure(rng, m)
        got = W.wasserstein_circle(ta, wa, tb, wb, p=1)
        assert got == pytest.approx(levy_median_w1(ta, wa, tb, wb), abs=1e-12)


def test_circle_quantile_and_pot_agree_on_random_measures():
    rng = np.random.default_rng(3)
    for _ in range(10):
        ta, wa = random_circle_measure(rng, rng.integers(1, 300))
        tb = rng.vonmises(1.0, 3.0, rng.integers(1, 300))
        wb = rng.uniform(size=tb.size)
        for p in (1, 2):
            q = W.wasserstein_circle(ta, wa, tb, wb, p=p, method="quantile")
            o = W.wasserstein_circle(ta, wa, tb, wb, p=p, method="pot")
            assert close(o, q, p, "pot")
            assert q <= o + 1e-12  # both are values of the cost: the exact one is the minimum


@pytest.mark.parametrize("p", [1, 2])
def test_circle_metric_axioms(p):
    rng = np.random.default_rng(4)
    for _ in range(20):
        (ta, wa), (tb, wb), (tc, wc) = (
            random_circle_measure(rng, rng.integers(1, 40)) for _ in range(3)
        )
        ab = W.wasserstein_circle(ta, wa, tb, wb, p=p)
        ba = W.wasserstein_circle(tb, wb, ta, wa, p=p)
        bc = W.wasserstein_circle(tb, wb, tc, wc, p=p)
        ac = W.wasserstein_circle(ta, wa, tc, wc, p=p)
        assert W.wasserstein_circle(ta, wa, ta, wa, p=p) == 0.0
        # 3 wa normalises to wa up to round-off: total variation δ <~ n 1e-16 and W_p is only
        # Hölder-1/p in the weights, W_p <= π δ^{1/p}
        assert W.wasserstein_circle(ta, wa, ta, 3 * wa, p=p) <= np.pi * (ta.size * 1e-16) ** (1 / p)
        assert ab == pytest.approx(ba, abs=1e-12)
        assert ac <= ab + bc + 1e-12
        assert 0 <= ab <= np.pi


def test_circle_is_rotation_invariant_and_ignores_zero_weights():
    rng = np.random.default_rng(5)
    ta, wa = random_circle_measure(rng, 30)
    tb, wb = random_circle_measure(rng, 20)
    ref = W.wasserstein_circle(ta, wa, tb, wb)
    for shift in (0.3, -2.0, 100.0):
        assert W.wasserstein_circle(ta + shift, wa, tb + shift, wb) == pytest.approx(ref, 1e-12)
    ta2 = np.concatenate((ta, [1.0, 2.0]))
    wa2 = np.concatenate((wa, [0.0, 0.0]))
    assert W.wasserstein_circle(ta2, wa2, tb, wb) == pytest.approx(ref, abs=1e-14)


def test_wasserstein_dispatches_d2_to_the_circle():
    rng = np.random.default_rng(6)
    ta, wa = random_circle_measure(rng, 25)
    tb, wb = random_circle_measure(rng, 13)
    xa = np.column_stack((np.cos(ta), np.sin(ta)))
    xb = np.column_stack((np.cos(tb), np.sin(tb)))
    for p in (1, 2):
        ref = W.wasserstein_circle(ta, wa, tb, wb, p=p)
        assert W.wasserstein(xa, wa, xb, wb, p=p) == pytest.approx(ref, abs=1e-12)
    assert W.wasserstein(xa, None, xb, None) == pytest.approx(
        W.wasserstein_circle(ta, None, tb, None), abs=1e-12
    )


# ------------------------------------------------------------------------------------------
# S^2
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("method", ["exact", "sinkhorn", "auto"])
def test_sphere_point_masses_is_geodesic_distance(p, method):
    x, y = unit([1, 2, 3]), unit([-2, 1, 0.5])
    d = np.arccos(x @ y)
    res = W.wasserstein_sphere(x[None], [1.0], y[None], [4.0], p=p, method=method)
    # a single coupling exists: every method is exact here (the bracket collapses)
    assert res.value == pytest.approx(d, abs=1e-12)
    assert res.error <= 1e-10


@pytest.fixture(scope="module")
def cloud():
    rng = np.random.default_rng(7)
    x = vmf_s2(rng, 200, [1, 0, 0.2], 50.0)
    w = rng.uniform(0.5, 1.5, 200)
    return x, w / w.sum()


@pytest.mark.parametrize("alpha", [1e-3, 0.05, 0.3])
def test_sphere_rotation_bracket(cloud, alpha):
    # ν = R_α# μ (rotation by α about e_3). Upper bound: the coupling x -> R_α x moves every
    # atom by exactly α, so W_2 <= α. Lower bound: x -> <x, v> is 1-Lipschitz for the chordal
    # hence for the geodesic distance, so |m_μ - m_ν| <= W_1 <= W_2 (Kantorovich-Rubinstein
    # with v along m_μ - m_ν; m = mean vector). The cloud sits near the equator of the axis
    # with |m| ≈ 1 - 1/κ, so the bracket is tight (measured: lower 0.963 α, W_2 0.975 α).
    x, w = cloud
    y = x @ rotation([0, 0, 1], alpha).T
    m = w @ x
    lower = np.linalg.norm(m - w @ y)
    res = W.wasserstein_sphere(x, w, y, w, p=2, method="exact")
    assert res.method == "exact" and res.error < 1e-9
    assert lower - 1e-12 <= W.wasserstein_sphere(x, w, y, w, p=1, method="exact").value
    assert lower - 1e-12 <= res.value <= alpha + 1e-12
    assert lower > 0.95 * alpha
    if alpha == 0.05:
        sk = W.wasserstein_sphere(x, w, y, w, p=2, method="sinkhorn")
        assert abs(sk.value - res.value) <= sk.error
        assert abs(sk.value - res.value) < 1e-2 * alpha  # measured 3.5e-4 alpha


@pytest.mark.parametrize("p", [1, 2])
def test_sphere_exact_sinkhorn_sliced(p):
    rng = np.random.default_rng(8)
    xa = vmf_s2(rng, 200, [0, 0, 1], 10.0)
    xb = vmf_s2(rng, 150, [0, 1, 1], 5.0)
    wa, wb = rng.uniform(size=200), None
    ex = W.wasserstein_sphere(xa, wa, xb, wb, p=p, method="exact")
    sk = W.wasserstein_sphere(xa, wa, xb, wb, p=p, method="sinkhorn")
    sl = W.wasserstein_sphere(xa, wa, xb, wb, p=p, method="sliced")
    assert ex.error < 1e-9
    # the sinkhorn error is a certified bound (primal rounding / dual c-transform bracket)
    assert abs(sk.value - ex.value) <= sk.error
    # measured at the default reg_rel = 1e-2: |sinkhorn - exact| / exact = 0.37% (p = 1),
    # 0.44% (p = 2); certified error 2.5% / 6.2% of W_p
    assert abs(sk.value - ex.value) < 0.03 * ex.value
    assert sk.error < 0.1 * ex.value
    # sliced: a different metric of the same order of magnitude (not a bound on W_p)
    assert 0.5 * ex.value < sl.value < 2 * ex.value
    assert sl.error < 0.1 * sl.value
    assert W.wasserstein(xa, wa, xb, wb, p=p) == pytest.approx(ex.value, abs=1e-14)


def test_sinkhorn_error_shrinks_with_reg():
    rng = np.random.default_rng(9)
    xa = vmf_s2(rng, 120, [1, 0, 0], 8.0)
    xb = vmf_s2(rng, 100, [1, 1, 0], 8.0)
    ex = W.wasserstein_sphere(xa, None, xb, None, method="exact").value
    errs = []
    for reg in (3e-2, 1e-2, 3e-3):
        res = W.wasserstein_sphere(xa, None, xb, None, method="sinkhorn", reg_rel=reg)
        assert abs(res.value - ex) <= res.error
        errs.append(res.error)
    assert errs[0] > errs[1] > errs[2]


def test_sinkhorn_solver_matches_pot_at_moderate_reg():
    # our log-domain solver and POT's sinkhorn2 solve the same entropic problem
    rng = np.random.default_rng(10)
    xa = vmf_s2(rng, 60, [0, 0, 1], 5.0)
    xb = vmf_s2(rng, 50, [0, 1, 0], 5.0)
    a, b = np.full(60, 1 / 60), np.full(50, 1 / 50)
    M = W._geodesic_cost(xa, xb, 2)
    reg = 0.05 * M.max()
    f, g, _ = W._sinkhorn_potentials(a, b, M, reg, symmetric=False, tol=1e-12, max_iter=10_000)
    ours = float(np.sum(W._entropic_plan(a, b, M, f, g, reg) * M))
    pot = float(ot.sinkhorn2(a, b, M, reg, method="sinkhorn_log", stopThr=1e-12, numItermax=10_000))
    assert ours == pytest.approx(pot, rel=1e-9)
    # the symmetric (averaged) iteration reaches the same fixed point as plain Sinkhorn
    Ma = W._geodesic_cost(xa, xa, 2)
    fs, _, _ = W._sinkhorn_potentials(a, a, Ma, reg, symmetric=True, tol=1e-12, max_iter=10_000)
    sym = float(np.sum(W._entropic_plan(a, a, Ma, fs, fs, reg) * Ma))
    pot = float(
        ot.sinkhorn2(a, a, Ma, reg, method="sinkhorn_log", stopThr=1e-12, numItermax=10_000)
    )
    assert sym == pytest.approx(pot, rel=1e-9)


def test_sliced_matches_its_definition_in_radians():
    # SSW_p^p = mean over great circles U of W_p^p(P_U#μ, P_U#ν), with circle distances in
    # radians: recompute it with our exact circle solver on the same projections.
    rng = np.random.default_rng(11)
    xa = vmf_s2(rng, 40, [0, 0, 1], 4.0)
    xb = vmf_s2(rng, 30, [1, 0, 0], 4.0)
    wa = rng.uniform(size=40)
    proj = W._stiefel(3, 25, seed=3)
    for p in (1, 2):
        res = W.wasserstein_sphere(xa, wa, xb, None, p=p, method="sliced", projections=proj)
        per = []
        for U in proj:
            pa, pb = xa @ U, xb @ U
            ta, tb = np.arctan2(pa[:, 1], pa[:, 0]), np.arctan2(pb[:, 1], pb[:, 0])
            per.append(W.wasserstein_circle(ta, wa, tb, None, p=p) ** p)
        assert res.value == pytest.approx(np.mean(per) ** (1 / p), rel=1e-6)
    assert W.wasserstein_sphere(xa, wa, xa, wa, method="sliced").value == pytest.approx(0, abs=1e-6)


def test_auto_quantized_error_is_a_bound():
    rng = np.random.default_rng(12)
    xa = vmf_s2(rng, 700, [0, 0, 1], 6.0)
    xb = vmf_s2(rng, 600, [0, 1, 0], 3.0)
    wa = rng.uniform(size=700)
    ex = W.wasserstein_sphere(xa, wa, xb, None, method="exact")
    for max_atoms in (100, 300):
        q = W.wasserstein_sphere(xa, wa, xb, None, method="auto", max_atoms=max_atoms)
        assert q.method == "exact-quantized"
        assert abs(q.value - ex.value) <= q.error
    small = W.wasserstein_sphere(xa, wa, xb, None, method="auto")
    assert small.method == "exact" and small.value == pytest.approx(ex.value, abs=1e-14)


def test_auto_merges_the_light_tail_first():
    """A clustered measure: 700 atoms, 12 of them hold the mass and the rest 1e-14 each. The
    light atoms are merged into their nearest heavy one before any quantization, so the
    problem is solved on 12 atoms with an error bound of order sqrt(688e-14) pi ~ 3e-6, not the
    grid's (~0.1 at 100 atoms), and the bound holds against the exact value."""
    rng = np.random.default_rng(16)
    xa = vmf_s2(rng, 700, [0, 0, 1], 1.0)
    wa = np.full(700, 1e-14)
    wa[:12] = rng.uniform(0.5, 1.0, size=12)
    xb = vmf_s2(rng, 50, [0, 1, 0], 3.0)  # below max_atoms: not merged
    ex = W.wasserstein_sphere(xa, wa, xb, None, method="exact")
    q = W.wasserstein_sphere(xa, wa, xb, None, method="auto", max_atoms=100)
    assert q.method == "exact-quantized" and "700->12" in q.note
    assert q.error < 1e-5
    assert abs(q.value - ex.value) <= q.error


def test_quantized_with_a_far_tail_stays_finite():
    """Atoms of weight ~1e-200 (the far tail of a clustered density on a mesh) that fill a
    quantization cell on their own: the merged atom is their weighted mean, not 0/0 (its norm
    underflows unless scaled), and the value is that of the measure without them."""
    rng = np.random.default_rng(15)
    xa = vmf_s2(rng, 700, [0, 0, 1], 1.0)  # spread over the whole sphere
    wa = np.where(xa[:, 2] > 0.5, rng.uniform(size=700), 1e-200)  # the mass near the pole
    xb = vmf_s2(rng, 600, [0, 1, 0], 3.0)
    with np.errstate(invalid="raise", divide="raise"):
        q = W.wasserstein_sphere(xa, wa, xb, None, method="auto", max_atoms=100)
    keep = xa[:, 2] > 0.5
    ref = W.wasserstein_sphere(xa[keep], wa[keep], xb, None, method="exact")
    assert q.method == "exact-quantized" and np.isfinite(q.value)
    assert abs(q.value - ref.value) <= q.error


def test_sphere_symmetry_and_self_distance(cloud):
    x, w = cloud
    rng = np.random.default_rng(13)
    y = vmf_s2(rng, 50, [0, 1, 0], 20.0)
    ab = W.wasserstein_sphere(x, w, y, None, method="exact").value
    ba = W.wasserstein_sphere(y, None, x, w, method="exact").value
    assert ab == pytest.approx(ba, abs=1e-12)
    for method in ("exact", "sinkhorn", "sliced", "auto"):
        assert W.wasserstein_sphere(x, w, x, w, method=method).value == 0.0
    # exact on a copy perturbed by round-off: W_p <= π δ^{1/p} (δ = total variation)
    assert W.wasserstein_sphere(x, w, x, 3 * w, method="exact").value <= np.pi * 1e-7


def test_higher_dimensional_sphere():
    rng = np.random.default_rng(14)
    x = rng.standard_normal((30, 5))
    x /= np.linalg.norm(x, axis=1)[:, None]
    Q, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    # an isometry of S^4 applied to both measures leaves W_p unchanged
    y = rng.standard_normal((20, 5))
    y /= np.linalg.norm(y, axis=1)[:, None]
    a = W.wasserstein(x, None, y, None)
    assert W.wasserstein(x @ Q.T, None, y @ Q.T, None) == pytest.approx(a, abs=1e-10)
    assert W.wasserstein_sphere(x, None, y, None, method="sliced").value > 0


# ------------------------------------------------------------------------------------------
# validation
# ------------------------------------------------------------------------------------------


def test_validation_messages_name_the_argument():
    x = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    w = np.array([0.5, 0.5])
    with pytest.raises(ValueError, match="xa must lie on the unit sphere"):
        W.wasserstein_sphere(1.01 * x, w, x, w)
    with pytest.raises(ValueError, match="xb must be an"):
        W.wasserstein_sphere(x, w, x[0], w)
    with pytest.raises(ValueError, match="xa must be finite"):
        W.wasserstein_sphere(np.full((2, 3), np.nan), w, x, w)
    with pytest.raises(ValueError, match="wa must be non-negative"):
        W.wasserstein_sphere(x, [1.0, -0.1], x, w)
    with pytest.raises(ValueError, match="wb must have a positive total"):
        W.wasserstein_sphere(x, w, x, [0.0, 0.0])
    with pytest.raises(ValueError, match="wb must be a 1-D array of length 2"):
        W.wasserstein_sphere(x, w, x, [1.0])
    with pytest.raises(ValueError, match="wa must be finite"):
        W.wasserstein(x, [np.inf, 1.0], x, w)
    with pytest.raises(ValueError, match="same dimension"):
        W.wasserstein(x, w, x[:, :2], w)
    with pytest.raises(ValueError, match="p must be"):
        W.wasserstein_sphere(x, w, x, w, p=0.5)
    with pytest.raises(ValueError, match="method must be one of"):
        W.wasserstein_sphere(x, w, x, w, method="fast")
    with pytest.raises(ValueError, match="theta_b must be a non-empty 1-D"):
        W.wasserstein_circle([0.0], [1.0], [], [])
    with pytest.raises(ValueError, match="theta_a must be finite"):
        W.wasserstein_circle([np.nan], [1.0], [0.0], [1.0])
    with pytest.raises(ValueError, match="needs d >= 3"):
        W.wasserstein_sphere(x[:, :2], w, x[:, :2], w)
    # tiny deviations from the sphere (1e-7) are accepted
    W.wasserstein_sphere(x * (1 + 1e-7), w, x, w)


def test_result_is_a_frozen_dataclass():
    x = np.array([[1.0, 0, 0]])
    res = W.wasserstein_sphere(x, None, x, None)
    assert float(res) == res.value == 0.0
    with pytest.raises(AttributeError):
        res.value = 1.0  # type: ignore[misc]
    assert set(W.__all__) >= {
        "wasserstein",
        "wasserstein_circle",
        "wasserstein_sphere",
        "WassersteinResult",
    }


@pytest.mark.parametrize("p", [1, 2])
def test_light_atom_merge_costs_the_geodesic_distance(p):
    """Heavy atoms on the octahedron's vertices, light atoms at the centres of two faces: each
    light atom is arccos(1/√3) = 0.9553 rad from its nearest heavy ones (the chord is 0.9194,
    4 % shorter), so the merge's bound is exactly (Σ w_light · 0.9553^p)^{1/p} and its mass
    lands on a vertex of its face."""
    verts = np.vstack([np.eye(3), -np.eye(3)])
    light = np.array([[1.0, 1.0, 1.0], [-1.0, 1.0, -1.0]]) / np.sqrt(3.0)
    wl = np.array([3e-13, 5e-13])  # below PRUNE_MASS
    assert wl.max() < W.PRUNE_MASS
    wv = np.linspace(0.1, 0.2, 6)
    xk, wk, bound = W._prune(np.vstack([verts, light]), np.r_[wv, wl], p)
    np.testing.assert_array_equal(xk, verts)
    theta = np.arccos(1 / np.sqrt(3.0))
    assert bound == pytest.approx(float(wl.sum() * theta**p) ** (1 / p), rel=1e-13)
    gained = wk - wv
    assert gained.sum() == pytest.approx(wl.sum(), rel=1e-12)
    assert set(np.nonzero(gained)[0]) <= {0, 1, 2, 4}  # vertices of the two faces only


def test_rounded_plan_has_the_marginals_exactly():
    """Altschuler-Weed-Rigollet rounding: whatever the near-coupling (here marginals off by up
    to ±30 %, far beyond Sinkhorn's 1e-6), the result is non-negative with row sums a and
    column sums b to round-off (measured 2e-17; asserted 1e-15)."""
    rng = np.random.default_rng(21)
    for n, m in [(40, 60), (60, 40), (1, 5)]:
        a, b = rng.uniform(0.5, 1.5, n), rng.uniform(0.5, 1.5, m)
        a /= a.sum()
        b /= b.sum()
        P = np.outer(a, b) * rng.uniform(0.7, 1.3, (n, m))
        R = W._round_to_coupling(P, a, b)
        assert R.min() >= 0
        np.testing.assert_allclose(R.sum(axis=1), a, rtol=0, atol=1e-15)
        np.testing.assert_allclose(R.sum(axis=0), b, rtol=0, atol=1e-15)
        # an exact coupling is left as it is
        np.testing.assert_allclose(W._round_to_coupling(np.outer(a, b), a, b), np.outer(a, b),
                                   rtol=1e-14, atol=0)  # fmt: skip


def test_dual_lower_bound_hand_values():
    """Two atoms each, ``M = [[1, 2], [3, 1]]``, uniform marginals (optimum 1: stay put). From
    the infeasible potential ``f = (5, 0)``: ``g = min_i (M_ij − f_i) = (−4, −3)``, then
    ``f' = min_j (M_ij − g_j) = (5, 4)`` and ``a·f' + b·g = 1``, the optimum (the single
    transform ``a·f + b·g = −1`` is valid but loose); from ``f = 0`` it is ``1`` as well."""
    M = np.array([[1.0, 2.0], [3.0, 1.0]])
    a = b = np.array([0.5, 0.5])
    assert W._dual_lower_bound(np.array([5.0, 0.0]), a, b, M) == pytest.approx(1.0, abs=1e-15)
    assert W._dual_lower_bound(np.zeros(2), a, b, M) == pytest.approx(1.0, abs=1e-15)
    assert W._dual_lower_bound(np.array([0.0, 9.0]), a, b, M) <= 1.0 + 1e-15
