"""The nonlocal attention velocity ``X[μ]`` and its MPI distribution.

For a discrete measure ``μ = Σ_j w_j δ_{y_j}`` on the unit sphere ``S^{d-1}``,

.. math::

    X[μ](x) = P_x \\Big( \\frac{Σ_j w_j e^{y_jᵀ A x} V y_j}{Σ_j w_j e^{y_jᵀ A x}} \\Big),
    \\qquad P_x = I - x xᵀ,\\quad A = Kᵀ Q .

The ratio is a softmax over ``j`` with logits ``ℓ_ij = y_jᵀ A x_i + log w_j``; it is computed
with a max-shift (log-sum-exp), so it never overflows, whatever ``‖A‖`` is, and zero weights
drop out exactly. Targets are processed in blocks so memory stays bounded.

The PDE uses cell-centroid quadrature of ``μ`` (``y_j`` = cell centroids projected to the
sphere, ``w_j`` = ρ_j |cell_j|) and evaluates ``X`` at mesh vertices; the particle system
uses the particles as both targets and sources. Both go through :func:`attention_velocity`
(the direct sum, the reference of every faster method), except that the particle system,
whose sources are few and equally weighted, takes :func:`equal_weight_velocity`: the same
sum in compiled loops (numba, when installed), free of the dozen NumPy calls per evaluation
that dominate the direct sum below a few hundred particles. Several heads (``A``, ``V`` of
shape ``(H, d, d)``, :class:`solver.model.MultiHeadModel`): the sum of the heads' velocities.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["attention_velocity", "equal_weight_velocity", "tangent_project"]

try:  # numba is optional: without it equal_weight_velocity is attention_velocity
    import numba as _nb
except ImportError:  # pragma: no cover - depends on the environment
    _nb = None

#: Upper bound of the temporary (targets x sources) arrays per block, in bytes.
BLOCK_BYTES = 32 * 2**20


def tangent_project(x: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``P_x v = v - <x, v> x`` row by row (``x`` on the unit sphere)."""
    return v - np.einsum("ij,ij->i", x, v)[:, None] * x


def _log_weights(w: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(w > 0, np.log(np.where(w > 0, w, 1.0)), -np.inf)


def _sum_heads(fn, x, y, w, A, V, **kw) -> np.ndarray:
    """``Σ_a fn(x, y, w, A[a], V[a])`` over the heads of stacked ``A``, ``V`` (H, d, d)."""
    if np.shape(V) != np.shape(A) or len(A) == 0:
        raise ValueError(f"stacked heads: A and V must both be (H, d, d) with H >= 1, got "
                         f"{np.shape(A)} and {np.shape(V)}")  # fmt: skip
    out = fn(x, y, w, A[0], V[0], **kw)
    for a in range(1, len(A)):
        out = out + fn(x, y, w, A[a], V[a], **kw)
    return out


def attention_velocity(
    x: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    A: np.ndarray,
    V: np.ndarray,
    *,
    block_bytes: int = BLOCK_BYTES,
) -> np.ndarray:
    """Attention velocity of ``μ = Σ_j w_j δ_{y_j}`` at the targets ``x``.

    Parameters
    ----------
    x : (m, d) array
        Targets on the unit sphere.
    y : (n, d) array
        Sources on the unit sphere.
    w : (n,) array
        Non-negative weights (need not sum to one: the softmax normalises).
    A, V : (d, d) arrays, or (H, d, d) for ``H`` heads
        ``A = Kᵀ Q`` and the value matrix; stacked: the sum of the heads' velocities
        (:class:`solver.model.MultiHeadModel`).

    Returns
    -------
    (m, d) array
        ``X[μ](x_i)``, tangent at ``x_i`` to round-off.
    """
    if np.ndim(A) == 3:
        return _sum_heads(attention_velocity, x, y, w, A, V, block_bytes=block_bytes)
    x = np.ascontiguousarray(x, dtype=float)
    y = np.ascontiguousarray(y, dtype=float)
    m, d = x.shape
    if y.ndim != 2 or y.shape[1] != d or w.shape != (y.shape[0],):
        raise ValueError(f"shapes do not match: x {x.shape}, y {y.shape}, w {w.shape}")
    out = np.empty_like(x)
    if m == 0:
        return out
    if not np.any(w > 0):
        raise ValueError("the measure has no mass: all source weights are zero")
    keep = w > 0
    if not np.any(A):  # uniform attention: the softmax is the normalised weights, O(n)
        mean = (w[keep] @ y[keep]) / w[keep].sum()
        return tangent_project(x, np.broadcast_to(V @ mean, x.shape))
    y, logw = y[keep], _log_weights(w[keep])
    Ay = y @ A  # row j: y_jᵀ A, so (x @ Ay.T)_ij = y_jᵀ A x_i
    Vy = y @ V.T  # row j: (V y_j)ᵀ
    block = max(1, int(block_bytes // (8 * max(1, y.shape[0]))))
    for s in range(0, m, block):
        xb = x[s : s + block]
        logits = xb @ Ay.T
        logits += logw
        logits -= logits.max(axis=1, keepdims=True)
        np.exp(logits, out=logits)
        num = logits @ Vy
        num /= logits.sum(axis=1, keepdims=True)
        out[s : s + block] = tangent_project(xb, num)
    return out


#: :func:`equal_weight_velocity` runs its compiled loops up to this many sources and NumPy's
#: vectorised exponentials above (scripts/bench_particles.py, one thread: the compiled sum is
#: 9-12x faster at n = 20, 3-4x at 50, even at 250 and 0.7-0.9x from 500 on)
COMPILED_MAX_N = 200


def equal_weight_velocity(x: np.ndarray, y: np.ndarray, A: np.ndarray, V: np.ndarray) -> np.ndarray:
    """:func:`attention_velocity` of the equally weighted ``μ = (1/n) Σ_j δ_{y_j}`` at ``x``.

    The same max-shifted softmax, target by target over the sources in their order, in
    compiled loops (numba, serial; ``O(m n d)`` time, ``O(n d)`` memory) for at most
    :data:`COMPILED_MAX_N` sources when numba is installed, else :func:`attention_velocity`
    itself. The two agree to round-off (the sums are taken in another order;
    tests/test_geometry_model.py). No checks: for callers that have validated ``x``, ``y``
    (unit rows, ``(m, d)`` and ``(n, d)``, n >= 1) and ``A``, ``V``.
    """
    if np.ndim(A) == 3:  # heads: (H, d, d)
        return _sum_heads(lambda x, y, w, A, V: equal_weight_velocity(x, y, A, V), x, y, None,
                          A, V)  # fmt: skip
    if _nb is None or len(y) > COMPILED_MAX_N:
        return attention_velocity(x, y, np.full(len(y), 1.0 / len(y)), A, V)
    f = np.ascontiguousarray
    return _nb_equal_weight_velocity(f(x, dtype=float), f(y, dtype=float),
                                     f(A, dtype=float), f(V, dtype=float))  # fmt: skip


if _nb is not None:

    @_nb.njit(cache=True)
    def _nb_equal_weight_velocity(x, y, A, V):
        m, d = x.shape
        n = y.shape[0]
        Ay, Vy = y @ A, y @ V.T  # rows y_jᵀ A and (V y_j)ᵀ
        out = np.empty((m, d))
        logit, num = np.empty(n), np.empty(d)
        for i in range(m):
            top = -np.inf
            for j in range(n):
                s = 0.0
                for a in range(d):
                    s += x[i, a] * Ay[j, a]
                logit[j] = s
                top = max(top, s)
            total = 0.0
            num[:] = 0.0
            for j in range(n):
                e = math.exp(logit[j] - top)
                total += e
                for a in range(d):
                    num[a] += e * Vy[j, a]
            dot = 0.0
            for a in range(d):
                num[a] /= total
                dot += num[a] * x[i, a]
            for a in range(d):
                out[i, a] = num[a] - dot * x[i, a]
        return out

    @_nb.njit(cache=True)
    def _nb_retract(x, v):
        y = x + v
        for i in range(y.shape[0]):
            y[i] /= math.sqrt(np.sum(y[i] * y[i]))
        return y

    @_nb.njit(cache=True)
    def _nb_rk4_sphere(x, A, V, h):
        """One RK4 step of :func:`solver.simulate_particles` on the sphere (direct sum, all
        the particles on one rank): its Python loop's stages and projection retractions, in
        one call. Here, beside the sum it calls, because numba's on-disk cache follows each
        file's own time stamp: a step cached in another file would keep an edited sum's
        old code."""
        k1 = _nb_equal_weight_velocity(x, x, A, V)
        x2 = _nb_retract(x, 0.5 * h * k1)
        k2 = _nb_equal_weight_velocity(x2, x2, A, V)
        x3 = _nb_retract(x, 0.5 * h * k2)
        k3 = _nb_equal_weight_velocity(x3, x3, A, V)
        x4 = _nb_retract(x, h * k3)
        k4 = _nb_equal_weight_velocity(x4, x4, A, V)
        return _nb_retract(x, h / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4))
