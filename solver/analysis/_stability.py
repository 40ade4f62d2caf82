"""Stability of the mean-field attention flow under LoRA perturbations.

Two results, derived in ``docs/stability.md``:

* a rigorous finite-time bound of ``W2(μ_t, ν_t)`` where ``μ`` and ``ν`` solve the continuity
  equation on ``S^{d-1}`` with velocities ``X_{A,V}[μ]`` and ``X_{A+ΔA, V+ΔV}[ν]`` from the same
  initial measure (Prop 3.1 of arXiv 2402.15415, with explicit constants of our own);
* the spectral criterion of Prop 3.3 (``A = V ⪰ 0``) for the drift of the cluster direction.

Notation: ``a = ‖A‖_op``, ``v = ‖V‖_op`` (spectral norms), ``Ṽ = V + ΔV``. Distances are the
Euclidean (chordal) ones of ``R^d``; the geodesic ``W2`` is at most ``π/2`` times the chordal one.

Constants (all proved in the doc):

* Lipschitz in the point: ``|X[μ](x) - X[μ](x')| ≤ Lx |x - x'|``, ``Lx = v (1 + a)``;
* Lipschitz in the measure: for any coupling ``π`` of ``μ`` and ``ν``,
  ``|X[μ](x) - X[ν](x)| ≤ Lμ (∫|y - ỹ|² dπ)^{1/2}``, ``Lμ = v (cosh a + a e^{a})``;
* perturbation speed: ``sup_{x,μ} |X_{A+ΔA,V+ΔV}[μ](x) - X_{A,V}[μ](x)| ≤ δ``,
  ``δ = min(‖ΔV‖ + min(v, ‖Ṽ‖) ‖ΔA‖, v + ‖Ṽ‖)``;
* Grönwall on the synchronous coupling ``D(t)² = ∫|Φ_t(x) - Φ̃_t(x)|² dμ_0(x) ≥ W2(μ_t, ν_t)²``:
  ``D' ≤ L D + δ`` with ``L = min(Lx + Lμ of (A, V), Lx + Lμ of (A+ΔA, V+ΔV))``, so
  ``D(t) ≤ ∫_0^t δ(s) exp(∫_s^t L) ds`` (``= δ (e^{Lt} - 1) / L`` for constant parameters),
  and also ``D(t) ≤ min(2, ∫_0^t (‖V‖ + ‖Ṽ‖) ds)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..model import as_matrix

__all__ = [
    "lipschitz_constants",
    "perturbation_speed",
    "growth_rate",
    "w2_bound",
    "w2_bound_constant",
    "SpectralCriterion",
    "spectral_criterion",
    "WorstRankOne",
    "worst_rank_one_drift",
]


def _op(M: np.ndarray) -> float:
    return float(np.linalg.norm(M, 2))


def lipschitz_constants(A, V) -> tuple[float, float]:
    """Lipschitz constants of the attention velocity in the point and in the measure.

    With ``a = ‖A‖_op`` and ``v = ‖V‖_op``:

    .. math::

        L_x = v (1 + a), \\qquad L_μ = v (\\cosh a + a e^{a}),

    meaning, for ``x, x' ∈ S^{d-1}``, probability measures ``μ, ν`` on the sphere and any
    coupling ``π`` of ``(μ, ν)``,

    .. math::

        |X[μ](x) - X[μ](x')| ≤ L_x |x - x'|, \\qquad
        |X[μ](x) - X[ν](x)| ≤ L_μ \\Big(\\int |y - ỹ|^2 dπ(y, ỹ)\\Big)^{1/2}

    (so ``L_μ`` is also a Lipschitz constant with respect to ``W2``). ``v a`` bounds the
    softmax average (covariance of ``V y`` and ``yᵀ A h``), the extra ``v`` comes from the
    projection ``P_x``; ``cosh a`` and ``a e^{a}`` come from the re-weighting of moved sources.

    Parameters
    ----------
    A, V : (d, d) array_like
        ``A = Kᵀ Q`` and the value matrix.

    Returns
    -------
    (Lx, Lmu) : tuple of float
    """
    A = as_matrix("A", A)
    V = as_matrix("V", V, A.shape[0])
    a, v = _op(A), _op(V)
    return v * (1.0 + a), v * (np.cosh(a) + a * np.exp(a))


def perturbation_speed(A, V, dA, dV) -> float:
    """Bound of ``sup_{x, μ} |X_{A+ΔA, V+ΔV}[μ](x) - X_{A,V}[μ](x)|``.

    .. math::

        δ = \\min\\big(‖ΔV‖ + \\min(‖V‖, ‖V + ΔV‖)\\,‖ΔA‖,\\; ‖V‖ + ‖V + ΔV‖\\big)

    (operator norms). The ``ΔV`` part is a convex combination of ``ΔV y``; the ``ΔA`` part is
    ``∫_0^1 Cov(V y, yᵀ ΔA x) ds`` under the softmax of ``A + s ΔA``, bounded by
    ``‖V‖ ‖ΔA‖`` (Cauchy-Schwarz and Popoviciu: ``yᵀ ΔA x ∈ [-‖ΔA‖, ‖ΔA‖]``). The second
    argument of the ``min`` is the trivial bound ``|X̃| + |X|``.

    Parameters
    ----------
    A, V, dA, dV : (d, d) array_like
        Base parameters and their perturbations.

    Returns
    -------
    float
    """
    A = as_matrix("A", A)
    d = A.shape[0]
    V, dA, dV = as_matrix("V", V, d), as_matrix("dA", dA, d), as_matrix("dV", dV, d)
    v, vt = _op(V), _op(V + dV)
    return float(min(_op(dV) + min(v, vt) * _op(dA), v + vt))


def growth_rate(A, V, dA, dV) -> float:
    """Grönwall rate ``L = min(Lx + Lμ at (A, V), Lx + Lμ at (A + ΔA, V + ΔV))``.

    Either flow can carry the Lipschitz estimates in the coupling argument (the other one
    then only enters through the perturbation speed), so the smaller sum is valid.
    """
    A = as_matrix("A", A)
    d = A.shape[0]
    V, dA, dV = as_matrix("V", V, d), as_matrix("dA", dA, d), as_matrix("dV", dV, d)
    return float(min(sum(lipschitz_constants(A, V)), sum(lipschitz_constants(A + dA, V + dV))))


def _grow(D0: float, L: float, delta: float, tau: np.ndarray) -> np.ndarray:
    """Solution of ``D' = L D + δ``, ``D(0) = D0`` at times ``tau ≥ 0`` (inf on overflow)."""
    tau = np.asarray(tau, dtype=float)
    with np.errstate(over="ignore", invalid="ignore"):
        if L == 0.0:
            out = D0 + delta * tau
        else:
            out = D0 * np.exp(L * tau) + delta * np.expm1(L * tau) / L
    return np.where(np.isnan(out), np.inf, out)


def _times(times) -> np.ndarray:
    t = np.asarray(times, dtype=float)
    if not np.all(np.isfinite(t)) or np.any(t < 0):
        raise ValueError("times must be finite and >= 0")
    return t


def w2_bound_constant(A, V, dA, dV, t, *, cap: bool = True):
    """Closed-form ``W2`` bound for time-independent parameters.

    .. math::

        W_2(μ_t, ν_t) ≤ D(t) ≤ \\min\\Big(\\frac{δ}{L}\\big(e^{L t} - 1\\big),\\;
        (‖V‖ + ‖V + ΔV‖)\\,t,\\; 2\\Big)

    with ``δ`` from :func:`perturbation_speed` and ``L`` from :func:`growth_rate`
    (``δ t`` when ``L = 0``). ``W2`` is the chordal one; the geodesic one is at most ``π/2``
    times larger. ``cap=False`` returns the Grönwall term alone.

    Parameters
    ----------
    A, V, dA, dV : (d, d) array_like
    t : float or array_like
        Times ``≥ 0``.
    cap : bool
        Apply the trivial caps (speed bound and the diameter 2 of the sphere).

    Returns
    -------
    float or ndarray (the shape of ``t``)
    """
    t = _times(t)
    L, delta = growth_rate(A, V, dA, dV), perturbation_speed(A, V, dA, dV)
    D = _grow(0.0, L, delta, t)
    if cap:
        s = _op(as_matrix("V", V)) + _op(np.asarray(V, dtype=float) + np.asarray(dV, dtype=float))
        D = np.minimum(np.minimum(D, s * t), 2.0)
    return float(D) if D.ndim == 0 else D


def w2_bound(model_base, model_perturbed, times, *, cap: bool = True) -> np.ndarray:
    """Bound of ``W2(μ_t, ν_t)`` for two (possibly time-dependent) models.

    ``μ`` follows ``model_base.parameters(t)``, ``ν`` follows ``model_perturbed.parameters(t)``,
    both from the same initial measure. The parameters must be constant between the union of
    the two models' breakpoints (true for tied and random adapters); on each interval
    ``[t_k, t_{k+1})`` with rate ``L_k`` (:func:`growth_rate`) and speed ``δ_k``
    (:func:`perturbation_speed`, with ``ΔA, ΔV`` the differences of the two models' parameters)

    .. math::

        D(t) ≤ D(t_k) e^{L_k (t - t_k)} + \\frac{δ_k}{L_k}\\big(e^{L_k (t - t_k)} - 1\\big),
        \\qquad D(0) = 0,

    which is ``∫_0^t δ(s) exp(∫_s^t L) ds``. With ``cap=True`` the value is also bounded by
    ``S(t) = ∫_0^t (‖V(s)‖ + ‖Ṽ(s)‖) ds`` and by 2, and ``D(t_k)`` is restarted from the
    capped value at each breakpoint (all rigorous).

    Parameters
    ----------
    model_base, model_perturbed : solver.Model
        Anything with ``.d``, ``.parameters(t) -> (A, V)`` and ``.breakpoints(T)``.
    times : array_like
        Times ``≥ 0`` (any order).
    cap : bool
        Apply the trivial caps.

    Returns
    -------
    ndarray
        The bound at each time (shape of ``times``).

    Raises
    ------
    ValueError
        Dimensions differ, times are negative, or the parameters vary inside an interval
        between breakpoints (then the bound would not be rigorous: declare the jumps).
    """
    if model_base.d != model_perturbed.d:
        raise ValueError(f"models have different dimensions: {model_base.d} vs {model_perturbed.d}")
    t = _times(times)
    flat = t.ravel()
    out = np.zeros(flat.shape)
    T = float(flat.max()) if flat.size else 0.0
    if T == 0.0:
        return out.reshape(t.shape)
    bps = np.concatenate(
        [[0.0, T], model_base.breakpoints(T), model_perturbed.breakpoints(T)]
    ).astype(float)
    bps = np.unique(bps[(bps >= 0) & (bps <= T)])
    D0, S0 = 0.0, 0.0
    for t0, t1 in zip(bps[:-1], bps[1:], strict=True):
        A, V = _interval_parameters(model_base, t0, t1)
        At, Vt = _interval_parameters(model_perturbed, t0, t1)
        L, delta = growth_rate(A, V, At - A, Vt - V), perturbation_speed(A, V, At - A, Vt - V)
        speed = _op(V) + _op(Vt)
        last = t1 == bps[-1]
        sel = (flat >= t0) & ((flat <= t1) if last else (flat < t1))
        tau = flat[sel] - t0
        D = _grow(D0, L, delta, tau)
        if cap:
            D = np.minimum(np.minimum(D, S0 + speed * tau), 2.0)
        out[sel] = D
        D0 = float(_grow(D0, L, delta, t1 - t0))
        S0 = S0 + speed * (t1 - t0)
        if cap:
            D0 = min(D0, S0, 2.0)
    return out.reshape(t.shape)


def _interval_parameters(model, t0: float, t1: float) -> tuple[np.ndarray, np.ndarray]:
    """Parameters on ``[t0, t1)``, checked to be constant there (3 probes)."""
    probes = [t0 + f * (t1 - t0) for f in (0.5, 1e-6, 1.0 - 1e-6)]
    A, V = (np.asarray(M, dtype=float) for M in model.parameters(probes[0]))
    for s in probes[1:]:
        As, Vs = model.parameters(s)
        if not (np.array_equal(As, A) and np.array_equal(Vs, V)):
            raise ValueError(
                f"the parameters of {model!r} vary inside [{t0:g}, {t1:g}) (at t = {s:g}); "
                "w2_bound needs parameters that are constant between breakpoints "
                "(declare the jumps of the schedule)"
            )
    return A, V


@dataclass(frozen=True)
class SpectralCriterion:
    """Prop 3.3 quantities for ``A = V ⪰ 0`` perturbed by ``ΔV``.

    Attributes
    ----------
    lambda1, lambda2 : float
        The two largest eigenvalues of ``V``; ``gap = lambda1 - lambda2``.
    u1 : (d,) ndarray
        Unit top eigenvector of ``V`` (sign: largest-magnitude entry positive).
    a : float
        ``u1ᵀ ΔV u1``.
    b : (d,) ndarray
        ``P_⊥ ΔV u1`` with ``P_⊥ = I - u1 u1ᵀ``; ``b_norm = ‖b‖``.
    c_norm : float
        ``‖P_⊥ ΔVᵀ u1‖`` (the row coupling; equals ``b_norm`` for symmetric ``ΔV``; the
        criterion as stated in the paper does not see it).
    E_norm : float
        ``‖P_⊥ ΔV P_⊥‖_op``.
    stable : bool
        ``gap + a > 2 ‖b‖ + ‖E‖_op``.
    drift_bound : float
        ``(2 ‖b‖ + ‖E‖_op) / (gap + a)`` (``inf`` when ``gap + a ≤ 0``).
    u1_tilde : (d,) ndarray or None
        Unit eigenvector of ``Ṽ = V + ΔV`` for its eigenvalue of largest real part (the
        direction where a single cluster of the perturbed flow sits: ``δ_p`` is stationary iff
        ``Ṽ p ∥ p``), signed so that ``<u1_tilde, u1> ≥ 0``; ``None`` when that eigenvalue is
        not real.
    lambda1_tilde : complex
        That eigenvalue.
    predicted_drift : float
        ``|u1 - u1_tilde|`` (``nan`` when ``u1_tilde`` is None).
    first_order_drift : float
        ``(Σ_{j≥2} (u_jᵀ ΔV u1 / (λ1 + a - λ_j - u_jᵀ ΔV u_j))²)^{1/2}``: the first-order
        (diagonally corrected) eigenvector perturbation, cf. Remark 3.4; an estimate, not a
        bound (``inf`` when a denominator is ``≤ 0``).
    """

    lambda1: float
    lambda2: float
    gap: float
    u1: np.ndarray
    a: float
    b: np.ndarray
    b_norm: float
    c_norm: float
    E_norm: float
    stable: bool
    drift_bound: float
    u1_tilde: np.ndarray | None
    lambda1_tilde: complex
    predicted_drift: float
    first_order_drift: float


def spectral_criterion(V, dV, *, tol: float = 1e-8) -> SpectralCriterion:
    """Prop 3.3 stability criterion for ``A = V`` symmetric positive semi-definite.

    Decompose ``ΔV`` along the top eigenvector ``u1`` of ``V``:
    ``a = u1ᵀ ΔV u1``, ``b = P_⊥ ΔV u1``, ``E = P_⊥ ΔV P_⊥``. The perturbation is *stable* when

    .. math::

        \\mathrm{gap} + a > 2‖b‖ + ‖E‖_{op}, \\qquad \\mathrm{gap} = λ_1 - λ_2,

    and then ``‖u1 - ũ1‖ ≲ (2‖b‖ + ‖E‖_op) / (gap + a)``. For symmetric ``ΔV`` the inequality
    holds with constant 1 (``docs/stability.md``: ``tan θ ≤ ‖b‖ / (gap + a - ‖E‖)``).

    Parameters
    ----------
    V : (d, d) array_like
        Symmetric PSD value matrix (``= A``), ``d ≥ 2``; symmetry and PSD are checked up to
        ``tol * max(1, ‖V‖)``, then ``V`` is symmetrised.
    dV : (d, d) array_like
        The perturbation (any square matrix).
    tol : float
        Relative tolerance of the checks.

    Returns
    -------
    SpectralCriterion
    """
    V = as_matrix("V", V)
    d = V.shape[0]
    dV = as_matrix("dV", dV, d)
    if d < 2:
        raise ValueError("the spectral criterion needs d >= 2 (it uses the second eigenvalue)")
    scale = tol * max(1.0, _op(V))
    asym = float(np.max(np.abs(V - V.T)))
    if asym > scale:
        raise ValueError(f"V must be symmetric (max |V - Vᵀ| = {asym:.3g} > {scale:.3g})")
    V = 0.5 * (V + V.T)
    lam, U = np.linalg.eigh(V)
    lam, U = lam[::-1], U[:, ::-1]
    if lam[-1] < -scale:
        raise ValueError(f"V must be positive semi-definite (smallest eigenvalue {lam[-1]:.3g})")
    U = U * np.where(U[np.argmax(np.abs(U), axis=0), np.arange(d)] < 0, -1.0, 1.0)
    u1 = U[:, 0].copy()
    P = np.eye(d) - np.outer(u1, u1)
    a = float(u1 @ dV @ u1)
    b = P @ dV @ u1
    c = P @ dV.T @ u1
    E = P @ dV @ P
    gap = float(lam[0] - lam[1])
    b_norm, E_norm = float(np.linalg.norm(b)), _op(E)
    den = gap + a
    stable = bool(den > 2 * b_norm + E_norm)
    drift = (2 * b_norm + E_norm) / den if den > 0 else np.inf
    # Perturbed cluster direction: dominant eigenvector of Ṽ (not of its symmetric part).
    mu, W = np.linalg.eig(V + dV)
    k = int(np.argmax(mu.real))
    lt = complex(mu[k])
    if abs(lt.imag) > tol * max(1.0, abs(lt)):
        ut, pdrift = None, float("nan")
    else:
        ut = np.real(W[:, k])
        ut = ut / np.linalg.norm(ut)
        if ut @ u1 < 0:
            ut = -ut
        pdrift = float(np.linalg.norm(u1 - ut))
    alpha = U[:, 1:].T @ dV @ u1
    dens = lam[0] + a - lam[1:] - np.einsum("ij,ik,kj->j", U[:, 1:], dV, U[:, 1:])
    fo = float(np.sqrt(np.sum((alpha / dens) ** 2))) if np.all(dens > 0) else np.inf
    return SpectralCriterion(
        lambda1=float(lam[0]),
        lambda2=float(lam[1]),
        gap=gap,
        u1=u1,
        a=a,
        b=b,
        b_norm=b_norm,
        c_norm=float(np.linalg.norm(c)),
        E_norm=E_norm,
        stable=stable,
        drift_bound=float(drift),
        u1_tilde=ut,
        lambda1_tilde=lt,
        predicted_drift=pdrift,
        first_order_drift=fo,
    )


@dataclass(frozen=True)
class WorstRankOne:
    """The rank-one perturbation ``ΔV = ε u vᵀ`` (``|u| = |v| = 1``) that turns the dominant
    eigenvector of ``V`` furthest (:func:`worst_rank_one_drift`).

    Attributes
    ----------
    angle : float
        Angle (radians, in ``[0, π/2]``) between ``u1`` and the dominant eigenvector ``ũ1`` of
        ``V + ΔV``; ``drift = |u1 − ũ1| = 2 sin(angle / 2)`` (the chordal cluster drift).
    u, v : (d,) ndarray
        The unit factors; ``dV = ε u vᵀ``.
    u1, u1_tilde : (d,) ndarray
        The two dominant eigenvectors (``<u1_tilde, u1> ≥ 0``).
    """

    angle: float
    drift: float
    u: np.ndarray
    v: np.ndarray
    dV: np.ndarray
    u1: np.ndarray
    u1_tilde: np.ndarray


def worst_rank_one_drift(
    V, eps: float, *, v=None, restarts: int = 4, seed: int = 0
) -> WorstRankOne:
    """Numerical worst case of the cluster drift over rank-one perturbations of norm ``ε``.

    .. math::

        \\max_{|u| = |v| = 1} \\angle\\big(u_1(V),\\ ũ_1(V + ε u v^T)\\big)

    where ``ũ_1`` is the eigenvector of the eigenvalue of largest real part (the direction a
    single cluster of the perturbed flow sits at); perturbations whose dominant eigenvalue is
    not real score 0. ``v`` given: maximise over ``u`` only (adapters reading a fixed
    direction, e.g. ``v = u1``). Nelder–Mead over the unnormalised factors from ``restarts``
    Gaussian starts (``default_rng(seed)``) plus the aligned adapter ``u2 u1ᵀ``.

    Closed forms (``docs/experiments.md``), ``gap = λ1 − λ2``, ``2ε ≤ gap``: with ``v = u1``,
    ``tan θ = ε / √(gap² − ε²)`` at ``u = cos φ u1 + sin φ u2``, ``cos φ = −ε/gap``; over all
    ``u, v`` (indeed over all ``‖ΔV‖ ≤ ε``), ``sin 2θ = 2ε / gap`` at ``u ⟂ v``
    (``ΔV = ε x^⊥ xᵀ``, ``x = cos θ u1 + sin θ u2``, ``x^⊥ = −sin θ u1 + cos θ u2``).

    Parameters
    ----------
    V : (d, d) array_like
        Symmetric value matrix with a simple top eigenvalue.
    eps : float
        ``‖ΔV‖_op = ε > 0``.
    v : (d,) array_like, optional
        Fixed read direction (normalised here).
    restarts, seed : int
        Random starts of the optimiser.

    Returns
    -------
    WorstRankOne
    """
    from scipy.optimize import minimize

    V = as_matrix("V", V)
    d = V.shape[0]
    if d < 2:
        raise ValueError("worst_rank_one_drift needs d >= 2")
    if not np.allclose(V, V.T, atol=1e-12 * max(1.0, _op(V))):
        raise ValueError("V must be symmetric")
    if not (np.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a positive number, got {eps}")
    if restarts < 0:
        raise ValueError(f"restarts must be >= 0, got {restarts}")
    lam, U = np.linalg.eigh(V)
    if lam[-1] - lam[-2] <= 1e-12 * max(1.0, abs(lam[-1])):
        raise ValueError("the top eigenvalue of V must be simple (gap > 0)")
    u1, u2 = U[:, -1], U[:, -2]
    fixed = None
    if v is not None:
        fixed = np.asarray(v, dtype=float).reshape(-1)
        if fixed.shape != (d,) or not np.linalg.norm(fixed) > 0:
            raise ValueError(f"v must be a non-zero vector of length {d}")
        fixed = fixed / np.linalg.norm(fixed)

    def factors(z):
        u = z[:d] / np.linalg.norm(z[:d])
        w = fixed if fixed is not None else z[d:] / np.linalg.norm(z[d:])
        return u, w

    def turned(z):
        u, w = factors(z)
        mu, W = np.linalg.eig(V + eps * np.outer(u, w))
        k = int(np.argmax(mu.real))
        if abs(mu[k].imag) > 1e-12 * max(1.0, abs(mu[k])):
            return 0.0, None
        x = np.real(W[:, k])
        c = float(x @ u1)
        x = x * (1.0 if c >= 0 else -1.0) / np.linalg.norm(x)
        return float(np.arctan2(np.linalg.norm(x - (x @ u1) * u1), abs(x @ u1))), x

    def cost(z):
        if np.linalg.norm(z[:d]) == 0 or (fixed is None and np.linalg.norm(z[d:]) == 0):
            return 0.0
        # the angle does not depend on the factors' lengths; the penalty (zero at unit
        # length) removes that flat direction, which would stall the simplex
        return -turned(z)[0] + 0.1 * float(np.sum(((z.reshape(-1, d) ** 2).sum(1) - 1) ** 2))

    g = np.random.default_rng(seed)
    starts = [np.concatenate([u2, u1][: 1 if fixed is not None else 2])]
    starts += [g.normal(size=d if fixed is not None else 2 * d) for _ in range(restarts)]
    best = None
    for z0 in starts:
        r = minimize(cost, z0, method="Nelder-Mead",
                     options={"xatol": 1e-7, "fatol": 1e-14, "maxiter": 2000 * d})  # fmt: skip
        if best is None or r.fun < best.fun:
            best = r
    angle, x = turned(best.x)
    u, w = factors(best.x)
    if x is None:
        x = u1.copy()
    return WorstRankOne(angle=angle, drift=float(2 * np.sin(angle / 2)), u=u, v=w,
                        dV=eps * np.outer(u, w), u1=u1, u1_tilde=x)  # fmt: skip
