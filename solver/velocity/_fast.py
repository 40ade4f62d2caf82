"""Fast, error-controlled attention velocity on fixed points: a truncated plane-wave expansion.

The kernel of :func:`solver.attention_velocity` is ``k(x, y) = e^{yᵀ A x} = e^{<u, y>}`` with
``u = A x``, ``r = |u| <= ‖A‖₂``. On the unit sphere it has the classical expansions

.. math::

    S^2:\\; e^{r\\,\\hat u\\cdot y}
        = \\sum_{l\\ge 0} 4π\\, i_l(r) \\sum_{m} Y_{lm}(\\hat u) Y_{lm}(y),
    \\qquad
    S^1:\\; e^{r\\cos(α-β)}
        = I_0(r) + 2\\sum_{k\\ge 1} I_k(r)\\,(\\cos kα\\cos kβ + \\sin kα\\sin kβ),

(``i_l`` modified spherical Bessel functions, ``Y_lm`` real orthonormal spherical harmonics,
``I_k`` modified Bessel functions). Truncating at degree ``n`` separates the kernel into
``r_n = (n+1)²`` (``S^2``) or ``2n+1`` (``S^1``) terms ``φ_k(x) ψ_k(y)``, so that numerator and
denominator of the softmax become

.. math::

    \\sum_j w_j k(x_i, y_j) [1, V y_j] ≈ \\sum_k φ_k(x_i)\\, \\underbrace{\\sum_j ψ_k(y_j)\\,
    w_j [1, V y_j]}_{\\text{moments}} ,

``O((N + M) r_n)`` per evaluation instead of ``O(N M)``. Sources (cell centroids) and
targets (mesh vertices) are fixed and only the weights change between calls; ``A`` enters
only the target side (``u_i = A x_i``), so a new ``A`` costs ``O(N n)`` set-up.

For large ``‖A‖`` the degree needed grows like ``sqrt(‖A‖ log(1/tol))`` (``i_l(r) e^{-r}``
decays like ``e^{-l²/2r}``); on the icosphere, ``‖A‖₂ = 10`` and ``tol = 1e-8`` take degree
24 (625 terms) against 20,480 sources at level 5.

Two back-ends compute the same sums:

* ``numba`` (``S^2``, when numba is installed): the harmonics are generated on the fly by
  the Legendre recurrences in blocks of 256 points that stay in L1 and are consumed at once
  (moments ``Σ_j ψ_k(y_j) W_j``, then ``Σ_k b_l(r_i) Y_k(û_i) mom_k``): compute-bound, no
  tables, about 3x faster than the tabulated products on one core;
* ``numpy``: ``ψ`` (sources) and ``φ`` (targets, per ``A``) tabulated once, then two skinny
  BLAS products per call (memory-bound; ``8 (M + N) r_n`` bytes, capped by a memory budget).

Error control
-------------
Everything is scaled by ``e^{-r_i}`` per target, so the scaled kernel lies in
``[e^{-2 r_i}, 1]``. Two facts give an a-posteriori bound computed on every call:

* truncation (rigorous): ``|k - k_n| e^{-r} <= τ_n(r) = Σ_{l>n} (2l+1) i_l(r) e^{-r}``
  (``S^2``; ``2 Σ_{k>n} I_k(r) e^{-r}`` on ``S^1``), because ``|P_l| <= 1``;
* round-off: by Cauchy-Schwarz and the addition theorem ``Σ_k |φ_k(x) ψ_k(y)| <= 1``
  (scaled), so the floating-point error of the sums is ``ε_n Σ_j w_j`` with the
  probabilistic model ``ε_n = λ u (√r_n + √chunk + √C + n + 1)`` (Higham-Mary for the
  sums of ``r_n``, ``chunk`` and ``C`` terms, plus the recurrences; ``λ = 2``; the bounds
  are 10-100x above the errors measured in the tests).

With ``η_i = τ_n(r_i) + ε_n``, ``D̃_i`` the computed (scaled) denominator, ``q_i = |Ñ_i| / D̃_i``
and ``S_wV = Σ_j w_j |V y_j|``, the computed velocity satisfies (exact algebra, ``P_x`` is a
contraction)

.. math::

    |X̃_i - X_i| <= B_i = η_i (S_{wV} + q_i Σ_j w_j) / (D̃_i - η_i Σ_j w_j) .

The tolerance is relative in the max norm over all targets: ``max_i |X̃_i - X_i| <= tol
max_i |X_i|``. A target is accepted when ``B_i <= tol max|X̃| / 2``; the others (targets
whose denominator is tiny because the weights sit where their kernel is ``~e^{-2r}``) are
recomputed by the direct sum, so every call meets the tolerance whatever the weights are.

The degree is picked per ``A``: a first evaluation at a generous degree gives ``D̃``, then the
smallest degree that leaves at most ``max_fail`` of the targets (or about the fewest
possible, when round-off is the limit) to the direct sum is kept, plus one for weight drift;
it is raised again on a later call if the weights make it fail. Each new ``A`` is also
checked against the direct sum on a sample of targets (evenly spaced ones plus those with
the largest bound); the achieved error is in :attr:`FastVelocity.report`.

The method gives up (direct sum for this ``A``, with a ``RuntimeWarning`` and the reason in
:attr:`FastVelocity.report`) when the kernel is too peaked: when the degree needed for a
uniform density exceeds the degree cap (160 on ``S^2``; ``‖A‖₂`` of several hundred at
``tol = 1e-10``) or the memory budget (NumPy back-end), when more than a quarter of the
targets fail the bound, or when the sampled check exceeds the tolerance. ``auto`` also
requires the expansion to be clearly cheaper than the direct sum (cost model
``(N + M) r_n <= 4 N M``; silent for small problems).

MPI: every rank evaluates its own targets. The key-ordered sources are cut into fixed
chunks of ``chunk`` sources (independent of the number of ranks); each rank forms the
moments of its chunks (one thread per chunk, fixed order), the per-chunk moments are
all-gathered and summed in chunk order, so the result does not depend on the number of
ranks or threads (bitwise in the benchmark; in any case far below ``1e-12``). All
decisions (degrees, fall-backs) are collective.
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
import weakref
from collections import OrderedDict

import numpy as np
from scipy.special import ive

from ..parallel import threads_per_rank
from ._direct import attention_velocity, tangent_project

__all__ = [
    "FastVelocity",
    "num_terms",
    "sphere_basis",
    "degree_weights",
    "truncation_tails",
]

_U = np.finfo(float).eps / 2
_FOUR_PI = 4.0 * math.pi
#: Highest expansion degree ever used (S^2 / S^1).
MAX_DEGREE = {3: 160, 2: 20000}


def num_terms(n: int, d: int) -> int:
    """Number of expansion terms up to degree ``n`` on ``S^{d-1}`` (``d`` = 2 or 3)."""
    return (n + 1) ** 2 if d == 3 else 2 * n + 1


def _degree_of_terms(n: int, d: int) -> np.ndarray:
    l = np.arange(n + 1)
    return np.repeat(l, 2 * l + 1 if d == 3 else np.where(l == 0, 1, 2))


# ----------------------------------------------------------------------------- bases


def _basis_s1(p: np.ndarray, n: int) -> np.ndarray:
    out = np.empty((2 * n + 1, p.shape[0]))
    c, s = p[:, 0], p[:, 1]
    out[0] = 1.0
    ck, sk = np.ones_like(c), np.zeros_like(s)
    for k in range(1, n + 1):
        ck, sk = ck * c - sk * s, sk * c + ck * s
        out[2 * k - 1], out[2 * k] = ck, sk
    return out


def _basis_s2(p: np.ndarray, n: int) -> np.ndarray:
    """Real orthonormal spherical harmonics, degree-major: ``l², l²+2m-1 (cos), l²+2m (sin)``."""
    out = np.empty(((n + 1) ** 2, p.shape[0]))
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    s = np.hypot(x, y)
    pos = s > 0
    cphi = np.where(pos, x / np.where(pos, s, 1.0), 1.0)
    sphi = np.where(pos, y / np.where(pos, s, 1.0), 0.0)
    c0 = 1.0 / math.sqrt(_FOUR_PI)
    c1 = math.sqrt(2.0) * c0
    pmm = np.ones_like(z)  # normalised P̄_m^m (∫_{-1}^{1} P̄² = 2), P̄_0^0 = 1
    cm, sm = np.ones_like(z), np.zeros_like(z)  # cos mφ, sin mφ
    for m in range(n + 1):
        if m > 0:
            pmm = pmm * (math.sqrt((2 * m + 1) / (2 * m)) * s)
            cm, sm = cm * cphi - sm * sphi, sm * cphi + cm * sphi
        trig = (c1 * cm, c1 * sm) if m > 0 else None
        p2, p1 = None, pmm
        for l in range(m, n + 1):
            if l == m + 1:
                p2, p1 = p1, math.sqrt(2 * m + 3) * z * p1
            elif l > m + 1:
                den = l * l - m * m
                a = math.sqrt((4 * l * l - 1) / den)
                b = math.sqrt((2 * l + 1) * (l - m - 1) * (l + m - 1) / ((2 * l - 3) * den))
                p2, p1 = p1, a * z * p1 - b * p2
            if trig is None:
                np.multiply(p1, c0, out=out[l * l])
            else:
                np.multiply(p1, trig[0], out=out[l * l + 2 * m - 1])
                np.multiply(p1, trig[1], out=out[l * l + 2 * m])
    return out


def sphere_basis(points: np.ndarray, n: int) -> np.ndarray:
    """Source-side basis ``ψ_k`` up to degree ``n`` at unit ``points`` (``(r_n, len(points))``).

    ``S^2`` (``d = 3``): real orthonormal spherical harmonics ``Y_lm`` (degree-major);
    ``S^1`` (``d = 2``): ``1, cos θ, sin θ, cos 2θ, ...``. With the per-degree weights of
    :func:`degree_weights`, ``Σ_k b_{l(k)}(r) ψ_k(u/r) ψ_k(y) = e^{<u, y> - r}``.
    """
    p = np.ascontiguousarray(points, dtype=float)
    if p.ndim != 2 or p.shape[1] not in (2, 3):
        raise ValueError(f"points must be (n, 2) or (n, 3), got {p.shape}")
    return _basis_s2(p, n) if p.shape[1] == 3 else _basis_s1(p, n)


# ----------------------------------------------------------------------------- Bessel


def _scaled_bessel(r: np.ndarray, L: int, d: int) -> np.ndarray:
    """``f_l(r) = i_l(r) e^{-r}`` (``d = 3``) or ``I_l(r) e^{-r}`` (``d = 2``), ``l = 0..L``.

    Miller's backward algorithm in ratio form, ``ρ_l = f_l / f_{l-1} = r / (c_l + r ρ_{l+1})``
    (``c_l = 2l+1`` or ``2l``), started far enough above ``max(L, r)`` that the start value
    does not matter, then normalised by the exact sums ``Σ (2l+1) f_l = 1`` (``d = 3``) and
    ``f_0 + 2 Σ_{l>0} f_l = 1`` (``d = 2``), i.e. ``e^{r} e^{-r}``. No overflow, no
    division by ``r`` (``r = 0`` gives ``f = δ_{l0}``), relative accuracy ``O(L u)``.
    """
    r = np.atleast_1d(np.asarray(r, dtype=float))
    rmax = float(r.max()) if r.size else 0.0
    top = L + 40 + int(math.ceil(rmax + 10 * math.sqrt(rmax)))
    rho = np.zeros_like(r)
    tail = np.zeros_like(r)  # T_l = ρ_l (w_l + T_{l+1}) = Σ_{k>=l} w_k f_k / f_{l-1}
    ratios = np.empty((L + 1, r.size))
    for l in range(top, 0, -1):
        c = (2 * l + 1) if d == 3 else 2 * l
        rho = r / (c + r * rho)
        if l <= L:
            ratios[l] = rho
        else:
            tail = rho * (((2 * l + 1) if d == 3 else 2.0) + tail)
    ratios[0] = 1.0
    f = np.cumprod(ratios, axis=0)  # f_l / f_0
    l = np.arange(L + 1)[:, None]
    wts = (2 * l + 1.0) if d == 3 else np.where(l == 0, 1.0, 2.0)
    f0 = 1.0 / ((wts * f).sum(axis=0) + f[L] * tail)
    return f * f0


def degree_weights(r: np.ndarray, n: int, d: int) -> np.ndarray:
    """Target-side weight ``b_l(r)`` of each degree ``l <= n`` (scaled by ``e^{-r}``)."""
    f = _scaled_bessel(np.atleast_1d(r), n, d)
    if d == 3:
        return _FOUR_PI * f
    f[1:] *= 2.0
    return f


def truncation_tails(r: np.ndarray, n: int, d: int, extra: int = 30) -> np.ndarray:
    """``τ_m(r)`` for ``m = 0..n``: bound on the scaled truncation error after degree ``m``.

    ``τ_m(r) = Σ_{l>m} g_l(r)`` with ``g_l = (2l+1) i_l e^{-r}`` (``S^2``) or ``2 I_l e^{-r}``
    (``S^1``), summed to ``L = max(n, r) + extra`` plus a geometric bound of the rest (the
    ratio ``g_{l+1}/g_l <= r/(2l+1)``).
    """
    r = np.atleast_1d(np.asarray(r, dtype=float))
    rmax = float(r.max()) if r.size else 0.0
    L = max(n, int(math.ceil(rmax))) + extra
    f = _scaled_bessel(r, L, d)
    l = np.arange(L + 1)[:, None]
    g = (2 * l + 1) * f if d == 3 else np.where(l == 0, 1.0, 2.0) * f
    q = r / (2 * L + 1)
    rest = g[L] * q / (1 - q)  # q <= 1/2 since L >= r + extra
    tails = np.cumsum(g[::-1], axis=0)[::-1]  # tails[m] = Σ_{l>=m}
    out = np.empty((n + 1, r.size))
    out[:] = tails[1 : n + 2] + rest
    return out


# ----------------------------------------------------------------------------- numba kernels
#
# The same sums without tabulating the bases: the harmonics are generated by the recurrences
# of :func:`_basis_s2` in blocks of 256 points that stay in L1 and are consumed at once
# (moments: Σ_j ψ_k(y_j) W_j; targets: Σ_k b_l(r_i) Y_k(û_i) mom_k). Compute-bound instead
# of memory-bound (about 2.5x faster than the tabulated BLAS products on this 2-core machine)
# and O(n²) memory. Each chunk of sources and each target is handled by one thread in a fixed
# order, so the results do not depend on the thread count either.

try:  # numba is optional: without it the tabulated NumPy path is used
    import numba as _nb
except ImportError:  # pragma: no cover - depends on the environment
    _nb = None


def _recurrence_tables(n: int):
    """Coefficients of the normalised Legendre recurrences up to degree ``n``."""
    a = np.zeros((n + 1, n + 1))
    b = np.zeros((n + 1, n + 1))
    for m in range(n + 1):
        if m + 1 <= n:
            a[m + 1, m] = math.sqrt(2 * m + 3)
        for l in range(m + 2, n + 1):
            den = l * l - m * m
            a[l, m] = math.sqrt((4 * l * l - 1) / den)
            b[l, m] = math.sqrt((2 * l + 1) * (l - m - 1) * (l + m - 1) / ((2 * l - 3) * den))
    f = np.array([0.0] + [math.sqrt((2 * m + 1) / (2 * m)) for m in range(1, n + 1)])
    return a, b, f


if _nb is not None:
    _FM = {"reassoc", "contract"}
    _BS = 256

    @_nb.njit(cache=True, fastmath=_FM)
    def _nb_angles(P, j0, B, z, s, cphi, sphi):
        for j in range(B):
            x, y = P[j0 + j, 0], P[j0 + j, 1]
            z[j] = P[j0 + j, 2]
            sj = math.sqrt(x * x + y * y)
            s[j] = sj
            if sj > 0.0:
                cphi[j], sphi[j] = x / sj, y / sj
            else:
                cphi[j], sphi[j] = 1.0, 0.0

    @_nb.njit(cache=True, fastmath=_FM, inline="always")
    def _nb_next_order(B, f, s, cphi, sphi, pmm, cm, sm):
        """Order ``m - 1 -> m``: ``P̄_m^m ∝ f s P̄_{m-1}^{m-1}``, ``(cos, sin) mφ`` by rotation."""
        for j in range(B):
            pmm[j] *= f * s[j]
            c = cm[j] * cphi[j] - sm[j] * sphi[j]
            sm[j] = sm[j] * cphi[j] + cm[j] * sphi[j]
            cm[j] = c

    @_nb.njit(cache=True, fastmath=_FM)
    def _nb_chunk_moments(P, W, n, ra, rb, fm, out):
        """``out[k, q] += Σ_j Y_k(P_j) W[j, q]`` (``q < 4``) for one chunk, in a fixed order."""
        npts = P.shape[0]
        c0 = 1.0 / math.sqrt(4.0 * math.pi)
        c1 = math.sqrt(2.0) * c0
        z, s, cphi, sphi = np.empty(_BS), np.empty(_BS), np.empty(_BS), np.empty(_BS)
        pmm, cm, sm = np.empty(_BS), np.empty(_BS), np.empty(_BS)
        p1, p2 = np.empty(_BS), np.empty(_BS)
        w = np.zeros((8, _BS))  # W (times cos mφ, sin mφ and the normalisation)
        for j0 in range(0, npts, _BS):
            B = min(_BS, npts - j0)
            _nb_angles(P, j0, B, z, s, cphi, sphi)
            for j in range(B):
                pmm[j], cm[j], sm[j] = 1.0, 1.0, 0.0
            for m in range(n + 1):
                if m > 0:
                    _nb_next_order(B, fm[m], s, cphi, sphi, pmm, cm, sm)
                    for j in range(B):
                        cc, ss = cm[j] * c1, sm[j] * c1
                        for q in range(4):
                            w[q, j] = W[j0 + j, q] * cc
                            w[4 + q, j] = W[j0 + j, q] * ss
                else:
                    for j in range(B):
                        for q in range(4):
                            w[q, j] = W[j0 + j, q] * c0
                for j in range(B):
                    p1[j], p2[j] = pmm[j], 0.0
                for l in range(m, n + 1):
                    if l > m:
                        a, b = ra[l, m], rb[l, m]
                        for j in range(B):
                            t = a * z[j] * p1[j] - b * p2[j]
                            p2[j] = p1[j]
                            p1[j] = t
                    a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = 0.0
                    for j in range(B):
                        pj = p1[j]
                        a0 += pj * w[0, j]
                        a1 += pj * w[1, j]
                        a2 += pj * w[2, j]
                        a3 += pj * w[3, j]
                        b0 += pj * w[4, j]
                        b1 += pj * w[5, j]
                        b2 += pj * w[6, j]
                        b3 += pj * w[7, j]
                    col = l * l + max(2 * m - 1, 0)
                    out[col, 0] += a0
                    out[col, 1] += a1
                    out[col, 2] += a2
                    out[col, 3] += a3
                    if m > 0:
                        out[col + 1, 0] += b0
                        out[col + 1, 1] += b1
                        out[col + 1, 2] += b2
                        out[col + 1, 3] += b3

    @_nb.njit(cache=True, parallel=True)
    def _nb_moments(P, W, n, chunk, ra, rb, fm):
        out = np.zeros((P.shape[0] // chunk, (n + 1) ** 2, W.shape[1]))
        for c in _nb.prange(out.shape[0]):
            lo, hi = c * chunk, (c + 1) * chunk
            _nb_chunk_moments(P[lo:hi], W[lo:hi], n, ra, rb, fm, out[c])
        return out

    @_nb.njit(cache=True)
    def _nb_moments_serial(P, W, n, chunk, ra, rb, fm):
        """:func:`_nb_moments` on the calling thread (same chunks, same sums, bit for bit)."""
        out = np.zeros((P.shape[0] // chunk, (n + 1) ** 2, W.shape[1]))
        for c in range(out.shape[0]):
            lo, hi = c * chunk, (c + 1) * chunk
            _nb_chunk_moments(P[lo:hi], W[lo:hi], n, ra, rb, fm, out[c])
        return out

    @_nb.njit(cache=True, fastmath=_FM)
    def _nb_block_targets(U, bw, mom, n, ra, rb, fm, j0, out):
        """``out[i] = Σ_k b_{l(k)}(r_i) Y_k(U_i) mom_k`` (4 columns) for targets ``j0 + [0, 256)``.

        For each order ``m``: the table ``T[l, j] = b_l(r_j) P̄_l^m(z_j)``, then the small
        product ``S = T mom_m`` unrolled four degrees at a time (fewer loads and stores).
        """
        B = min(_BS, U.shape[0] - j0)
        c0 = 1.0 / math.sqrt(4.0 * math.pi)
        c1 = math.sqrt(2.0) * c0
        z, s, cphi, sphi = np.empty(B), np.empty(B), np.empty(B), np.empty(B)
        pmm, cm, sm = np.ones(B), np.ones(B), np.zeros(B)
        T = np.empty((n + 4, B))
        S, acc = np.empty((8, B)), np.zeros((4, B))
        mm = np.zeros((n + 4, 8))
        _nb_angles(U, j0, B, z, s, cphi, sphi)
        for m in range(n + 1):
            if m > 0:
                _nb_next_order(B, fm[m], s, cphi, sphi, pmm, cm, sm)
            L = n + 1 - m
            Lp = (L + 3) // 4 * 4
            for j in range(B):
                T[0, j] = pmm[j]
            if L > 1:
                a = ra[m + 1, m]
                for j in range(B):
                    T[1, j] = a * z[j] * pmm[j]
            for i in range(2, L):
                a, b = ra[m + i, m], rb[m + i, m]
                for j in range(B):
                    T[i, j] = a * z[j] * T[i - 1, j] - b * T[i - 2, j]
            for i in range(L):
                for j in range(B):
                    T[i, j] *= bw[m + i, j0 + j]
            for i in range(L, Lp):
                for j in range(B):
                    T[i, j] = 0.0
            for i in range(Lp):
                l = m + i
                for q in range(8):
                    mm[i, q] = 0.0
                if i < L:
                    col = l * l + max(2 * m - 1, 0)
                    for q in range(4):
                        mm[i, q] = mom[col, q]
                        if m > 0:
                            mm[i, 4 + q] = mom[col + 1, q]
            for q in range(8):
                for j in range(B):
                    S[q, j] = 0.0
            for i in range(0, Lp, 4):
                for q in range(8 if m > 0 else 4):
                    m0, m1, m2, m3 = mm[i, q], mm[i + 1, q], mm[i + 2, q], mm[i + 3, q]
                    for j in range(B):
                        S[q, j] += (
                            T[i, j] * m0 + T[i + 1, j] * m1 + T[i + 2, j] * m2 + T[i + 3, j] * m3
                        )
            if m == 0:
                for q in range(4):
                    for j in range(B):
                        acc[q, j] += c0 * S[q, j]
            else:
                for q in range(4):
                    for j in range(B):
                        acc[q, j] += c1 * (cm[j] * S[q, j] + sm[j] * S[4 + q, j])
        for j in range(B):
            for q in range(4):
                out[j0 + j, q] = acc[q, j]

    @_nb.njit(cache=True, parallel=True)
    def _nb_targets(U, bw, mom, n, ra, rb, fm):
        out = np.empty((U.shape[0], mom.shape[1]))
        for k in _nb.prange((U.shape[0] + _BS - 1) // _BS):
            _nb_block_targets(U, bw, mom, n, ra, rb, fm, k * _BS, out)
        return out

    @_nb.njit(cache=True)
    def _nb_targets_serial(U, bw, mom, n, ra, rb, fm):
        """:func:`_nb_targets` on the calling thread (bit for bit)."""
        out = np.empty((U.shape[0], mom.shape[1]))
        for k in range((U.shape[0] + _BS - 1) // _BS):
            _nb_block_targets(U, bw, mom, n, ra, rb, fm, k * _BS, out)
        return out


# ----------------------------------------------------------------------------- sources


class _SourceBasis:
    """``ψ`` at this rank's chunks of the key-ordered sources, shape ``(C_local, r_n, chunk)``."""

    def __init__(self, points: np.ndarray, lo: int, hi: int, chunk: int, d: int):
        self.d, self.chunk, self.n = d, chunk, -1
        pts = np.zeros(((hi - lo) * chunk, d))
        pts[:, -1] = 1.0  # padding: any unit vector (its weight is zero)
        own = points[lo * chunk : min(hi * chunk, len(points))]
        pts[: len(own)] = own
        self.points, self.count = pts, len(own)
        self.psi = np.empty((hi - lo, 0, chunk))

    def ensure(self, n: int) -> None:
        if n <= self.n:
            return
        C, chunk = self.psi.shape[0], self.chunk
        psi = np.empty((C, num_terms(n, self.d), chunk))
        group = max(1, 32768 // chunk)
        for c in range(0, C, group):
            e = min(C, c + group)
            b = sphere_basis(self.points[c * chunk : e * chunk], n)
            psi[c:e] = b.reshape(b.shape[0], e - c, chunk).transpose(1, 0, 2)
        self.psi, self.n = psi, n

    @property
    def nbytes(self) -> int:
        return self.psi.nbytes


#: Source bases shared between evaluators on the same sources (the model and its perturbed
#: copy use the same centroids).
_SHARED: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def _memory_default() -> int:
    try:
        phys = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        phys = 16 * 2**30
    return int(min(0.35 * phys, 16 * 2**30))


class _Setup:
    """Per-``A`` state: target factors, truncation tails, chosen degree, statistics."""

    def __init__(self, A: np.ndarray, R: float):
        self.A, self.R = A, R
        self.mode = "fast"  # or "direct"
        self.new = True
        self.n_phi = -1  # degree up to which the target side is ready
        self.n_tail = -1  # degrees with known truncation tails
        self.n_use = -1  # degree used for evaluation
        self.phi = None  # NumPy backend: (N_local, r_{n_phi}) table, Fortran order
        self.bw = None  # numba backend: degree weights b_l(r_i), (n_phi + 1, N_local)
        self.tails = None  # (n_tail + 1, N_local)
        self.calls = 0
        self.direct_targets = 0
        self.report: dict = {}


class FastVelocity:
    """Error-controlled fast evaluation of :func:`attention_velocity` on fixed points.

    Parameters
    ----------
    comm : mpi4py communicator
    targets : (m_local, d) array
        This rank's targets (fixed).
    sources : (n, d) array
        All sources in global key order (identical on every rank; fixed).
    tolerance : float
        Relative error in the max norm over all targets.
    auto : bool
        ``True``: also require the expansion to be clearly cheaper than the direct sum.
    memory_bytes : int, optional
        Budget for the tabulated factors over all ranks (default: 35% of the memory, at
        most 16 GiB); it caps the degree.
    chunk : int, optional
        Sources per moment chunk (fixes the summation order for any rank count; default
        ``M / 64`` rounded to a power of two in ``[256, 4096]``, so the chunks balance over
        the ranks).
    sample : int
        Targets per rank checked against the direct sum for each new ``A``.
    cache : int
        Number of ``A`` values whose target factors are kept.
    max_fail : float
        Fraction of the targets that may be left to the direct sum before the degree is
        raised.
    backend : {"auto", "numba", "numpy"}
        ``numba``: harmonics generated on the fly in compiled loops (``S^2``; compute-bound,
        no tables); ``numpy``: tabulated bases and BLAS products (memory-bound; always
        available, and used on ``S^1``). ``auto``: numba where available.
    threads : int, optional
        Numba threads per rank (default: the cores shared among the ranks of a node).
    roundoff : float
        ``λ`` of the round-off model ``ε_n = λ u (√r_n + √chunk + √C + n + 1)`` (probabilistic
        bound of Higham and Mary for the sums, plus the basis recurrences).
    """

    def __init__(
        self,
        comm,
        targets: np.ndarray,
        sources: np.ndarray,
        *,
        tolerance: float,
        auto: bool = False,
        memory_bytes: int | None = None,
        chunk: int | None = None,
        sample: int = 32,
        cache: int = 2,
        max_fail: float = 1e-3,
        backend: str = "auto",
        threads: int | None = None,
        roundoff: float = 2.0,
    ):
        self.comm = comm
        self.x = np.ascontiguousarray(targets, dtype=float)
        self.y = np.ascontiguousarray(sources, dtype=float)
        self.d = self.x.shape[1]
        if self.d not in (2, 3) or self.y.shape[1] != self.d:
            raise ValueError("the fast method works on S^1 (d = 2) and S^2 (d = 3) only")
        if not (np.isfinite(tolerance) and 0 < tolerance < 1):
            raise ValueError(f"tolerance must be in (0, 1), got {tolerance}")
        self.tol, self.auto = float(tolerance), bool(auto)
        if chunk is None:
            chunk = 2 ** int(np.clip(round(math.log2(max(len(self.y), 1) / 64)), 8, 12))
        self.chunk, self.sample = int(chunk), int(sample)
        self.cache, self.max_fail = max(1, int(cache)), float(max_fail)
        self.lam = float(roundoff)
        if memory_bytes is None:
            memory_bytes = comm.bcast(_memory_default() if comm.rank == 0 else None, root=0)
        self.memory_bytes = int(memory_bytes)
        self.N = int(comm.allreduce(len(self.x)))
        self.M = len(self.y)
        P, p = comm.size, comm.rank
        self.C = max(1, -(-self.M // self.chunk))
        self._chunk_counts = np.array([(q + 1) * self.C // P - q * self.C // P for q in range(P)])
        lo, hi = p * self.C // P, (p + 1) * self.C // P
        self._src_rows = (lo * self.chunk, min(hi * self.chunk, self.M))
        if backend not in ("auto", "numba", "numpy"):
            raise ValueError(f"backend must be auto, numba or numpy, got {backend!r}")
        if backend == "numba" and (_nb is None or self.d != 3):
            raise ValueError("the numba backend needs numba and S^2 (d = 3)")
        self.backend = (
            "numba" if backend != "numpy" and _nb is not None and self.d == 3 else ("numpy")
        )
        if self.backend == "numba":
            pts = np.zeros(((hi - lo) * self.chunk, 3))
            pts[:, 2] = 1.0  # padding (zero weight)
            own = self.y[self._src_rows[0] : self._src_rows[1]]
            pts[: len(own)] = own
            self._pts = pts
            self._rt = _recurrence_tables(0)
            if threads is None:
                threads = threads_per_rank(comm)
            self.threads = int(min(max(1, threads), _nb.config.NUMBA_NUM_THREADS))
            # one thread: serial kernels, so that numba's thread pool is never started (its
            # idle workers spin and, with one rank per core, halve the speed of every rank)
            self._kernels = (
                (_nb_moments_serial, _nb_targets_serial)
                if self.threads == 1
                else (_nb_moments, _nb_targets)
            )
        else:
            key = (P, p, self.chunk, self.y.shape, hashlib.sha1(self.y.tobytes()).hexdigest())
            basis = _SHARED.get(key)
            if basis is None:
                basis = _SourceBasis(self.y, lo, hi, self.chunk, self.d)
                _SHARED[key] = basis
            self._psi = basis
        self._C_local = hi - lo
        self._setups: OrderedDict = OrderedDict()
        self._vcache: tuple | None = None
        self.n_cap_mem = self._n_cap(cost=False)
        self.n_cap = self._n_cap(cost=self.auto)
        self.report: dict = {"method": "fast"}

    # ------------------------------------------------------------------ helpers

    def _allmax(self, v: float) -> float:
        return float(self.comm.allreduce(v, op=_mpi_op("MAX"))) if self.comm.size > 1 else v

    def _allsum(self, a):
        return self.comm.allreduce(a, op=_mpi_op("SUM")) if self.comm.size > 1 else a

    def _warn(self, msg: str) -> None:
        if self.comm.rank == 0:
            warnings.warn(msg, RuntimeWarning, stacklevel=4)

    def _roundoff(self, n: int) -> float:
        r = num_terms(n, self.d)
        return self.lam * _U * (math.sqrt(r) + math.sqrt(self.chunk) + math.sqrt(self.C) + n + 1)

    def _n_cap(self, cost: bool) -> int:
        """Largest degree allowed by the memory budget, the degree cap and the cost model."""
        d, N, M = self.d, self.N, self.M
        n = 0
        while n < MAX_DEGREE[d]:
            r = num_terms(n + 1, d)
            tables = 8 * r * (M + self.cache * N) if self.backend == "numpy" else 0
            if tables > self.memory_bytes:
                break
            # fast ~ 1 ns per tabulated term and evaluation, direct ~ 9 ns per pair
            if cost and (N + M) * r > 4 * N * M:
                break
            n += 1
        return n

    @staticmethod
    def _rho_uniform(R: float, d: int) -> float:
        """Mean of the scaled kernel for a uniform density (denominator / mass)."""
        if R < 1e-8:
            return 1.0
        return float(-np.expm1(-2 * R) / (2 * R)) if d == 3 else float(ive(0, R))

    def _vdata(self, V: np.ndarray):
        key = V.tobytes()
        if self._vcache is None or self._vcache[0] != key:
            Vy = self.y @ V.T
            self._vcache = (key, Vy, np.linalg.norm(Vy, axis=1))
        return self._vcache[1], self._vcache[2]

    # ------------------------------------------------------------------ set-up per A

    def _setup(self, A: np.ndarray) -> _Setup:
        key = A.tobytes()
        st = self._setups.get(key)
        if st is not None:
            self._setups.move_to_end(key)
            return st
        d, tol, n_cap = self.d, self.tol, self.n_cap
        R = float(np.linalg.norm(A, 2))
        st = _Setup(A.copy(), R)
        big = MAX_DEGREE[3] if d == 3 else min(MAX_DEGREE[2], int(3 * R) + 200)
        tauR = truncation_tails(np.array([R]), max(big, n_cap), d)[:, 0]
        rho = self._rho_uniform(R, d)

        def degree_for(eps):
            ok = np.nonzero(tauR <= eps)[0]
            return int(ok[0]) if ok.size else max(big, n_cap) + 1

        n_feas = degree_for(tol * rho / 4)
        st.report = {"R": R, "n_cap": n_cap, "n_uniform": n_feas, "backend": self.backend}
        if n_feas > self.n_cap_mem:
            self._to_direct(
                st,
                f"kernel too peaked for the expansion: ‖A‖₂ = {R:.3g} needs degree >= {n_feas} "
                f"(tolerance {tol:g}), above the cap {self.n_cap_mem} (memory budget / degree "
                "cap); using the direct sum",
            )
        elif n_feas > n_cap:  # auto: the expansion would not pay off
            self._to_direct(
                st,
                f"auto: the expansion needs degree >= {n_feas} ({num_terms(n_feas, d)} terms; "
                f"‖A‖₂ = {R:.3g}, tolerance {tol:g}), not cheaper than the direct sum for "
                f"{self.N} targets x {self.M} sources; using the direct sum",
                warn=self.N * self.M >= 10**7,
            )
        else:
            # start generous (denominators 1000x below uniform), allow growth up to ~1.5x
            n0 = min(n_cap, degree_for(tol * rho * 1e-3 / 4))
            st.n_tail = min(n_cap, max(n0 + 8, (3 * n0) // 2))
            u = self.x @ A.T  # row i: A x_i
            st.ri = np.linalg.norm(u, axis=1)
            st.uh = np.zeros_like(u)
            st.uh[:, -1] = 1.0
            pos = st.ri > 0
            st.uh[pos] = u[pos] / st.ri[pos, None]
            st.tails = truncation_tails(st.ri, st.n_tail, d)
            self._prepare(st, n0)
        self._setups[key] = st
        while len(self._setups) > self.cache:
            self._setups.popitem(last=False)
        return st

    def _prepare(self, st: _Setup, n: int) -> None:
        """Make the target side ready for degree ``n`` (weights ``b_l(r_i)``, or the table
        ``φ_k(x_i) = b_{l(k)}(r_i) ψ_k(A x_i / r_i)`` for the NumPy backend)."""
        if n <= st.n_phi:
            return
        if self.backend == "numba":
            st.bw = np.ascontiguousarray(degree_weights(st.ri, n, self.d))
            if n >= self._rt[0].shape[0]:
                self._rt = _recurrence_tables(max(n, 2 * self._rt[0].shape[0]))
        else:
            st.phi = None
            b = degree_weights(st.ri, n, self.d)  # (n + 1, N_local)
            phi = sphere_basis(st.uh, n)
            phi *= b[_degree_of_terms(n, self.d)]
            st.phi = np.asfortranarray(phi.T)
            self._psi.ensure(n)
        st.n_phi = n

    def _to_direct(self, st: _Setup, reason: str, warn: bool = True) -> None:
        st.mode = "direct"
        st.phi = st.tails = st.bw = None
        keep = ("R", "n_cap", "n_uniform", "sampled_error", "sampled_targets")
        st.report = {k: v for k, v in st.report.items() if k in keep}
        st.report.update(method="direct", reason=reason)
        if warn:
            self._warn(reason)

    # ------------------------------------------------------------------ evaluation

    def _moments(self, n: int, W: np.ndarray) -> np.ndarray:
        r = num_terms(n, self.d)
        if self.backend == "numba":
            with _numba_threads(self.threads):
                mom_local = self._kernels[0](self._pts, W, n, self.chunk, *self._rt)
        else:
            C = self._C_local
            mom_local = np.matmul(self._psi.psi[:, :r, :], W.reshape(C, self.chunk, W.shape[1]))
        if self.comm.size > 1:
            k = r * W.shape[1]
            allm = np.empty((self.C, r, W.shape[1]))
            self.comm.Allgatherv(np.ascontiguousarray(mom_local), [allm, self._chunk_counts * k])
        else:
            allm = mom_local
        mom = allm[0].copy()
        for c in range(1, self.C):
            mom += allm[c]
        return mom

    def _fast(self, st: _Setup, n: int, ctx: dict):
        """Velocity ``X̃``, scaled denominator ``D̃`` and ``q = |Ñ|/D̃`` at degree ``n``."""
        mom = self._moments(n, ctx["W"])
        if self.backend == "numba":
            with _numba_threads(self.threads):
                out = self._kernels[1](st.uh, st.bw, mom, n, *self._rt)
        else:
            out = st.phi[:, : num_terms(n, self.d)] @ mom
        D = out[:, 0]
        good = D > 0
        num = np.zeros((len(D), self.d))
        num[good] = out[good, 1:] / D[good, None]
        return tangent_project(self.x, num), D, np.linalg.norm(num, axis=1)

    def _bounds(self, st: _Setup, n, D, q, ctx) -> np.ndarray:
        """``B_i = η_i (S_wV + q_i Σw) / (D̃_i - η_i Σw)`` for each degree in ``n`` (rows)."""
        n = np.atleast_1d(n)
        eta = st.tails[n] + np.array([self._roundoff(int(k)) for k in n])[:, None]
        mass = ctx["mass"]
        den = D[None, :] - eta * mass
        with np.errstate(divide="ignore", invalid="ignore"):
            B = eta * (ctx["SwV"] + q[None, :] * mass) / den
        return np.where(den > 0, B, np.inf)

    def _fail_counts(self, st, lo, hi, D, q, ctx, thr) -> np.ndarray:
        B = self._bounds(st, np.arange(lo, hi + 1), D, q, ctx)
        return np.asarray(self._allsum((B > thr).sum(axis=1).astype(np.int64)))

    def _pick_degree(self, st, lo, D, q, ctx, thr) -> int:
        """Smallest degree in ``[lo, n_tail]`` leaving at most ``max_fail`` of the targets (or
        about the fewest possible) to the direct sum, plus one for weight drift."""
        counts = self._fail_counts(st, lo, st.n_tail, D, q, ctx, thr)
        # targets limited by round-off do not improve with the degree: aim at the best count
        target = max(int(self.max_fail * self.N), math.ceil(1.01 * int(counts.min())))
        first = int(np.nonzero(counts <= target)[0][0])
        return min(lo + first + 1, st.n_tail)

    def _evaluate(self, st, n, ctx):
        X, D, q = self._fast(st, n, ctx)
        scale = self._allmax(float(np.linalg.norm(X, axis=1).max(initial=0.0)))
        return X, D, q, scale, 0.5 * self.tol * scale

    def __call__(self, w: np.ndarray, A: np.ndarray, V: np.ndarray) -> np.ndarray:
        """Velocity at this rank's targets; ``w`` are the gathered, key-ordered weights."""
        A = np.ascontiguousarray(A, dtype=float)
        V = np.ascontiguousarray(V, dtype=float)
        w = np.asarray(w, dtype=float)
        if w.shape != (self.M,):
            raise ValueError(f"weights have shape {w.shape}, expected ({self.M},)")
        wp = np.where(w > 0, w, 0.0)
        if not np.any(wp > 0):
            raise ValueError("the measure has no mass: all source weights are zero")
        st = self._setup(A)
        st.calls += 1
        if st.mode == "direct":
            self.report = st.report
            return attention_velocity(self.x, self.y, w, A, V)
        d = self.d
        Vy, nVy = self._vdata(V)
        a, b = self._src_rows
        W = np.zeros((self._C_local * self.chunk, d + 1))
        W[: b - a, 0] = wp[a:b]
        W[: b - a, 1:] = wp[a:b, None] * Vy[a:b]
        ctx = {"W": W, "mass": float(wp.sum()), "SwV": float(wp @ nVy)}

        first = st.new
        if first:  # choose the degree from a generous first evaluation
            st.new = False
            n0 = st.n_phi
            ev = self._evaluate(st, n0, ctx)
            st.n_use = self._pick_degree(st, 0, ev[1], ev[2], ctx, ev[4])
            if st.n_use > st.n_phi:
                self._prepare(st, st.n_use)
        n = st.n_use
        X, D, q, scale, thr = ev if first and n == n0 else self._evaluate(st, n, ctx)
        B = self._bounds(st, n, D, q, ctx)[0]
        fail = B > thr
        nfail = int(self._allsum(int(fail.sum())))
        if nfail > int(self.max_fail * self.N) and n < st.n_tail:  # weights moved: raise
            st.n_use = n = self._pick_degree(st, n, D, q, ctx, thr)
            if n > st.n_phi:
                self._prepare(st, n)
            X, D, q, scale, thr = self._evaluate(st, n, ctx)
            B = self._bounds(st, n, D, q, ctx)[0]
            fail = B > thr
            nfail = int(self._allsum(int(fail.sum())))
        if first and st.phi is not None and st.n_phi > st.n_use + 2:  # drop unused columns
            st.phi = np.asfortranarray(st.phi[:, : num_terms(st.n_use + 2, d)])
            st.n_phi = st.n_use + 2
        if np.any(fail):
            X[fail] = attention_velocity(self.x[fail], self.y, w, A, V)
        st.direct_targets += nfail
        bound = self._allmax(float(B[~fail].max(initial=0.0))) / max(scale, 1e-300)
        st.report.update(
            method="fast",
            degree=n,
            terms=num_terms(n, d),
            bound=bound,
            direct_targets=nfail,
            calls=st.calls,
        )
        if first and not self._check(st, X, B, w, A, V, scale):
            X = attention_velocity(self.x, self.y, w, A, V)
        elif nfail > self.N // 4:
            self._to_direct(
                st,
                f"{nfail} of {self.N} targets missed the tolerance {self.tol:g} of the "
                f"expansion at degree {n} (‖A‖₂ = {st.R:.3g}: kernel too peaked for these "
                "weights); using the direct sum for this A",
            )
        self.report = st.report
        return X

    def _check(self, st, X, B, w, A, V, scale) -> bool:
        """Compare with the direct sum on a sample of targets (new ``A`` only)."""
        m = len(self.x)
        k = min(m, self.sample)
        worst = np.argsort(B)[-min(8, m) :] if m else np.zeros(0, int)
        idx = np.unique(
            np.concatenate([np.linspace(0, m - 1, max(k - 8, 0)).round().astype(int), worst])
        ).astype(int)
        err = 0.0
        if idx.size:
            Xd = attention_velocity(self.x[idx], self.y, w, A, V)
            err = float(np.linalg.norm(X[idx] - Xd, axis=1).max())
        err = self._allmax(err) / max(scale, 1e-300)
        st.report.update(sampled_error=err, sampled_targets=int(self._allsum(int(idx.size))))
        if not err <= self.tol:
            self._to_direct(
                st,
                f"fast method missed the tolerance on the sampled targets ({err:.2e} > "
                f"{self.tol:g}, ‖A‖₂ = {st.R:.3g}); using the direct sum for this A",
            )
            return False
        return True


class _numba_threads:
    """Run numba kernels with ``k`` threads, restoring the caller's setting afterwards (nothing
    to do for ``k = 1``: the serial kernels do not touch the thread pool)."""

    def __init__(self, k: int):
        self.k = k

    def __enter__(self):
        if self.k > 1:
            self.old = _nb.get_num_threads()
            _nb.set_num_threads(self.k)

    def __exit__(self, *exc):
        if self.k > 1:
            _nb.set_num_threads(self.old)


def _mpi_op(name: str):
    from mpi4py import MPI

    return getattr(MPI, name)
