r"""Linear response of the attention flow to the weights: the first variation of the flow map.

Particles (exact for the discrete scheme). The particles' RK4 scheme with the projection
retraction (:func:`solver.simulate_particles`) is a map ``x_0 ↦ x_T(A, V)``. Its derivative in
the direction of a schedule ``t ↦ (δA(t), δV(t))``,

.. math::

    δx_T = \frac{d}{dε}\Big|_{ε=0} x_T(A + ε δA, V + ε δV),

solves the tangent-linear RK4 recursion (each stage differentiated, the retraction too). It is
computed here by the complex step (Squire & Trapp 1998; forward-mode differentiation):
``δx_T = Im x_T(A + i h δA, V + i h δV) / h`` with ``h = 1e-30``, every operation of the
scheme being analytic (the softmax shift uses the real parts only, which cancels exactly, and
``|y|`` is ``(Σ_a y_a²)^{1/2}``, not the modulus). There is no subtraction, so the result is the
derivative of the discrete map to round-off, checked against central finite differences of
:func:`solver.simulate_particles` (tests/test_response.py). Many directions are taken at once
(a batch axis).

First-order ``W2``. For distinct base positions ``x_i(T)`` the identity coupling is optimal
for ``ε`` small enough (any other permutation costs at least the smallest separation), so

.. math::

    W_2(μ_T, ν_T^ε) = |ε| \Big(\frac1n \sum_i |δx_i(T)|^2\Big)^{1/2} + o(ε)

(geodesic or chordal: they agree to first order). :func:`first_order_w2`.

Random adapters (Thm 4.2). Layer ``ℓ`` gets ``ΔV^ℓ = η Σ_a s_a u_a^ℓ (v_a^ℓ)ᵀ`` with
``u, v ~ N(0, I_d/d)`` i.i.d. The response is linear in the adapters, ``δx = η Σ_ℓ J_ℓ(ΔV^ℓ/η)``
with ``J_ℓ`` the layer's Jacobian (:func:`layer_jacobians`: one direction ``e_i e_jᵀ`` per
layer and entry), and ``E[M_ij M_kl] = Σ_a s_a² δ_ik δ_jl / d²`` for ``M = Σ_a s_a u_a v_aᵀ``,
so the mean square over the adapters is exact:

.. math::

    E_{u,v} \frac1n \sum_i |δx_i|^2 = η^2 \frac{Σ_a s_a^2}{d^2} \frac1n
        \sum_ℓ \|J_ℓ\|_F^2 =: η^2 c'^2,

and ``c_L = √L c'`` is the coefficient of ``W2 ≈ c_L η_L / √L`` (:func:`random_adapter_c`):
the only randomness left is the initial draw. Coarser layers are sums of finer ones (the
response is linear), so one fine partition gives every ``L`` dividing it.

Most forgetful adapter. For a tied ``ΔV`` (all layers) the response is the linear map
``M ↦ J(M) = Σ_ij M_ij J^{ij}`` from ``R^{d×d}`` to ``R^{n d}``; the unit (Frobenius) ``M``
maximising ``|J(M)|`` is its top right singular vector, ``σ_1`` the first-order ``W2`` per unit
norm times ``√n``; with rank ``r`` (``M = B Cᵀ``, ``B, C ∈ R^{d×r}``) the maximum is found by
alternating the two factors, each step a top singular vector (:func:`most_forgetful_adapter`).
With one adapter per layer (the per-layer Jacobians of :func:`layer_jacobians`) the same holds
for the stacked map ``(M_1, ..., M_L) ↦ Σ_ℓ J_ℓ(M_ℓ)`` under ``Σ_ℓ ‖M_ℓ‖_F² = 1``.

The measure's ``W2`` on S^1. For atoms that stand for a density (a mesh quadrature), the atoms'
first-order ``W2`` bounds the measure's from above; on the circle the measure's is exact and
cheap: :func:`circle_gradient_part` removes the part of the displacement that the circle's
optimal coupling absorbs (a shift of the cut of its quantile coupling).

The PDE. The tangent-linear mean-field flow in Lagrangian form (:func:`measure_tangent`):
the PDE's solution is the push-forward of ``μ_0`` by the flow of its own velocity, and the
first variation of that flow is computed exactly on the mesh quadrature of ``μ_0`` (weighted
atoms at the cell centroids); it converges with the mesh, and :func:`pde_response` (symmetric
differences in ``ε`` of the Eulerian DG0 scheme) is checked against it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = [
    "ParticleTangent",
    "particle_tangent",
    "layer_jacobians",
    "tied_jacobian",
    "first_order_w2",
    "random_adapter_c",
    "ForgetfulAdapter",
    "most_forgetful_adapter",
    "COMPLEX_STEP",
    "PDEResponse",
    "pde_response",
    "MeasureTangent",
    "measure_tangent",
    "mesh_atoms",
    "circle_gradient_part",
]

#: the imaginary step of the complex-step derivative (no cancellation: any tiny value works)
COMPLEX_STEP = 1e-30


@dataclass
class ParticleTangent:
    """``x`` (n, d): the particles at ``T``; ``dx`` (m, n, d): the derivative of ``x`` in each
    of the ``m`` directions; ``times``: the scheme's step times."""

    x: np.ndarray
    dx: np.ndarray
    times: np.ndarray


def _velocity(x: np.ndarray, A: np.ndarray, V: np.ndarray, logw=None) -> np.ndarray:
    """Batched attention velocity ``P_{x_i}(V Σ_j w_ij x_j)``, ``w_ij ∝ ω_j e^{x_jᵀ A x_i}``
    (``log ω`` = ``logw`` (n,), uniform by default); ``x`` (m, n, d), ``A``, ``V`` (m, d, d),
    complex, analytic in every entry."""
    xt = x.transpose(0, 2, 1)
    logits = (x @ A.transpose(0, 2, 1)) @ xt  # [m, i, j] = (A x_i) · x_j
    if logw is not None:
        logits = logits + logw
    logits = logits - logits.real.max(axis=2, keepdims=True)
    w = np.exp(logits)
    w /= w.sum(axis=2, keepdims=True)
    y = (w @ x) @ V.transpose(0, 2, 1)
    return y - np.sum(x * y, axis=2, keepdims=True) * x


def _retract(x: np.ndarray, v: np.ndarray) -> np.ndarray:
    y = x + v
    return y / np.sqrt(np.sum(y * y, axis=2, keepdims=True))


def particle_tangent(
    model,
    x0: np.ndarray,
    T: float,
    directions: Callable[[float], tuple[np.ndarray, np.ndarray]],
    *,
    dt: float = 0.01,
    jumps=(),
    t0: float = 0.0,
    dx0: np.ndarray | None = None,
    weights: np.ndarray | None = None,
) -> ParticleTangent:
    """Derivative of the particles at ``t0 + T`` in ``m`` directions of the weights.

    ``directions(t) -> (dA, dV)``, each (m, d, d): the direction of ``(A(t), V(t))``; the
    scheme is :func:`solver.simulate_particles`' (sphere, RK4, projection retraction,
    parameters frozen at each step's midpoint, steps landing on ``jumps`` and on the model's
    breakpoints, all measured from ``t0``), and ``dx`` its exact derivative (module doc: the
    complex step). ``dx0`` (m, n, d): a derivative of the start ``x0`` in each direction
    (default zero), so that ``dx0 = e_k`` with ``dA = dV = 0`` gives the propagator's column
    ``k`` of the scheme's map from ``t0`` to ``t0 + T``. ``weights`` (n,), positive: the
    atoms' masses of a weighted empirical measure ``Σ_i ω_i δ_{x_i}`` (uniform by default), the
    velocity its attention field (:func:`measure_tangent`).
    """
    from ..transport import time_grid

    x0 = np.asarray(x0, dtype=float)
    if x0.ndim != 2 or x0.shape[1] != model.d:
        raise ValueError(f"x0 must be (n, {model.d}) for this model, got shape {x0.shape}")
    if np.abs(np.linalg.norm(x0, axis=1) - 1).max() > 1e-8:
        raise ValueError("x0: every particle must lie on the unit sphere (|x| = 1)")
    if not (np.isfinite(dt) and dt > 0):
        raise ValueError(f"dt must be > 0, got {dt}")
    if not callable(directions):
        raise TypeError("directions must be a callable t -> (dA, dV), each (m, d, d)")
    dA0, dV0 = directions(t0)
    m, d = np.shape(dV0)[0], model.d
    if np.shape(dA0) != (m, d, d) or np.shape(dV0) != (m, d, d):
        raise ValueError(f"directions(t) must return two (m, {d}, {d}) arrays, got "
                         f"{np.shape(dA0)} and {np.shape(dV0)}")  # fmt: skip
    logw = None if weights is None else np.log(_masses(weights, len(x0), positive=True))
    h = COMPLEX_STEP
    x = np.broadcast_to(x0.astype(complex), (m, *x0.shape)).copy()
    if dx0 is not None:
        dx0 = np.asarray(dx0, dtype=float)
        if dx0.shape != x.shape:
            raise ValueError(f"dx0 must have shape {x.shape}, got {dx0.shape}")
        x = x + 1j * h * dx0
    bps = np.concatenate([np.asarray(jumps, dtype=float), model.breakpoints(t0 + T) - t0])
    times, _ = time_grid(T, dt, None, bps)
    for k in range(len(times) - 1):
        t, s = t0 + times[k], times[k + 1] - times[k]
        A, V = model.parameters(t + 0.5 * s)
        dA, dV = directions(t + 0.5 * s)
        Ac = A[None] + 1j * h * np.asarray(dA, dtype=float)
        Vc = V[None] + 1j * h * np.asarray(dV, dtype=float)
        k1 = _velocity(x, Ac, Vc, logw)
        k2 = _velocity(_retract(x, 0.5 * s * k1), Ac, Vc, logw)
        k3 = _velocity(_retract(x, 0.5 * s * k2), Ac, Vc, logw)
        k4 = _velocity(_retract(x, s * k3), Ac, Vc, logw)
        x = _retract(x, s / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4))
    return ParticleTangent(x=x[0].real.copy(), dx=x.imag / h, times=t0 + times)


def _masses(weights, n: int, positive: bool = False) -> np.ndarray:
    """``weights`` checked (``n`` finite masses, ``> 0`` or ``>= 0`` not all zero) and
    normalised to sum 1."""
    w = np.asarray(weights, dtype=float)
    bad = (w <= 0) if positive else (w < 0)
    if w.shape != (n,) or not np.all(np.isfinite(w)) or bad.any() or w.sum() <= 0:
        kind = "positive finite masses" if positive else "finite masses >= 0, not all zero"
        raise ValueError(f"weights must be {n} {kind}, one per atom")
    return w / w.sum()


def _basis(d: int) -> np.ndarray:
    """The ``d²`` matrices ``e_i e_jᵀ`` (index ``i d + j``), shape (d², d, d)."""
    return np.eye(d * d).reshape(d * d, d, d)


def tied_jacobian(model, x0: np.ndarray, T: float, *, dt: float = 0.01, on: str = "V"):
    """The response to a tied ``δV`` (``on="V"``) or ``δA`` (``"A"``), constant in time:
    ``(x_T, J)`` with ``J`` (d², n, d), ``J[i d + j]`` the derivative along ``e_i e_jᵀ``."""
    if on not in ("V", "A"):
        raise ValueError(f"on must be 'V' or 'A', got {on!r}")
    E = _basis(model.d)
    Z = np.zeros_like(E)
    pair = (Z, E) if on == "V" else (E, Z)
    r = particle_tangent(model, x0, T, lambda t: pair, dt=dt)
    return r.x, r.dx


def layer_jacobians(model, x0: np.ndarray, T: float, L: int, *, dt: float = 0.01,
                    weights: np.ndarray | None = None):  # fmt: skip
    """Per-layer Jacobians of ``x_T`` in ``V`` for ``L`` layers of length ``T/L``: ``(x_T, J)``,
    ``J`` (L, d², n, d); ``J[ℓ, i d + j]`` is the response to ``e_i e_jᵀ`` on layer ``ℓ`` only.

    Layer by layer, one batch of ``n d + d²`` directions gives the propagator ``Φ_ℓ`` of the
    scheme over the layer (``n d`` unit starts) and the layer's own response ``g_ℓ`` (``d²``
    directions of ``V``); then ``J_ℓ = Φ_{L−1} ⋯ Φ_{ℓ+1} g_ℓ`` (chain rule, exact): the cost is
    ``n d + d²`` trajectories whatever ``L``. ``J[ℓ]`` summed over the fine layers of a coarse
    one is the coarse layer's Jacobian (linearity). ``weights``: the atoms' masses of a
    weighted measure (:func:`particle_tangent`; :func:`measure_tangent` gives the PDE's)."""
    if int(L) != L or L < 1:
        raise ValueError(f"L (number of layers) must be a positive integer, got {L}")
    L, d = int(L), model.d
    x = np.asarray(x0, dtype=float)
    n = len(x)
    nd, dd = n * d, d * d
    hl = T / L
    zero = np.zeros((nd + dd, d, d))
    dV = zero.copy()
    dV[nd:] = _basis(d)
    start = np.zeros((nd + dd, n, d))
    start[:nd] = np.eye(nd).reshape(nd, n, d)
    phis, gs = [], []
    for ell in range(L):
        r = particle_tangent(model, x, hl, lambda t: (zero, dV), dt=dt, t0=ell * hl, dx0=start,
                             weights=weights)  # fmt: skip
        x = r.x
        phis.append(r.dx[:nd].reshape(nd, nd).T)  # column k: the image of e_k
        gs.append(r.dx[nd:].reshape(dd, nd))
    J = np.empty((L, dd, n, d))
    P = np.eye(nd)
    for ell in range(L - 1, -1, -1):
        J[ell] = (gs[ell] @ P.T).reshape(dd, n, d)
        P = P @ phis[ell]
    return x, J


def first_order_w2(dx: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """``(Σ_i ω_i |δx_i|²)^{1/2}`` over the last two axes (``ω_i = 1/n`` by default, else the
    normalised ``weights``): ``W2 / |ε|`` to first order for distinct atoms (module doc)."""
    dx = np.asarray(dx, dtype=float)
    sq = np.sum(dx * dx, axis=-1)
    if weights is None:
        return np.sqrt(np.mean(sq, axis=-1))
    return np.sqrt(sq @ _masses(weights, sq.shape[-1]))


def random_adapter_c(J: np.ndarray, s=(1.0,), weights: np.ndarray | None = None) -> float:
    """Exact ``c_L = √L c'`` of ``W2 ≈ c_L η_L / √L`` from the per-layer Jacobians ``J``
    (L, d², n, d): ``c'² = (Σ_a s_a² / d²) Σ_i ω_i Σ_ℓ ‖J_ℓ,i‖_F²`` (``ω_i = 1/n`` unless
    ``weights`` are given), the mean square over the adapters ``u, v ~ N(0, I/d)`` of the
    first-order ``W2 / η`` (module doc)."""
    J = np.asarray(J, dtype=float)
    if J.ndim != 4:
        raise ValueError(f"J must be (L, d², n, d), got shape {J.shape}")
    L, dd, n, d = J.shape
    if dd != d * d:
        raise ValueError(f"J's second axis must have d² = {d * d} entries, got {dd}")
    s2 = float(np.sum(np.asarray(s, dtype=float) ** 2))
    w = np.full(n, 1.0 / n) if weights is None else _masses(weights, n)
    per_atom = np.sum(J**2, axis=(0, 1, 3))
    return float(np.sqrt(L * s2 / (d * d) * (per_atom @ w)))


@dataclass(frozen=True)
class ForgetfulAdapter:
    """``dV`` (d, d) — or (L, d, d), one adapter per layer — unit Frobenius norm (over all
    layers), rank ``≤ r`` in every layer, maximising the first-order ``W2``: ``w2`` =
    ``(1/n Σ|J(dV)_i|²)^{1/2}`` (per unit ``ε``); ``sigma``: the singular values of the whole
    map ``J`` (``w2 ≤ σ_1/√n``, equal at full rank)."""

    dV: np.ndarray
    rank: int
    w2: float
    sigma: np.ndarray


def most_forgetful_adapter(J: np.ndarray, r: int, *, iterations: int = 50,
                           weights: np.ndarray | None = None) -> ForgetfulAdapter:  # fmt: skip
    """The unit adapter ``dV = B Cᵀ`` (``‖dV‖_F = 1``, rank ``r``) of largest response ``|J(dV)|``,
    ``J`` (d², n, d) the tied Jacobian (:func:`tied_jacobian`); or, for ``J`` (L, d², n, d)
    the per-layer Jacobians (:func:`layer_jacobians`), one adapter ``dV_ℓ = B_ℓ C_ℓᵀ`` per
    layer, each of rank ``≤ r``, with ``Σ_ℓ ‖dV_ℓ‖_F² = 1`` (``dV`` (L, d, d)).

    Full rank (``r ≥ d``): the top right singular vector of ``J`` as a ``(L d², n d)`` matrix.
    Rank ``r < d``: alternating maximisation from the truncated SVDs of that vector's blocks;
    with every ``C_ℓ`` orthonormal, ``Σ_ℓ |B_ℓ C_ℓᵀ|_F² = Σ_ℓ |B_ℓ|_F²`` and ``J(B Cᵀ)`` is
    linear in ``(B_ℓ)``, so the best ``(B_ℓ)`` is a top singular vector; then the same for
    ``(C_ℓ)`` with every ``B_ℓ`` orthonormal. Each step does not decrease ``|J(dV)|``
    (measured: the alternation adds 2e-5 to 5e-5 of the truncated SVD's response on S^2,
    nothing on S^1).

    ``weights`` (n,): the atoms' masses (:func:`measure_tangent`); the response is then
    ``(Σ_i ω_i |J(dV)_i|²)^{1/2}``, which is the uniform one of ``J_i √(n ω_i)``, and ``σ``
    those of the scaled map.
    """
    J = np.asarray(J, dtype=float)
    if J.ndim not in (3, 4):
        raise ValueError(f"J must be (d², n, d) or (L, d², n, d), got shape {J.shape}")
    layered = J.ndim == 4
    J = J if layered else J[None]
    L, dd, n, d = J.shape
    if weights is not None:
        J = J * np.sqrt(n * _masses(weights, n))[None, None, :, None]
    if dd != d * d:
        raise ValueError(f"J's d² axis must have d² = {d * d} entries, got {dd}")
    if int(r) != r or r < 1:
        raise ValueError(f"r (adapter rank) must be a positive integer, got {r}")
    r = min(int(r), d)
    G = J.reshape(L * dd, n * d).T  # (n d, L d²): vec(M_1, ..., M_L) -> response
    _, sig, Vt = np.linalg.svd(G, full_matrices=False)
    M = Vt[0].reshape(L, d, d)
    if r < d:
        U, s, Wt = np.linalg.svd(M)
        B, C = U[:, :, :r] * s[:, None, :r], Wt[:, :r].transpose(0, 2, 1)
        Gt = G.reshape(n * d, L, d, d)
        for _ in range(iterations):
            C = np.linalg.qr(C)[0]
            # response of (B_ℓ C_ℓᵀ): Σ_ℓ Σ_{i,j} (B_ℓ C_ℓᵀ)_ij G[:, ℓ, i, j]
            H = np.einsum("plij,ljk->plik", Gt, C).reshape(n * d, L * d * r)
            B = np.linalg.svd(H, full_matrices=False)[2][0].reshape(L, d, r)
            B = np.linalg.qr(B)[0]
            H = np.einsum("plij,lik->pljk", Gt, B).reshape(n * d, L * d * r)
            C = np.linalg.svd(H, full_matrices=False)[2][0].reshape(L, d, r)
        M = B @ C.transpose(0, 2, 1)
        M = M / np.linalg.norm(M)
    resp = first_order_w2(np.tensordot(M.reshape(-1), J.reshape(L * dd, n, d), axes=1)[None])[0]
    return ForgetfulAdapter(dV=M if layered else M[0], rank=r, w2=float(resp), sigma=sig)


def circle_gradient_part(x: np.ndarray, dx: np.ndarray, weights: np.ndarray) -> np.ndarray:
    r"""The part of a first-order displacement of a measure on S^1 that ``W2`` sees.

    ``x`` (n, 2): the quadrature's atoms of a measure with a density ``ρ`` on the circle, in
    any order (the flow keeps their circular order), ``weights`` (n,) their masses; ``dx``
    (..., n, 2): tangent displacements ``δx_i = v(x_i) x_i^⊥`` (one field per leading index).
    For the continuum, ``W2(μ, (id + ε v)_\# μ) = ε \min_β ‖v + β/ρ‖_{L²(μ)} + o(ε)``: the
    circle's optimal coupling may shift the cut of its quantile coupling (``G^{-1}(u + εβ)``),
    which moves mass by ``β/ρ = β dθ/du`` (``u`` the cumulative mass); that direction is the
    non-gradient (harmonic) field ``ρ^{-1}`` of ``L²(μ)``, whose flux ``ρ v`` is constant. So
    the first-order ``W2`` is ``‖P v‖_μ``, ``P`` the ``L²(μ)``-projection off ``1/ρ``. Here
    ``1/ρ = dθ/du`` by periodic central differences of the atoms' angles in their midpoint
    cumulative masses (second order for a smooth ``ρ``), and ``P v`` is returned as tangent
    vectors, shaped as ``dx``: :func:`first_order_w2` of it with ``weights`` is the measure's
    first-order ``W2`` (at most the atoms', which is ``‖v‖_μ``); linear in ``dx``, so it
    applies to Jacobians (:func:`layer_jacobians`, :func:`most_forgetful_adapter`)."""
    x = np.asarray(x, dtype=float)
    dx = np.asarray(dx, dtype=float)
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"x must be (n, 2) points on S^1, got shape {x.shape}")
    n = len(x)
    if n < 3 or dx.shape[-2:] != (n, 2):
        raise ValueError(f"dx must be (..., {n}, 2) for x of {n} >= 3 atoms, got {dx.shape}")
    w = _masses(weights, n, positive=True)
    th = np.arctan2(x[:, 1], x[:, 0])
    order = np.argsort(th)
    ts, ws = th[order], w[order]
    u = np.cumsum(ws) - 0.5 * ws
    U = np.concatenate(([u[-1] - 1.0], u, [u[0] + 1.0]))
    TH = np.concatenate(([ts[-1] - 2 * np.pi], ts, [ts[0] + 2 * np.pi]))
    g = np.empty(n)
    g[order] = (TH[2:] - TH[:-2]) / (U[2:] - U[:-2])  # dθ/du = 1/ρ at each atom
    g /= np.sqrt(np.sum(w * g * g))
    tangent = np.column_stack((-np.sin(th), np.cos(th)))
    v = np.einsum("...nd,nd->...n", dx, tangent)
    v = v - (v @ (w * g))[..., None] * g
    return v[..., None] * tangent


@dataclass(frozen=True)
class PDEResponse:
    """``eps`` (k,): the step sizes; ``moment`` (k, d): the symmetric quotients
    ``(m_T(+ε) − m_T(−ε)) / (2ε)`` of the perturbed flow's first moment; ``differences``
    (k − 1,): ``|q(ε_i) − q(ε_{i+1})|`` (the quotient's convergence); ``steps``: time steps of
    each run."""

    eps: np.ndarray
    moment: np.ndarray
    differences: np.ndarray
    steps: np.ndarray


def pde_response(sm, model, initial, T: float, dV, eps=(0.04, 0.02, 0.01), **evolve_options):
    """The PDE's response of the first moment ``m_T = ∫ x dν_T`` to a tied ``δV`` by the
    symmetric difference ``(m_T(V + ε δV) − m_T(V − ε δV)) / (2ε)`` for each ``ε``.

    The exact tangent is :func:`measure_tangent` (Lagrangian); this quotient of the Eulerian
    scheme differs from it by the DG0 error (tests/test_response.py). The quotient differs
    from the scheme's derivative by ``O(ε²)`` for a smooth scheme; the upwind flux
    ``max(u·n, 0)`` is not smooth where ``u·n`` changes sign, so the quotient's differences
    are returned and tested to shrink (tests/test_response.py). The first moment, not ``W2``:
    ``W2`` between two DG0 densities with cell-centroid atoms behaves like ``√(s h)`` for a
    shift ``s`` below a cell ``h``, so ``W2/ε`` grows like ``ε^{-1/2}`` (measured: S^1, 64
    cells, ε = 0.04 .. 0.005: 2.02, 2.86, 4.05, 5.73). ``evolve_options`` go to
    :func:`solver.evolve` (default here: ``stepping="fixed"``, so that ``±ε`` take the same
    steps whenever ``‖V ± ε δV‖`` give the same a-priori step count).
    """
    from ..model import TiedLoRA
    from ..run import evolve

    eps = np.asarray(eps, dtype=float)
    if eps.ndim != 1 or eps.size < 1 or not np.all(eps > 0):
        raise ValueError(f"eps must be a non-empty list of positive steps, got {eps}")
    d = model.d
    dV = np.asarray(dV, dtype=float)
    if dV.shape != (d, d):
        raise ValueError(f"dV must be {d} x {d}, got shape {dV.shape}")
    opts = {"stepping": "fixed", "w2": False, "vtx": False, "progress": False,
            "cluster_delta": None, **evolve_options}  # fmt: skip
    axes = "xyz"[:d]
    q, steps = [], []
    for e in eps:
        ms = []
        for sign in (1.0, -1.0):
            pert = model.perturbed(TiedLoRA(np.zeros((d, d)), sign * e * dV))
            res = evolve(sm, model, initial, T, perturbed=pert, **opts)
            if res is None or sm.comm.rank != 0:
                ms.append(np.zeros(d))
                continue
            ms.append(np.array([res.column(f"moment_perturbed_{a}")[-1] for a in axes]))
            steps.append(len(res.step_times) - 1)
        q.append((ms[0] - ms[1]) / (2 * e))
    q = np.array(q)
    if sm.comm.size > 1:
        q = sm.comm.bcast(q, root=0)
        steps = sm.comm.bcast(steps, root=0)
    diff = np.linalg.norm(np.diff(q, axis=0), axis=1)
    return PDEResponse(eps=eps, moment=q, differences=diff, steps=np.array(steps))


@dataclass(frozen=True)
class MeasureTangent:
    """The Lagrangian tangent of the mean-field flow on a mesh quadrature of ``μ_0``: atoms
    ``x0`` (n, d) at the start (cell centroids, original cell order), ``x`` (n, d) at ``T``
    with masses ``weights`` (n,, sum 1), their derivatives ``dx``
    (m, n, d) in ``m`` tied directions; ``moment`` (m, d) ``= Σ_i ω_i δx_i``, the first
    moment's derivative; ``w2`` (m,) ``= (Σ_i ω_i |δx_i|²)^{1/2}`` (:func:`first_order_w2`)."""

    x0: np.ndarray
    x: np.ndarray
    dx: np.ndarray
    weights: np.ndarray
    moment: np.ndarray
    w2: np.ndarray


def measure_tangent(sm, model, initial, T: float, dV, dA=None, *, dt: float = 0.01,
                    degree: int = 4) -> MeasureTangent:  # fmt: skip
    r"""The tangent-linear mean-field flow in tied directions ``(δA, δV)``, in Lagrangian form.

    The PDE's solution is the push-forward ``μ_t = (Φ_t)_\# μ_0`` by the flow of its own
    velocity, ``∂_t Φ_t = X_{A,V}[μ_t](Φ_t)``. Its first variation in the weights,

    .. math::

        ∂_t δΦ = D_x X[μ_t](Φ_t)\, δΦ + \Big(\int D_μ X[μ_t](Φ_t, Φ_t(y))\, δΦ(y)\,
            dμ_0(y)\Big) + (∂_{A,V} X[μ_t])(Φ_t)\,(δA, δV),

    is the tangent-linear PDE written on the Lagrangian labels (``δμ_t = −div(μ_t δΦ∘Φ_t^{-1})``
    is its Eulerian form). Here ``μ_0`` is replaced by its mesh quadrature, atoms at the cell
    centroids with the cells' masses ``ρ_K |K|`` (cell averages by ``degree``-point quadrature),
    and the weighted atoms' RK4 scheme is differentiated exactly (:func:`particle_tangent`
    with ``weights``): no ``ε``, no sign switch of an upwind flux. The first moment's derivative
    ``∫ δΦ_T dμ_0`` converges as the mesh is refined (to second order for a smooth ``μ_0``:
    the centroid rule), and is what :func:`pde_response` estimates by differences of the
    Eulerian DG0 scheme (tests/test_response.py compares them). ``w2`` is the first-order
    ``W2/|ε|`` of the atoms (exact for distinct atoms); for a continuum it bounds the first-order
    ``W2`` from above (equality when ``δΦ∘Φ_T^{-1}`` is a gradient field).

    ``sm``: a :class:`solver.mesh.SphereMesh` (any number of ranks: the atoms are gathered,
    every rank returns the same); ``initial``: a density (``solver.model`` initial laws or a
    callable); ``dV``, ``dA``: (d, d) or (m, d, d), ``dA`` zero by default; ``dt``: the RK4
    step. Cost: ``m`` trajectories of ``n`` = number of cells interacting atoms.
    """
    d = model.d
    dV = np.asarray(dV, dtype=float)
    dV = dV[None] if dV.ndim == 2 else dV
    if dV.ndim != 3 or dV.shape[1:] != (d, d) or not np.all(np.isfinite(dV)):
        raise ValueError(f"dV must be finite, ({d}, {d}) or (m, {d}, {d}); got {dV.shape}")
    dA = np.zeros_like(dV) if dA is None else np.asarray(dA, dtype=float)
    dA = dA[None] if dA.ndim == 2 else dA
    if dA.shape != dV.shape or not np.all(np.isfinite(dA)):
        raise ValueError(f"dA must be finite with dV's shape {dV.shape}, got {dA.shape}")
    if sm.gdim != d:
        raise ValueError(f"the mesh is in R^{sm.gdim}, the model in R^{d}")
    x0, w = mesh_atoms(sm, initial, degree)
    r = particle_tangent(model, x0, T, lambda t: (dA, dV), dt=dt, weights=w)
    moment = np.einsum("i,mid->md", w, r.dx)
    return MeasureTangent(x0=x0, x=r.x, dx=r.dx, weights=w, moment=moment,
                          w2=first_order_w2(r.dx, w))  # fmt: skip


def mesh_atoms(sm, initial, degree: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """The mesh quadrature of an initial density: ``(x0, w)``, the centroids (n, d) of the
    cells of positive mass, in original cell order, and their masses ``ρ_K |K|`` normalised to
    sum 1 (cell averages by ``degree``-point quadrature); the same on every rank."""
    from ..run import initial_cell_averages

    d = sm.gdim
    mass = initial_cell_averages(sm, initial, degree) * sm.areas
    parts = sm.comm.bcast(sm.gather(np.column_stack([sm.centroids, mass])), root=0)
    keep = parts[:, d] > 0.0
    return parts[keep, :d], parts[keep, d] / parts[keep, d].sum()
