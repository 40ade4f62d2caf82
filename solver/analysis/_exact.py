"""Exact solutions of the mean-field dynamics, for verification (see model.md).

Uniform attention on S^1 (``Q = K = 0``, ``V = I``): with ``Z = ∫ e^{iθ} dμ`` the velocity is
``θ̇ = Im(Z e^{-iθ})`` and the Poisson-kernel (Ott-Antonsen) family

.. math:: ρ_z(θ) = \\frac{1}{2π} \\frac{1 - |z|^2}{|e^{iθ} - z|^2}

is invariant, with first moment ``Z = z`` and ``ż = z (1 - |z|^2) / 2``, so
``|z(t)|^2 = 1 / (1 + (|z_0|^{-2} - 1) e^{-t})`` and ``arg z`` is constant.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = [
    "hyperbolic_centre",
    "hyperbolic_mean",
    "hyperbolic_poisson_kernel",
    "poisson_kernel",
    "poisson_radius",
]


def poisson_kernel(r: float) -> Callable[[np.ndarray], np.ndarray]:
    """Density ``ρ_z`` on S^1 (points: ``(n, 2)`` unit vectors), ``z = (r, 0)``, ``0 <= r < 1``."""
    if not 0 <= r < 1:
        raise ValueError(f"the Poisson kernel needs 0 <= r < 1, got {r}")

    def f(x: np.ndarray) -> np.ndarray:
        return (1 - r * r) / (2 * np.pi * ((x[:, 0] - r) ** 2 + x[:, 1] ** 2))

    return f


def poisson_radius(r0: float, t: float | np.ndarray) -> float | np.ndarray:
    """``|z(t)|`` from ``|z(0)| = r0`` under ``ż = z (1 - |z|^2) / 2``."""
    return 1.0 / np.sqrt(1.0 + (r0**-2 - 1.0) * np.exp(-t))


def hyperbolic_poisson_kernel(z: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Density ``ρ_z`` on ``S^{d-1}`` (``d = len(z)``, ``|z| < 1``), the law of ``g(u)`` for
    ``u`` uniform and ``g`` any Möbius map of the ball with ``g(0) = z``:

    .. math:: ρ_z(x) = \\frac{1}{|S^{d-1}|} \\Big(\\frac{1 - |z|^2}{|x - z|^2}\\Big)^{d-1} .

    ``d = 2`` is the Poisson kernel of :func:`poisson_kernel` at any centre ``z``."""
    z = np.asarray(z, dtype=float)
    d = z.size
    r2 = float(z @ z)
    if not (z.ndim == 1 and d in (2, 3) and np.all(np.isfinite(z)) and r2 < 1):
        raise ValueError(f"z must be a finite vector of R^2 or R^3 with |z| < 1, got {z!r}")
    area = 2 * np.pi if d == 2 else 4 * np.pi

    def f(x: np.ndarray) -> np.ndarray:
        return ((1 - r2) / np.sum((x - z) ** 2, axis=1)) ** (d - 1) / area

    return f


def hyperbolic_mean(z: np.ndarray) -> np.ndarray:
    """The first moment ``m(z) = ∫ x ρ_z(x) dσ(x)`` of :func:`hyperbolic_poisson_kernel`:
    ``m = z`` on ``S^1``; on ``S^2`` ``m = f(r) z / r`` (``r = |z|``) with

    .. math:: f(r) = \\frac{1 + r^2}{2 r} + \\frac{(1 - r^2)^2}{4 r^2}
              \\ln\\frac{1 - r}{1 + r} \\quad (= \\tfrac43 r + O(r^3)) ."""
    z = np.asarray(z, dtype=float)
    if z.size == 2:
        return z.copy()
    r = float(np.linalg.norm(z))
    if r < 1e-3:  # the series, to avoid the cancellation of the closed form
        return (4 / 3 - 4 * r * r / 15) * z
    f = (1 + r * r) / (2 * r) + (1 - r * r) ** 2 / (4 * r * r) * np.log((1 - r) / (1 + r))
    return f * z / r


def hyperbolic_centre(z0: np.ndarray, V: np.ndarray, t: float | np.ndarray) -> np.ndarray:
    """Centre ``z(t)`` of the exact solution ``μ_t = ρ_{z(t)}`` for uniform attention (``A = 0``)
    and any ``V`` on ``S^1`` or ``S^2``, from ``μ_0 = ρ_{z0}``.

    With ``A = 0`` the velocity is ``X(x) = P_x w``, ``w = V m(z)`` (:func:`hyperbolic_mean`),
    a conformal field: its flow is a Möbius map, which carries ``ρ_z`` to ``ρ_{g(z)}``, and ``z``
    moves by the field's extension to the ball (the hyperbolic translation with boundary values
    ``P_x w``):

    .. math:: \\dot z = \\tfrac12 (1 + |z|^2)\\, w - (z·w)\\, z .

    On ``S^1`` with ``V = I`` this is ``ż = z (1 - |z|^2) / 2`` (:func:`poisson_radius`).
    Integrated by SciPy's DOP853 at ``rtol = atol = 1e-13``; ``t`` scalar or increasing array
    (then one row per time)."""
    from scipy.integrate import solve_ivp

    z0 = np.asarray(z0, dtype=float)
    V = np.asarray(V, dtype=float)
    if V.shape != (z0.size, z0.size):
        raise ValueError(f"V must be {z0.size}x{z0.size} for z0 of size {z0.size}, got {V.shape}")

    def rhs(_t, z):
        w = V @ hyperbolic_mean(z)
        return 0.5 * (1 + z @ z) * w - (z @ w) * z

    ts = np.atleast_1d(np.asarray(t, dtype=float))
    if not np.all(np.isfinite(ts)) or ts[0] < 0 or np.any(np.diff(ts) < 0):
        raise ValueError(f"t must be finite, >= 0 and increasing, got {t!r}")
    if ts[-1] == 0.0:  # solve_ivp needs an interval of positive length
        out = np.tile(z0, (ts.size, 1))
        return out[0] if np.ndim(t) == 0 else out
    sol = solve_ivp(rhs, (0.0, float(ts[-1])), z0, method="DOP853", t_eval=ts, rtol=1e-13,
                    atol=1e-13)  # fmt: skip
    out = sol.y.T
    return out[0] if np.ndim(t) == 0 else out
