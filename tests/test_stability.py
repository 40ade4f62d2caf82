"""Stability theory (docs/stability.md): Lipschitz constants, perturbation speed, the W2 bound
of Prop 3.1 checked against simulated particle systems, and the spectral criterion of Prop 3.3.

Run with ``-s`` to see the tightness ratios.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.linalg import expm

import solver.analysis._stability as S
from solver.model import Model, RandomLoRA, ScheduledLoRA, TiedLoRA, low_rank
from solver.velocity import attention_velocity


def _unit(z: np.ndarray) -> np.ndarray:
    return z / np.linalg.norm(z, axis=-1, keepdims=True)


def _sphere(rng, n: int, d: int) -> np.ndarray:
    return _unit(rng.normal(size=(n, d)))


def _with_norm(rng, d: int, norm: float) -> np.ndarray:
    M = rng.normal(size=(d, d))
    return norm * M / np.linalg.norm(M, 2)


def _measure(rng, n: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Random atoms with heavy-tailed weights (some atoms nearly massless)."""
    return _sphere(rng, n, d), np.exp(3.0 * rng.normal(size=n))


# ---------------------------------------------------------------------------------------------
# (a) constants: perturbation speed and Lipschitz quotients


CASES = [  # (d, ‖A‖, ‖V‖, ‖ΔA‖, ‖ΔV‖)
    (2, 1.0, 1.0, 0.3, 0.1),
    (2, 4.0, 1.0, 1.0, 0.0),
    (3, 0.5, 2.0, 0.0, 1.5),
    (3, 2.5, 1.0, 2.0, 1.0),
    (4, 3.0, 0.7, 0.5, 0.5),
    (5, 0.0, 1.0, 3.0, 0.2),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_perturbation_speed_bounds_velocity_difference(case):
    d, a, v, da, dv = CASES[case]
    rng = np.random.default_rng(case)
    A, V, dA, dV = (_with_norm(rng, d, s) for s in (a, v, da, dv))
    delta = S.perturbation_speed(A, V, dA, dV)
    worst = 0.0
    for n in (1, 2, 3, 10, 40):
        for _ in range(5):
            y, w = _measure(rng, n, d)
            x = np.vstack([_sphere(rng, 200, d), y])
            diff = attention_velocity(x, y, w, A + dA, V + dV) - attention_velocity(x, y, w, A, V)
            worst = max(worst, np.linalg.norm(diff, axis=1).max())
    print(
        f"\n[speed] d={d} |A|={a} |V|={v} |dA|={da} |dV|={dv}: max |X~-X| = {worst:.4f} "
        f"<= delta = {delta:.4f} (ratio {worst / delta:.3f})"
    )
    assert worst <= delta * (1 + 1e-12)


def test_perturbation_speed_dA_term_is_attained():
    """A = 0, ΔA = ε e1e2ᵀ, V = e1e1ᵀ, μ = (δ_{e1} + δ_{-e1})/2, x = e2: the logits are ±ε and
    X̃ - X = tanh(ε) e1, so the ΔA term ‖V‖‖ΔA‖ of the perturbation speed is sharp as ε → 0."""
    eps = 1e-4
    x, y, w = np.array([[0.0, 1.0]]), np.array([[1.0, 0.0], [-1.0, 0.0]]), np.ones(2)
    A, V = np.zeros((2, 2)), np.diag([1.0, 0.0])
    dA = eps * np.array([[0.0, 1.0], [0.0, 0.0]])
    diff = attention_velocity(x, y, w, A + dA, V) - attention_velocity(x, y, w, A, V)
    delta = S.perturbation_speed(A, V, dA, np.zeros((2, 2)))
    assert delta == pytest.approx(eps)
    ratio = np.linalg.norm(diff) / delta
    print(f"\n[speed, dA sharpness] ratio {ratio:.6f}")
    assert 0.999 < ratio <= 1 + 1e-12


@pytest.mark.parametrize("case", range(len(CASES)))
def test_lipschitz_quotients(case):
    d, a, v, _, _ = CASES[case]
    rng = np.random.default_rng(100 + case)
    A, V = _with_norm(rng, d, a), _with_norm(rng, d, v)
    Lx, Lmu = S.lipschitz_constants(A, V)
    qx = qmu = 0.0
    for n in (1, 2, 5, 30):
        for r in (1e-4, 1e-2, 0.3, 1.5):
            y, w = _measure(rng, n, d)
            # in the point: pairs (x, x') at distance ~ r
            x = _sphere(rng, 100, d)
            xp = _unit(x + r * rng.normal(size=x.shape))
            num = np.linalg.norm(
                attention_velocity(x, y, w, A, V) - attention_velocity(xp, y, w, A, V), axis=1
            )
            qx = max(qx, np.max(num / np.linalg.norm(x - xp, axis=1)))
            # in the measure: move the atoms, coupling cost (Σ w_j |y_j - y_j'|² / Σ w)^{1/2}
            yp = _unit(y + r * rng.normal(size=y.shape))
            cost = np.sqrt(np.sum(w * np.sum((y - yp) ** 2, axis=1)) / w.sum())
            num = np.linalg.norm(
                attention_velocity(x, y, w, A, V) - attention_velocity(x, yp, w, A, V), axis=1
            )
            qmu = max(qmu, num.max() / cost)
    print(
        f"\n[lipschitz] d={d} |A|={a} |V|={v}: x-quotient {qx:.3f} <= Lx {Lx:.3f} "
        f"({qx / Lx:.2f}); mu-quotient {qmu:.3f} <= Lmu {Lmu:.3f} ({qmu / Lmu:.2f})"
    )
    assert qx <= Lx * (1 + 1e-9)
    assert qmu <= Lmu * (1 + 1e-9)


@pytest.mark.parametrize("beta", [1.0, 2.0, 4.0])
def test_lipschitz_in_measure_must_grow_exponentially(beta):
    """μ = (1-ε)δ_{-x} + εδ_{x}, ε = e^{-2β}, A = βI, V = I: moving the light atom at x
    tangentially gives the quotient e^β / (2 - ε) ≈ cosh β, so an ``e^{‖A‖}`` in Lμ is needed."""
    A, V = beta * np.eye(2), np.eye(2)
    eps, h = np.exp(-2 * beta), 1e-6
    x = np.array([[1.0, 0.0]])
    y = np.array([[-1.0, 0.0], [1.0, 0.0]])
    yp = np.array([[-1.0, 0.0], [np.cos(h), np.sin(h)]])
    w = np.array([1 - eps, eps])
    diff = attention_velocity(x, y, w, A, V) - attention_velocity(x, yp, w, A, V)
    q = np.linalg.norm(diff) / (np.sqrt(eps) * np.linalg.norm(yp[1] - y[1]))
    Lmu = S.lipschitz_constants(A, V)[1]
    print(
        f"\n[lipschitz mu, lower example] beta={beta}: quotient {q:.4f}, e^b/(2-eps) = "
        f"{np.exp(beta) / (2 - eps):.4f}, Lmu {Lmu:.3f} (ratio {q / Lmu:.3f})"
    )
    assert q == pytest.approx(np.exp(beta) / (2 - eps), rel=1e-4)
    assert q <= Lmu


# ---------------------------------------------------------------------------------------------
# (b) the W2 bound against simulated particle systems


def _rk4(x0: np.ndarray, model: Model, T: float, dt: float, save: np.ndarray) -> np.ndarray:
    """RK4 with renormalisation for the n-particle system (weights 1/n), parameters frozen at
    each step's midpoint (``dt`` must divide the layer length so steps never straddle a jump).
    Returns the positions at the ``save`` times (multiples of ``dt``)."""
    n = x0.shape[0]
    w = np.full(n, 1.0 / n)
    nsteps = int(round(T / dt))
    idx = {int(round(s / dt)): k for k, s in enumerate(save)}
    out = np.empty((len(save),) + x0.shape)
    x = x0.copy()
    for step in range(nsteps + 1):
        if step in idx:
            out[idx[step]] = x
        if step == nsteps:
            break
        A, V = model.parameters((step + 0.5) * dt)

        def f(z, A=A, V=V):
            return attention_velocity(z, z, w, A, V)

        k1 = f(x)
        k2 = f(x + 0.5 * dt * k1)
        k3 = f(x + 0.5 * dt * k2)
        k4 = f(x + dt * k3)
        x = _unit(x + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4))
    return out


def _sim_cases():
    rng = np.random.default_rng(7)
    d3 = 3
    Q, K = rng.normal(size=(d3, d3)) / np.sqrt(d3), rng.normal(size=(d3, d3)) / np.sqrt(d3)
    V3 = rng.normal(size=(d3, d3)) / np.sqrt(d3)
    e2, I2 = np.array([0.0, 1.0]), np.eye(2)
    big = _with_norm(rng, d3, np.linalg.norm(V3, 2))  # ‖ΔV‖ = ‖V‖
    dA = low_rank(rng.normal(size=(d3, 1)), rng.normal(size=(d3, 1)))
    dA *= 0.5 / np.linalg.norm(dA, 2)
    dV = low_rank(rng.normal(size=(d3, 1)), rng.normal(size=(d3, 1)))
    dV *= 0.1 / np.linalg.norm(dV, 2)
    return {
        "d2-fig2-like": (
            Model(I2, I2, I2, TiedLoRA(np.zeros((2, 2)), -0.1 * np.outer(e2, e2))),
            2,
            2.0,
        ),
        "d3-large-dV": (Model(Q, K, V3, TiedLoRA(np.zeros((d3, d3)), big)), 3, 2.0),
        "d3-dA-and-dV": (Model(Q, K, V3, TiedLoRA(dA, dV)), 3, 2.0),
        "d3-random-layers": (
            Model(Q, K, V3, RandomLoRA(d=d3, eta=0.4, h=0.5, s=(1.0, 0.5), seed=3, on="both")),
            3,
            2.0,
        ),
    }


@pytest.mark.parametrize("name", list(_sim_cases()))
def test_w2_bound_holds_for_particles(name):
    model, d, T = _sim_cases()[name]
    base = model.base
    rng = np.random.default_rng(11)
    n, dt = 250, 0.02
    x0 = _sphere(rng, n, d)
    # dense early (where the bound is below the diameter 2), then every 0.25
    save = np.unique(np.r_[np.arange(0.0, 0.5, 0.04), np.arange(0.5, T + 1e-12, 0.25)])
    X = _rk4(x0, base, T, dt, save)
    Y = _rk4(x0, model, T, dt, save)
    coupling = np.sqrt(np.mean(np.sum((X - Y) ** 2, axis=2), axis=1))
    bound = S.w2_bound(base, model, save)
    raw = S.w2_bound(base, model, save, cap=False)
    ratio = np.divide(coupling, bound, out=np.zeros_like(bound), where=bound > 0)
    ot = pytest.importorskip("ot")
    w = np.full(n, 1.0 / n)
    L0, d0 = S.growth_rate(*_params(base, model)), S.perturbation_speed(*_params(base, model))
    nA, nV, ndA, ndV = (np.linalg.norm(M, 2) for M in _params(base, model))
    print(
        f"\n[w2 bound] {name}: n={n}, d={d}, |A|={nA:.2f} |V|={nV:.2f} |dA|={ndA:.2f} "
        f"|dV|={ndV:.2f} (t=0): L = {L0:.3f}, delta = {d0:.3f}"
    )
    for k, (t, c, b, r, g) in enumerate(zip(save, coupling, bound, ratio, raw, strict=True)):
        if k % 2 == 1 or t == save[-1]:
            w2 = np.sqrt(ot.emd2(w, w, ot.dist(X[k], Y[k])))
            print(
                f"  t={t:4.2f}  W2 {w2:.3e}  coupling {c:.3e}  bound {b:.3e} "
                f"(Gronwall {g:.3e})  ratio {r:.3f}"
            )
    assert coupling[0] == 0.0 and bound[0] == 0.0
    assert np.sum(bound < 2.0) >= 4, "bound trivial at all saved times: test is not informative"
    assert np.all(coupling <= bound * (1 + 1e-9) + 1e-12)


def _params(base, model):
    A, V = base.parameters(0.0)
    At, Vt = model.parameters(0.0)
    return A, V, At - A, Vt - V


def test_w2_bound_point_mass_exact():
    """μ0 = δ_p stays a point mass p(t) = e^{tV}p/|e^{tV}p| whatever A is: exact W2.

    Small ‖A‖ = 0.3, ‖V‖ = 1, ‖ΔA‖ = 0.05, ‖ΔV‖ = 0.1 (L ≈ 2.7, δ = 0.15), t <= 1.2: there the
    Grönwall term δ(e^{Lt} - 1)/L (0.017 at t = 0.1, 1.3-1.4 at t = 1.2) is below both caps
    ((‖V‖ + ‖Ṽ‖) t and 2), so it is the bound being tested. Measured W2 / bound: 0.24-0.45 at
    t = 0.1, 0.03-0.13 at t = 1.2 (d = 2, 3, 4).
    """
    rng = np.random.default_rng(5)
    ts = np.linspace(0.0, 1.2, 13)
    for d in (2, 3, 4):
        A, V = _with_norm(rng, d, 0.3), _with_norm(rng, d, 1.0)
        dA, dV = _with_norm(rng, d, 0.05), _with_norm(rng, d, 0.1)
        p = _sphere(rng, 1, d)[0]
        w2 = np.array(
            [np.linalg.norm(_unit(expm(t * V) @ p) - _unit(expm(t * (V + dV)) @ p)) for t in ts]
        )
        gronwall = S.w2_bound_constant(A, V, dA, dV, ts, cap=False)
        speed = np.linalg.norm(V, 2) + np.linalg.norm(V + dV, 2)
        # informative: the Grönwall term, not a cap, is the bound at every t > 0
        assert np.all(gronwall[1:] < np.minimum(speed * ts[1:], 2.0)), (d, gronwall)
        np.testing.assert_array_equal(S.w2_bound_constant(A, V, dA, dV, ts), gronwall)
        assert np.all(w2 <= gronwall + 1e-12), (d, w2 / np.maximum(gronwall, 1e-300))
        assert w2[-1] > 0.01  # the two point masses really separate


def test_w2_bound_tied_matches_closed_form():
    rng = np.random.default_rng(2)
    A, V, dA, dV = (_with_norm(rng, 3, s) for s in (1.5, 1.0, 0.2, 0.3))
    model = Model.from_AV(A, V, TiedLoRA(dA, dV))
    ts = np.linspace(0.0, 6.0, 13)
    for cap in (True, False):
        np.testing.assert_allclose(
            S.w2_bound(model.base, model, ts, cap=cap),
            S.w2_bound_constant(A, V, dA, dV, ts, cap=cap),
            rtol=1e-12,
        )
    L, delta = S.growth_rate(A, V, dA, dV), S.perturbation_speed(A, V, dA, dV)
    assert S.w2_bound_constant(A, V, dA, dV, 0.7, cap=False) == pytest.approx(
        delta * np.expm1(L * 0.7) / L
    )
    assert S.w2_bound_constant(A, V, dA, dV, 50.0) == 2.0  # capped by the diameter
    assert S.w2_bound_constant(A, V, dA, dV, 50.0, cap=False) > 2.0


def test_w2_bound_layers_compose():
    """Two layers: the bound at the end equals the Grönwall formula restarted at the jump."""
    d = 2
    A, V = np.eye(d), np.eye(d)
    dV1, dV2 = 0.1 * np.eye(d), np.diag([0.0, 0.3])

    def fn(t):
        return np.zeros((d, d)), dV1 if t < 1.0 else dV2

    model = Model.from_AV(A, V, ScheduledLoRA(d=d, fn=fn, jumps=(1.0,)))
    z = np.zeros((d, d))
    L1, d1 = S.growth_rate(A, V, z, dV1), S.perturbation_speed(A, V, z, dV1)
    L2, d2 = S.growth_rate(A, V, z, dV2), S.perturbation_speed(A, V, z, dV2)
    D1 = d1 * np.expm1(L1) / L1
    D2 = D1 * np.exp(L2 * 0.5) + d2 * np.expm1(L2 * 0.5) / L2
    got = S.w2_bound(model.base, model, [1.5, 0.0, 1.0], cap=False)
    np.testing.assert_allclose(got, [D2, 0.0, D1], rtol=1e-12)


def test_lipschitz_constants_and_rate_hand_values():
    """``L_x = v (1 + a)``, ``L_μ = v (cosh a + a e^a)`` at ``a = 2`` (where ``a e^a = 14.78`` is
    most of ``L_μ = 18.54``), the rate takes the smaller sum of the two models, and the speed
    the smaller ``‖V‖`` in its ``ΔA`` term."""
    A, V = 2.0 * np.diag([1.0, -1.0, 0.5]), 3.0 * np.eye(3)
    Lx, Lmu = S.lipschitz_constants(A, V)
    assert Lx == pytest.approx(3.0 * 3.0, rel=1e-14)
    assert Lmu == pytest.approx(3.0 * (np.cosh(2.0) + 2.0 * np.exp(2.0)), rel=1e-14)
    dV = -np.eye(3)  # ‖V + ΔV‖ = 2 < 3: the perturbed model's constants are the smaller
    c = 3.0 + np.cosh(2.0) + 2.0 * np.exp(2.0)
    assert S.growth_rate(A, V, np.zeros((3, 3)), dV) == pytest.approx(2.0 * c, rel=1e-14)
    assert S.growth_rate(A, V, np.zeros((3, 3)), -dV) == pytest.approx(3.0 * c, rel=1e-14)
    # δ = min(‖ΔV‖ + min(‖V‖, ‖V + ΔV‖) ‖ΔA‖, ‖V‖ + ‖V + ΔV‖): 1 + 2 · 0.5, then the cap 5
    dA = 0.5 * np.eye(3)
    assert S.perturbation_speed(A, V, dA, dV) == pytest.approx(2.0, rel=1e-14)
    assert S.perturbation_speed(A, V, 8 * dA, dV) == pytest.approx(5.0, rel=1e-14)


def test_w2_bound_three_layers_by_hand():
    """Three layers (jumps at 0.15 and 0.3): ``D`` is carried across both breakpoints,
    ``D' = L_k D + δ_k`` with the constants written out here (``a = ‖A‖ = 2``, ``v = 1``,
    ``ΔA = 0``: ``δ_k = ‖ΔV_k‖``, ``L_k = (3 + cosh 2 + 2e²) min(1, ‖I + ΔV_k‖)``); with the
    caps, the capped value restarts each layer and ``S(t)`` accumulates ``1 + ‖I + ΔV_k‖``."""
    d = 2
    A, V = 2.0 * np.eye(d), np.eye(d)
    dVs = [0.1 * np.eye(d), np.diag([0.0, 0.3]), -0.5 * np.eye(d)]
    vt = [1.1, 1.3, 0.5]  # ‖I + ΔV_k‖
    delta = [0.1, 0.3, 0.5]
    c = 3.0 + np.cosh(2.0) + 2.0 * np.exp(2.0)
    Ls = [c * min(1.0, v) for v in vt]
    jumps = (0.15, 0.3)

    def fn(t):
        return np.zeros((d, d)), dVs[int(np.searchsorted(jumps, t, side="right"))]

    model = Model.from_AV(A, V, ScheduledLoRA(d=d, fn=fn, jumps=jumps))
    ts = np.array([0.0, 0.05, 0.15, 0.2, 0.3, 0.35, 0.45])

    def by_hand(cap):
        out, D0, S0, t0 = [], 0.0, 0.0, 0.0
        for k, t1 in enumerate((*jumps, 0.45)):
            L, dl, sp = Ls[k], delta[k], 1.0 + vt[k]

            def D(tau, D0=D0, S0=S0, L=L, dl=dl, sp=sp):
                g = D0 * np.exp(L * tau) + dl * np.expm1(L * tau) / L
                return min(g, S0 + sp * tau, 2.0) if cap else g

            out += [D(t - t0) for t in ts if t0 <= t < t1 or (k == 2 and t == t1)]
            D0, S0, t0 = D(t1 - t0), S0 + sp * (t1 - t0), t1
        return np.array(out)

    for cap in (False, True):
        np.testing.assert_allclose(S.w2_bound(model.base, model, ts, cap=cap), by_hand(cap),
                                   rtol=1e-12)  # fmt: skip
    # informative: with the caps, the third layer starts from a capped D (S(0.3) = 0.66)
    assert by_hand(True)[-2] < by_hand(False)[-2] / 3


class _Layers:
    """A model given by its layers: ``(A_k, V_k)`` on ``[jumps[k-1], jumps[k])`` (the protocol
    :func:`S.w2_bound` reads: ``d``, ``parameters(t)``, ``breakpoints(T)``)."""

    def __init__(self, layers, jumps):
        self.layers, self.jumps, self.d = layers, np.asarray(jumps, float), layers[0][0].shape[0]

    def parameters(self, t):
        return self.layers[int(np.searchsorted(self.jumps, t, side="right"))]

    def breakpoints(self, T):
        return self.jumps[self.jumps < T]


def test_w2_bound_restarts_from_the_capped_value():
    """Layer 1 (a = 2, ‖ΔV‖ = 1) takes the Grönwall term over the speed cap: at t = 0.15 it is
    (e^{0.15 c} - 1)/c = 1.05 against S = 0.45 (c = 3 + cosh 2 + 2e²). Layer 2 (A = 0,
    V = 0.01 I, no perturbation: rate 0.02, δ = 0) grows slower than its speed cap, so the
    bound there is ``S(0.15) e^{0.02 τ}`` from the capped value, not ``S(0.15) + 0.02 τ``."""
    z, eye = np.zeros((2, 2)), np.eye(2)
    base = _Layers([(2 * eye, eye), (z, 0.01 * eye)], [0.15])
    pert = _Layers([(2 * eye, 2 * eye), (z, 0.01 * eye)], [0.15])
    c = 3.0 + np.cosh(2.0) + 2.0 * np.exp(2.0)
    ts = np.array([0.1, 0.15, 1.15, 5.15])
    got = S.w2_bound(base, pert, ts)
    S0 = 3.0 * 0.15
    assert np.expm1(c * 0.15) / c > 2 * S0  # informative: the cap did act
    want = [min(np.expm1(c * 0.1) / c, 0.3), S0, S0 * np.exp(0.02), S0 * np.exp(0.1)]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_w2_bound_rejects_bad_inputs():
    d = 2

    def smooth(t):
        return np.zeros((d, d)), t * np.eye(d)

    model = Model.from_AV(np.eye(d), np.eye(d), ScheduledLoRA(d=d, fn=smooth))
    with pytest.raises(ValueError, match="vary inside"):
        S.w2_bound(model.base, model, [1.0])
    with pytest.raises(ValueError, match="different dimensions"):
        S.w2_bound(Model.from_AV(np.eye(3), np.eye(3)), model, [1.0])
    with pytest.raises(ValueError, match="finite and >= 0"):
        S.w2_bound(model.base, model.base, [-1.0])
    with pytest.raises(ValueError, match="square"):
        S.lipschitz_constants(np.ones((2, 3)), np.eye(2))
    with pytest.raises(ValueError, match="NaN"):
        S.perturbation_speed(np.eye(2), np.eye(2), np.full((2, 2), np.nan), np.eye(2))


# ---------------------------------------------------------------------------------------------
# (c) spectral criterion (Prop 3.3)


def test_spectral_criterion_stable_hand_values():
    V = np.diag([3.0, 1.0, 0.5])
    dV = np.array([[0.2, 0.3, 0.0], [0.3, 0.0, 0.0], [0.0, 0.0, 0.1]])
    c = S.spectral_criterion(V, dV)
    # λ1 = 3, λ2 = 1, gap = 2, u1 = e1, a = 0.2, b = 0.3 e2, E = diag(0, 0, 0.1)
    assert (c.lambda1, c.lambda2, c.gap) == pytest.approx((3.0, 1.0, 2.0))
    np.testing.assert_allclose(c.u1, [1.0, 0.0, 0.0], atol=1e-14)
    assert c.a == pytest.approx(0.2)
    np.testing.assert_allclose(c.b, [0.0, 0.3, 0.0], atol=1e-14)
    assert (c.b_norm, c.c_norm, c.E_norm) == pytest.approx((0.3, 0.3, 0.1))
    assert c.stable  # 2.2 > 0.7
    assert c.drift_bound == pytest.approx(0.7 / 2.2)
    # ũ1: top eigenvector of the upper 2x2 block [[3.2, 0.3], [0.3, 1]]
    theta = 0.5 * np.arctan2(2 * 0.3, 3.2 - 1.0)
    np.testing.assert_allclose(c.u1_tilde, [np.cos(theta), np.sin(theta), 0.0], atol=1e-12)
    assert c.predicted_drift == pytest.approx(2 * np.sin(theta / 2))
    assert c.predicted_drift <= c.drift_bound
    assert c.first_order_drift == pytest.approx(0.3 / 2.2)


def test_spectral_criterion_unstable_hand_values():
    # E dominates: gap + a = 0.1 < ‖E‖ = 0.5; the perturbed top eigenvector is e2
    c = S.spectral_criterion(np.diag([1.0, 0.9]), np.diag([0.0, 0.5]))
    assert (c.gap, c.a, c.b_norm, c.E_norm) == pytest.approx((0.1, 0.0, 0.0, 0.5))
    assert not c.stable
    assert c.drift_bound == pytest.approx(5.0)
    np.testing.assert_allclose(np.abs(c.u1_tilde), [0.0, 1.0], atol=1e-14)
    assert c.predicted_drift == pytest.approx(np.sqrt(2))
    # b dominates: gap + a = 0.2 < 2‖b‖ = 0.6
    dV = 0.3 * (np.outer([1, 0, 0], [0, 1, 0]) + np.outer([0, 1, 0], [1, 0, 0]))
    c = S.spectral_criterion(np.diag([2.0, 1.8, 0.2]), dV)
    assert (c.gap, c.a, c.b_norm, c.E_norm) == pytest.approx((0.2, 0.0, 0.3, 0.0))
    assert not c.stable and c.drift_bound == pytest.approx(3.0)
    # negative a can destroy the gap: gap + a <= 0 -> infinite drift bound
    c = S.spectral_criterion(np.diag([1.0, 0.5]), np.diag([-0.6, 0.0]))
    assert not c.stable and c.drift_bound == np.inf


def test_spectral_criterion_validation():
    with pytest.raises(ValueError, match="square"):
        S.spectral_criterion(np.ones((2, 3)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="2 x 2"):
        S.spectral_criterion(np.eye(2), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="NaN"):
        S.spectral_criterion(np.diag([1.0, np.inf]), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="symmetric"):
        S.spectral_criterion(np.array([[1.0, 0.5], [0.0, 1.0]]), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="positive semi-definite"):
        S.spectral_criterion(np.diag([1.0, -0.1]), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="d >= 2"):
        S.spectral_criterion(np.eye(1), np.zeros((1, 1)))
    # a rotation-like ΔV: complex dominant eigenvalue -> no real cluster direction
    c = S.spectral_criterion(np.eye(2), np.array([[0.0, -1.0], [1.0, 0.0]]))
    assert c.u1_tilde is None and np.isnan(c.predicted_drift)


def _cluster_direction(x: np.ndarray) -> tuple[np.ndarray, float]:
    m = _unit(x.mean(axis=0))
    return m, float(np.linalg.norm(x - m, axis=1).max())


def _tokens_near(rng, u1: np.ndarray, n: int, gamma: float) -> np.ndarray:
    x = _sphere(rng, 4 * n, u1.size)
    x[x @ u1 < 0] *= -1
    x = x[x @ u1 >= gamma][:n]
    assert x.shape[0] == n
    return x


@pytest.mark.parametrize(
    "V, dV, T",
    [
        (np.diag([3.0, 1.0, 0.5]), [[0.2, 0.3, 0.0], [0.3, 0.0, 0.0], [0.0, 0.0, 0.1]], 12.0),
        (np.diag([1.0, 0.2]), [[0.0, 0.3], [0.3, 0.0]], 30.0),
    ],
    ids=["d3", "d2-large-b"],
)
def test_spectral_criterion_stable_case_clusters_within_bound(V, dV, T):
    dV = np.asarray(dV)
    c = S.spectral_criterion(V, dV)
    assert c.stable
    rng = np.random.default_rng(4)
    d, n, gamma = V.shape[0], 60, 0.3
    x0 = _tokens_near(rng, c.u1, n, gamma)
    base = Model.from_AV(V, V)
    runs = {
        "dA=0": Model.from_AV(V, V, TiedLoRA(np.zeros_like(V), dV)),  # LoRA on V only
        "dA=dV": Model.from_AV(V, V, TiedLoRA(dV, dV)),  # A = V kept: Ã = Ṽ
    }
    xb = _rk4(x0, base, T, 0.05, np.array([T]))[0]
    ub, spread = _cluster_direction(xb)
    assert spread < 1e-4, "base flow did not cluster"
    np.testing.assert_allclose(ub, c.u1, atol=1e-4)
    for label, model in runs.items():
        xp = _rk4(x0, model, T, 0.05, np.array([T]))[0]
        up, spread = _cluster_direction(xp)
        assert spread < 1e-4, f"perturbed flow ({label}) did not cluster"
        drift = float(np.linalg.norm(ub - up))
        print(
            f"\n[spectral] d={d} {label}: measured |u1 - u1~| = {drift:.4f}, predicted "
            f"{c.predicted_drift:.4f}, first-order {c.first_order_drift:.4f}, "
            f"bound (2|b|+|E|)/(gap+a) = {c.drift_bound:.4f} (ratio {drift / c.drift_bound:.3f})"
        )
        assert drift == pytest.approx(c.predicted_drift, abs=1e-3)
        assert drift <= c.drift_bound  # constant 1 in the paper's ≲


def test_spectral_criterion_unstable_case_drifts_away():
    V, dV = np.diag([1.0, 0.9]), np.diag([0.0, 0.5])
    c = S.spectral_criterion(V, dV)
    assert not c.stable
    rng = np.random.default_rng(8)
    x0 = _tokens_near(rng, c.u1, 40, 0.3)
    x0[:, 1] = np.abs(x0[:, 1])  # upper half-plane: the perturbed cluster goes to +e2
    xp = _rk4(x0, Model.from_AV(V, V, TiedLoRA(np.zeros((2, 2)), dV)), 25.0, 0.05, np.array([25.0]))
    up, spread = _cluster_direction(xp[0])
    drift = float(np.linalg.norm(up - c.u1))
    print(
        f"\n[spectral, unstable] measured |u1 - u1~| = {drift:.4f} (predicted "
        f"{c.predicted_drift:.4f}), formula value {c.drift_bound:.2f}"
    )
    assert spread < 1e-3 and drift == pytest.approx(np.sqrt(2), abs=1e-3)


def test_perturbed_cluster_is_eigenvector_of_V_tilde_not_of_its_symmetric_part():
    """Non-symmetric ΔV with ΔV u1 = 0 (b = 0): Ṽ u1 = λ1 u1, so δ_{u1} stays stationary and
    the flow clusters at u1, while the top eigenvector of sym(Ṽ) is rotated by ~0.19 rad."""
    V, dV = np.diag([2.0, 0.5]), np.array([[0.0, 0.6], [0.0, 0.0]])
    c = S.spectral_criterion(V, dV)
    assert c.b_norm == 0.0 and c.c_norm == pytest.approx(0.6) and c.stable
    np.testing.assert_allclose(c.u1_tilde, [1.0, 0.0], atol=1e-14)
    sym = np.linalg.eigh(V + 0.5 * (dV + dV.T))[1][:, -1]
    rng = np.random.default_rng(9)
    x0 = _tokens_near(rng, c.u1, 40, 0.3)
    xp = _rk4(x0, Model.from_AV(V, V, TiedLoRA(np.zeros((2, 2)), dV)), 15.0, 0.05, np.array([15.0]))
    up, spread = _cluster_direction(xp[0])
    assert spread < 1e-4
    assert np.linalg.norm(up - c.u1_tilde) < 1e-4
    assert min(np.linalg.norm(up - sym), np.linalg.norm(up + sym)) > 0.15


# ------------------------------------------------------------------------------------------
# worst rank-one drift of the cluster direction
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("V", [np.diag([1.0, 0.8]), np.diag([1.0, 0.8, 0.3])])
def test_worst_rank_one_drift_closed_forms(V):
    """gap = 0.2, ε = 0.05 (< gap/2). Aligned u2 u1ᵀ: tan θ = ε/gap. Best u for v = u1:
    tan θ = ε/√(gap² − ε²). Best u, v: sin 2θ = 2ε/gap. Proof of the last (docs/experiments.md):
    an eigenvector x of V + ΔV has |P_x^⊥ V x| = |P_x^⊥ ΔV x| ≤ ε, and
    |P_x^⊥ V x|² = Var_{x_j²}(λ_j) ≥ cos²θ sin²θ gap², with equality at ΔV = ε x^⊥ xᵀ in the
    (u1, u2) plane. The optimiser is converged to ~1e-12 in the angle; tolerance 1e-8."""
    from solver.analysis import spectral_criterion, worst_rank_one_drift

    eps, gap, d = 0.05, 0.2, len(V)
    e = np.eye(d)
    aligned = spectral_criterion(V, eps * np.outer(e[1], e[0]))
    th_aligned = 2 * np.arcsin(aligned.predicted_drift / 2)
    assert np.tan(th_aligned) == pytest.approx(eps / gap, rel=1e-12)
    read_u1 = worst_rank_one_drift(V, eps, v=e[0], restarts=2)
    assert np.tan(read_u1.angle) == pytest.approx(eps / np.sqrt(gap**2 - eps**2), abs=1e-8)
    assert read_u1.u @ e[0] == pytest.approx(-eps / gap, abs=1e-4)  # cos φ = −ε/gap
    free = worst_rank_one_drift(V, eps, restarts=2)
    assert free.angle == pytest.approx(0.5 * np.arcsin(2 * eps / gap), abs=1e-8)
    assert abs(free.u @ free.v) < 1e-4  # the worst adapter is nilpotent: u ⟂ v
    assert free.angle > read_u1.angle > th_aligned  # both beat the aligned adapter
    # consistent with spectral_criterion's eigenvector of V + ΔV
    crit = spectral_criterion(V, free.dV)
    assert crit.predicted_drift == pytest.approx(free.drift, abs=1e-10)
    assert np.linalg.norm(free.dV, 2) == pytest.approx(eps, rel=1e-12)


def test_worst_rank_one_drift_bad_input():
    from solver.analysis import worst_rank_one_drift

    with pytest.raises(ValueError, match="symmetric"):
        worst_rank_one_drift([[1.0, 0.5], [0.0, 1.0]], 0.1)
    with pytest.raises(ValueError, match="simple"):
        worst_rank_one_drift(np.eye(2), 0.1)
    with pytest.raises(ValueError, match="eps"):
        worst_rank_one_drift(np.diag([1.0, 0.5]), -1.0)
