"""Time grids and SSP Runge-Kutta steps (pure NumPy, shared by the PDE and the particles).

* :func:`time_grid` builds the step times: the interval ``[0, T]`` is cut at every save time
  and every parameter jump (layer boundary of random adapters), and each piece is split
  into equal steps no longer than the given bound, so steps land on saves and jumps exactly.
* :func:`ssp_rk3_step` is the Shu-Osher SSP-RK3 (SSP coefficient 1): a convex combination
  of forward-Euler steps, so it keeps the positivity of the upwind scheme under the same CFL.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["time_grid", "ssp_rk3_step"]


def time_grid(
    T: float, dt_max: float, save_every: float | None = None, breakpoints=()
) -> tuple[np.ndarray, np.ndarray]:
    """Step times ``0 = t_0 < ... < t_N = T`` and the indices of the saved ones.

    Every save time ``k * save_every`` and every breakpoint in ``(0, T)`` is a step time;
    between two of them the steps are equal and ``<= dt_max``. Index 0 and N are saved.
    """
    if not (np.isfinite(T) and T > 0):
        raise ValueError(f"time.T must be > 0, got {T}")
    if not (np.isfinite(dt_max) and dt_max > 0):
        raise ValueError(f"time step bound must be > 0, got {dt_max}")
    saves = [0.0, T]
    if save_every is not None:
        if not (np.isfinite(save_every) and save_every > 0):
            raise ValueError(f"time.save_every must be > 0, got {save_every}")
        n = int(np.floor(T / save_every + 1e-9))
        saves += [k * save_every for k in range(1, n + 1)]
    saves = np.unique(np.clip(np.round(np.asarray(saves, float), 12), 0, T))
    bps = np.asarray(breakpoints, dtype=float)
    events = np.unique(np.concatenate([saves, bps[(bps > 0) & (bps < T)]]))
    times = [np.zeros(1)]
    for a, b in zip(events[:-1], events[1:], strict=True):
        k = max(1, int(np.ceil((b - a) / dt_max - 1e-9)))
        times.append(a + (b - a) * np.arange(1, k + 1) / k)
    times = np.concatenate(times)
    times[-1] = T
    saved = np.searchsorted(times, saves - 1e-12)
    return times, saved


def ssp_rk3_step(
    rhs: Callable, rho: np.ndarray, t: float, dt: float, limiter: Callable | None = None
) -> np.ndarray:
    """One Shu-Osher SSP-RK3 step of ``dρ/dt = rhs(t, ρ)``, ``limiter`` after each stage."""
    lim = limiter if limiter is not None else (lambda r: r)
    r1 = lim(rho + dt * rhs(t, rho))
    r2 = lim(0.75 * rho + 0.25 * (r1 + dt * rhs(t + dt, r1)))
    return lim(rho / 3.0 + (2.0 / 3.0) * (r2 + dt * rhs(t + 0.5 * dt, r2)))
