"""Pure maths of the plane-wave expansion of ``e^{<u, y>}`` on S^1 and S^2 (no numba, no MPI).

.. math::

    S^2:\\; e^{r\\,\\hat u\\cdot y}
        = \\sum_{l\\ge 0} 4π\\, i_l(r) \\sum_{m} Y_{lm}(\\hat u) Y_{lm}(y),
    \\qquad
    S^1:\\; e^{r\\cos(α-β)}
        = I_0(r) + 2\\sum_{k\\ge 1} I_k(r)\\,(\\cos kα\\cos kβ + \\sin kα\\sin kβ).

* :func:`num_terms` — the number of terms up to degree ``n``;
* :func:`sphere_basis` — the source-side basis ``ψ_k`` (real ``Y_lm`` or ``cos kθ, sin kθ``);
* :func:`degree_weights` — the target-side weights ``b_l(r)`` (scaled Bessel functions);
* :func:`target_basis` — the target-side factors ``φ_k = b_{l(k)} ψ_k``;
* :func:`truncation_tails` — the rigorous truncation bound ``τ_m(r)``;
* :func:`recurrence_tables` — the coefficients of the normalised Legendre recurrences.

See :mod:`solver.velocity._fast` for how they are used.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "num_terms",
    "sphere_basis",
    "degree_weights",
    "truncation_tails",
    "target_basis",
    "recurrence_tables",
]

_FOUR_PI = 4.0 * math.pi


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
    tmp = np.empty_like(r)
    tail = np.zeros_like(r)  # T_l = ρ_l (w_l + T_{l+1}) = Σ_{k>=l} w_k f_k / f_{l-1}
    f = np.empty((L + 1, r.size))  # the ratios ρ_l, then f_l / f_0 (in place, row by row)
    for l in range(top, 0, -1):
        c = (2 * l + 1) if d == 3 else 2 * l
        np.multiply(r, rho, out=tmp)
        tmp += c
        np.divide(r, tmp, out=rho)
        if l <= L:
            f[l] = rho
        else:
            tail += (2 * l + 1) if d == 3 else 2.0
            tail *= rho
    f[0] = 1.0
    for l in range(1, L + 1):  # the cumulative product over l (as np.cumprod, faster)
        f[l] *= f[l - 1]
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
    g = _scaled_bessel(r, L, d)
    if d == 3:
        g *= (2 * np.arange(L + 1) + 1.0)[:, None]
    else:
        g[1:] *= 2.0
    q = r / (2 * L + 1)
    rest = g[L] * q / (1 - q)  # q <= 1/2 since L >= r + extra
    out = np.empty((n + 1, r.size))
    acc = g[L].copy()  # Σ_{l>=m} g_l, summed from the top, row by row
    for m in range(L - 1, 0, -1):
        acc += g[m]
        if m <= n + 1:
            np.add(acc, rest, out=out[m - 1])
    return out


def recurrence_tables(n: int):
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


def target_basis(directions: np.ndarray, r: np.ndarray, n: int) -> np.ndarray:
    """Target-side factors ``φ_k(x) = b_{l(k)}(r) ψ_k(û)`` up to degree ``n``, ``(r_n, len(r))``.

    ``directions`` are the unit vectors ``û = u / r`` of ``u = A x``, ``r = |u|``; then
    ``Σ_k φ_k(x) ψ_k(y) = e^{<u, y> - r}`` (truncated at degree ``n``).
    """
    d = directions.shape[1]
    b = degree_weights(r, n, d)
    phi = sphere_basis(directions, n)
    phi *= b[_degree_of_terms(n, d)]
    return phi
