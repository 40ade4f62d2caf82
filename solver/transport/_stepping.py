"""Time grids and SSP Runge-Kutta steps (pure NumPy, shared by the PDE and the particles).

* :func:`time_grid` builds the step times: the interval ``[0, T]`` is cut at every save time
  and every parameter jump (layer boundary of random adapters), and each piece is split
  into equal steps no longer than the given bound, so steps land on saves and jumps exactly.
* :class:`Clock` does the same one step at a time, for steps chosen as the run goes
  (adaptive stepping): a step never crosses an event, and the steps left before the next
  event are made equal, so there is no sliver of a last step.
* :func:`ssp_rk3_step` is the Shu-Osher SSP-RK3 (SSP coefficient 1): a convex combination
  of forward-Euler steps, so it keeps the positivity of the upwind scheme under the same CFL.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["time_grid", "ssp_rk3_step", "Clock"]


def time_grid(
    T: float, dt_max: float, save_every: float | None = None, breakpoints=()
) -> tuple[np.ndarray, np.ndarray]:
    """Step times ``0 = t_0 < ... < t_N = T`` and the indices of the saved ones.

    Every save time ``k * save_every`` and every breakpoint in ``(0, T)`` is a step time;
    between two of them the steps are equal and ``<= dt_max``. Index 0 and N are saved.
    """
    saves = _save_times(T, save_every)
    if not (np.isfinite(dt_max) and dt_max > 0):
        raise ValueError(f"time step bound must be > 0, got {dt_max}")
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


def _save_times(T: float, save_every: float | None) -> np.ndarray:
    if not (np.isfinite(T) and T > 0):
        raise ValueError(f"time.T must be > 0, got {T}")
    inner = np.zeros(0)
    if save_every is not None:
        if not (np.isfinite(save_every) and save_every > 0):
            raise ValueError(f"time.save_every must be > 0, got {save_every}")
        n = int(np.floor(T / save_every + 1e-9))
        inner = np.round(np.arange(1, n + 1) * save_every, 12)
        inner = inner[inner < T * (1 - 1e-12)]  # T itself is kept exactly (not rounded)
    return np.unique(np.concatenate([[0.0], inner, [float(T)]]))


class Clock:
    """Step times from 0 to ``T``, one step at a time, landing on every save time and every
    breakpoint (parameter jump) exactly.

    ``land(t, dt)`` returns the step actually taken from ``t`` for a wanted length ``dt``: the
    time ``r`` to the next event is cut into ``n = ceil(r / dt)`` equal steps, and the last of
    them ends on the event itself (no accumulated round-off in the event times).
    """

    def __init__(self, T: float, save_every: float | None = None, breakpoints=()):
        self.T = float(T)
        self.saves = _save_times(T, save_every)
        bps = np.asarray(breakpoints, dtype=float)
        self.events = np.unique(np.concatenate([self.saves, bps[(bps > 0) & (bps < T)]]))
        self._save_set = set(self.saves.tolist())

    def next_event(self, t: float) -> float:
        return float(self.events[np.searchsorted(self.events, t, side="right")])

    def land(self, t: float, dt: float) -> tuple[float, float]:
        """``(step length, time after the step)`` for a wanted step ``dt > 0`` from ``t < T``."""
        if not (np.isfinite(dt) and dt > 0):
            raise ValueError(f"time step must be > 0, got {dt}")
        e = self.next_event(t)
        n = max(1, int(np.ceil((e - t) / dt - 1e-9)))
        return ((e - t), e) if n == 1 else ((e - t) / n, t + (e - t) / n)

    def is_save(self, t: float) -> bool:
        return t in self._save_set


def ssp_rk3_step(
    rhs: Callable | None, rho: np.ndarray, t: float, dt: float,
    limiter: Callable | None = None, f0: np.ndarray | None = None,
    euler: Callable | None = None, u0=None,
) -> np.ndarray:  # fmt: skip
    """One Shu-Osher SSP-RK3 step of ``dρ/dt = rhs(t, ρ)``, ``limiter`` after each stage.

    The stages are forward-Euler steps ``E(s, r) = r + dt · rhs(s, r)`` combined convexly:
    ``r1 = E(t, ρ)``, ``r2 = ¾ ρ + ¼ E(t + dt, r1)``, ``r3 = ⅓ ρ + ⅔ E(t + dt/2, r2)``.
    ``f0``: ``rhs(t, ρ)`` when the caller has it already. ``euler(s, r[, u])``: a forward-Euler
    step of its own (e.g. one that keeps positivity for any ``dt``), called with ``u0`` for
    the first stage.
    """
    lim = limiter if limiter is not None else (lambda r: r)
    if euler is None:

        def euler(s, r, f=None):
            return r + dt * (rhs(s, r) if f is None else f)

        u0 = f0
    r1 = lim(euler(t, rho, u0))
    r2 = lim(0.75 * rho + 0.25 * euler(t + dt, r1))
    return lim(rho / 3.0 + (2.0 / 3.0) * euler(t + 0.5 * dt, r2))
