"""Entry and exit times of a state along a time series: at the samples
(:func:`cluster_times`) and interpolated at a level of a continuous function
(:func:`crossing_times`, :func:`measure_cluster_times`)."""

from __future__ import annotations

import numpy as np


def cluster_times(times, states) -> tuple[float, float]:
    """Entry and exit times of a state along a time series.

    ``t_enter`` is the first ``times[i]`` with ``states[i]`` true; ``t_exit`` the first later
    ``times[j]`` (``j > i``) with ``states[j]`` false. Either is ``nan`` when it does not
    happen (``t_exit`` is ``nan`` whenever ``t_enter`` is).

    Parameters
    ----------
    times : (N,) array
        Non-decreasing, finite.
    states : (N,) bool array

    Returns
    -------
    (float, float)
    """
    times = np.asarray(times, dtype=float)
    states = np.asarray(states)
    if times.ndim != 1 or states.shape != times.shape:
        raise ValueError(
            f"times and states must be 1-D of equal length, got {times.shape} and {states.shape}"
        )
    if not np.all(np.isfinite(times)) or np.any(np.diff(times) < 0):
        raise ValueError("times must be finite and non-decreasing")
    states = states.astype(bool)
    on = np.flatnonzero(states)
    if on.size == 0:
        return float("nan"), float("nan")
    i = int(on[0])
    off = np.flatnonzero(~states[i + 1 :])
    t_exit = float(times[i + 1 + off[0]]) if off.size else float("nan")
    return float(times[i]), t_exit


def crossing_times(times, f, level: float, strict: bool = False) -> tuple[float, float]:
    """Entry and exit times of the state ``f <= level`` (``f < level`` when ``strict``).

    The sample indices are those of :func:`cluster_times` on the state; each crossing is then
    placed by linear interpolation of ``f`` between the sample before and the sample at the
    change: ``t = t_{k-1} + s (t_k - t_{k-1})``, ``s = (level - f_{k-1}) / (f_k - f_{k-1})``
    clipped to ``[0, 1]`` (``t_k`` when ``f_k = f_{k-1}``; ``t_0`` when the state holds at the
    first sample). ``nan`` when it does not happen.

    Parameters
    ----------
    times : (N,) array
        Non-decreasing, finite.
    f : (N,) array
        Finite values (a distance, a mass outside, an angle).
    level : float
    strict : bool

    Returns
    -------
    (float, float)
    """
    f = np.asarray(f, dtype=float)
    if not np.all(np.isfinite(f)) or not np.isfinite(level):
        raise ValueError("f and level must be finite")
    te, tx = cluster_times(times, f < level if strict else f <= level)
    times = np.asarray(times, dtype=float)

    def crossing(t: float) -> float:
        if not np.isfinite(t):
            return t
        k = int(np.searchsorted(times, t))
        if k == 0:
            return float(times[0])
        f0, f1 = float(f[k - 1]), float(f[k])
        if f1 == f0:
            return float(times[k])
        s = min(1.0, max(0.0, (level - f0) / (f1 - f0)))
        return float(times[k - 1] + s * (times[k] - times[k - 1]))

    return crossing(te), crossing(tx)


def measure_cluster_times(times, masses_outside, tol: float = 0.0) -> tuple[float, float]:
    """Entry and exit times of the measure-level δ-cluster state ``m_δ(μ_t) <= tol``.

    :func:`crossing_times` of the series of :func:`cluster_mass_outside`: ``t_enter`` is the
    first time the state holds, ``t_exit`` the first later time it fails, each interpolated
    linearly between the saved times; ``nan`` when it does not happen. For ``n`` equal-weight
    particles and ``0 <= tol < 1/n`` the state holds at the same samples as
    ``max_i min_c |x_i - c| < δ``. The state is the same at every sample as ``q_tol < δ`` of
    :func:`cluster_reach`, whose crossings (what runs and experiments report) place a
    collapsed cluster's exit within the sample interval, where ``m_δ`` jumps from 0 to 1.

    Parameters
    ----------
    times : (N,) array
        Non-decreasing, finite.
    masses_outside : (N,) array
        Fractions in ``[0, 1]``.
    tol : float
        In ``[0, 1)``.

    Returns
    -------
    (float, float)
    """
    m = np.asarray(masses_outside, dtype=float)
    if not np.all(np.isfinite(m)) or np.any(m < 0) or np.any(m > 1):
        raise ValueError("masses_outside must be fractions in [0, 1]")
    if not (np.isfinite(tol) and 0 <= tol < 1):
        raise ValueError(f"tol must be in [0, 1), got {tol}")
    return crossing_times(times, m, tol)
