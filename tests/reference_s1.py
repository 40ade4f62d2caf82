"""Independent Fourier–Galerkin reference for the attention continuity equation on S^1.

Written from the equations alone (it does not use ``solver.velocity``): with ``θ`` the angle,
``x(θ) = (cos θ, sin θ)`` and ``τ(θ) = (-sin θ, cos θ)``,

.. math::

    ∂_t ρ + ∂_θ(ρ X_θ) = 0, \\qquad
    X_θ[ρ](θ) = τ(θ)^T \\frac{\\int e^{y^T A x(θ)} V y\\, ρ(y)\\, dy}
                              {\\int e^{y^T A x(θ)} ρ(y)\\, dy}, \\qquad A = K^T Q.

Pseudo-spectral in θ: ``N`` equispaced points, both integrals by the trapezoid rule (spectrally
accurate for smooth periodic integrands), ``∂_θ`` by FFT, DOP853 in time with tight tolerances.
:func:`cell_averages` integrates the trigonometric interpolant exactly over arcs.
"""

from __future__ import annotations

import numpy as np
from scipy.integrate import solve_ivp


def grid(n: int) -> np.ndarray:
    """``n`` equispaced angles ``2πj/n``."""
    return 2 * np.pi * np.arange(n) / n


def tangential_velocity(theta: np.ndarray, rho: np.ndarray, A: np.ndarray, V: np.ndarray):
    """``X_θ`` at the grid points ``theta`` for the density values ``rho`` there (trapezoid
    rule on the same grid: the constant weight ``2π/n`` cancels in the ratio)."""
    y = np.column_stack([np.cos(theta), np.sin(theta)])  # sources y_j = targets x_i
    logits = y @ A @ y.T  # [j, i] = y_jᵀ A x_i
    w = np.exp(logits - logits.max(axis=0)) * rho[:, None]  # shifted per target: ratio unchanged
    m = (w.T @ (y @ V.T)) / w.sum(axis=0)[:, None]  # (n, 2): softmax average of V y
    tau = np.column_stack([-np.sin(theta), np.cos(theta)])
    return np.einsum("ij,ij->i", m, tau)


def d_theta(f: np.ndarray) -> np.ndarray:
    """Spectral derivative of periodic samples (the Nyquist mode of even ``n`` dropped)."""
    n = len(f)
    k = np.fft.rfftfreq(n, 1.0 / n)
    fh = np.fft.rfft(f) * 1j * k
    if n % 2 == 0:
        fh[-1] = 0.0
    return np.fft.irfft(fh, n)


def solve(rho0, A, V, T: float, n: int = 256, rtol: float = 1e-11, atol: float = 1e-13):
    """Density samples at ``grid(n)`` at time ``T`` from the initial density ``rho0(θ)``
    (normalised here to ``∫ρ dθ = 1``). Returns ``(theta, rho_T, max |Fourier tail|)``, the
    last being the largest coefficient among the top quarter of modes relative to the mean:
    small means the solution is resolved on this grid."""
    A, V = np.asarray(A, float), np.asarray(V, float)
    theta = grid(n)
    r0 = np.asarray(rho0(theta), float)
    r0 = r0 / (r0.mean() * 2 * np.pi)

    def rhs(_t, r):
        return -d_theta(r * tangential_velocity(theta, r, A, V))

    sol = solve_ivp(rhs, (0.0, T), r0, method="DOP853", rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"reference solve failed: {sol.message}")
    r = sol.y[:, -1]
    c = np.abs(np.fft.rfft(r))
    tail = float(c[3 * len(c) // 4 :].max() / c[0])
    return theta, r, tail


def cell_averages(rho: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(1/(b-a)) ∫_a^b ρ̂(θ) dθ`` of the trigonometric interpolant ``ρ̂`` of the samples
    ``rho`` at :func:`grid` points, for arcs ``[a_k, b_k]`` (exact integration of each mode)."""
    n = len(rho)
    c = np.fft.fft(rho) / n  # ρ̂(θ) = Σ_k c_k e^{ikθ}, k in the symmetric range
    k = np.fft.fftfreq(n, 1.0 / n)
    if n % 2 == 0:  # split the Nyquist mode evenly between ±n/2 (real interpolant)
        c = np.append(c, 0.5 * c[n // 2])
        c[n // 2] *= 0.5
        k = np.append(k, n // 2)
        k[n // 2] = -n // 2
    a, b = np.asarray(a, float)[:, None], np.asarray(b, float)[:, None]
    nz = k != 0
    integ = np.empty((a.shape[0], len(k)), complex)
    integ[:, ~nz] = b - a
    integ[:, nz] = (np.exp(1j * k[nz] * b) - np.exp(1j * k[nz] * a)) / (1j * k[nz])
    return np.real(integ @ c) / (b - a)[:, 0]
