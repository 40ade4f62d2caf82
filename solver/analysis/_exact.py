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

__all__ = ["poisson_kernel", "poisson_radius"]


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
