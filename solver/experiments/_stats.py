"""Measurements on particle runs and the statistics of the experiments' fits.

Distances: ``W2`` is geodesic (radians), exact (``S^1``: quantiles; ``S^{d-1}``, d ≥ 3:
network simplex); the δ-cluster distance is chordal, ``|x − c|``. Reductions ignore
non-finite values (a case that never crosses a level records ``nan``). Confidence intervals
are percentile bootstraps over the independent random units of a sweep (draws, adapters:
:func:`bootstrap`), never over the points of deterministic runs: a fit to deterministic data
(:func:`inverse_fit`) reports its residual, not an interval.
"""

from __future__ import annotations

import math

import numpy as np

from ..analysis import centre_distances, cluster_direction, wasserstein, wasserstein_circle

__all__ = [
    "angle",
    "bootstrap",
    "delta_distance",
    "directions",
    "inverse_fit",
    "loglog_fit",
    "nanmax",
    "nanmean",
    "nanmedian",
    "nanmin",
    "rows_where",
    "w2",
    "w2_cells_s1",
]


def delta_distance(positions: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """``max_i min_c |x_i(t) − c|`` at each saved time (``positions``: (nt, n, d)): the
    configuration is in the δ-cluster state exactly when this is ``< δ``
    (:func:`solver.analysis.delta_cluster_state`)."""
    return centre_distances(positions, centres).max(axis=1)


def directions(positions: np.ndarray) -> np.ndarray:
    """Cluster direction (:func:`solver.analysis.cluster_direction`) at each saved time."""
    return np.array([cluster_direction(x) for x in positions])


def angle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Angle ``arccos <u, v>`` between unit vectors (last axis)."""
    return np.arccos(np.clip(np.sum(u * v, axis=-1), -1.0, 1.0))


def w2(x: np.ndarray, y: np.ndarray, wx=None, wy=None) -> float:
    """Exact geodesic ``W2`` between two weighted point clouds on the sphere."""
    return float(wasserstein(x, wx, y, wy, p=2, method="exact" if x.shape[1] > 2 else "auto"))


def w2_cells_s1(centroids: np.ndarray, a: np.ndarray, b: np.ndarray, sub: int = 32) -> float:
    """Geodesic ``W2`` between two DG0 densities on S^1, each cell's mass spread uniformly
    over its arc (what DG0 represents), not put at its centroid.

    Cell ``i`` (centroid angle ``θ_i``) is the arc between the mid-angles to its neighbours;
    ``a``, ``b`` are the cells' masses (cell average × area). Each arc is cut into ``sub``
    equal pieces, each holding ``1/sub`` of the cell's mass at its centre; a uniform piece of
    width ``w`` is ``w/√12`` from its centre in ``W2``, so by the triangle inequality the value
    is within ``max_i |arc_i| / (√3 sub)`` of the piecewise-constant densities' ``W2``.
    (Centroid atoms instead give ``W2 ≈ √(s h)`` for a shift ``s`` below a cell ``h``.)
    """
    th = np.arctan2(centroids[:, 1], centroids[:, 0])
    o = np.argsort(th)
    ts = th[o]
    gaps = np.diff(np.concatenate([ts, [ts[0] + 2 * np.pi]]))  # gap i: cell i -> i + 1
    lo = ts - 0.5 * np.roll(gaps, 1)
    width = 0.5 * (gaps + np.roll(gaps, 1))
    frac = (np.arange(sub) + 0.5) / sub
    pts = (lo[:, None] + width[:, None] * frac[None, :]).ravel()
    wa = np.repeat(np.clip(np.asarray(a, float)[o], 0, None) / sub, sub)
    wb = np.repeat(np.clip(np.asarray(b, float)[o], 0, None) / sub, sub)
    return float(wasserstein_circle(pts, wa, pts, wb, p=2))


def bootstrap(stat, n: int, *, n_boot: int = 2000, level: float = 0.9, seed: int = 0):
    """Percentile bootstrap over ``n`` independent units (e.g. the seeds of a sweep).

    Returns ``(stat(0..n−1), lo, hi)``: the statistic of the data and the ``level`` interval
    of ``stat(idx)`` over ``n_boot`` resamples ``idx`` (``n`` draws with replacement from
    ``0..n−1``, ``numpy.random.default_rng(seed)``: deterministic). ``stat`` maps an index
    array (units may repeat) to a float; non-finite values of resamples (degenerate draws)
    are dropped, and the interval is ``nan`` when more than half are. One unit (``n = 1``)
    gives ``lo = hi = stat``: no sampling error can be estimated from it.
    """
    if n < 1:
        raise ValueError(f"bootstrap needs at least one unit, got n = {n}")
    if not 0 < level < 1:
        raise ValueError(f"bootstrap level must be in (0, 1), got {level}")
    est = float(stat(np.arange(n)))
    rng = np.random.default_rng(seed)
    vals = np.array([stat(rng.integers(0, n, n)) for _ in range(n_boot)], dtype=float)
    vals = vals[np.isfinite(vals)]
    if len(vals) < n_boot / 2:
        return est, float("nan"), float("nan")
    lo, hi = np.quantile(vals, [(1 - level) / 2, (1 + level) / 2])
    return est, float(lo), float(hi)


def inverse_fit(eps, t) -> dict:
    """Least squares ``t ≈ L/ε + b`` (linear in ``1/ε``) over the finite positive pairs.

    The exit law of a point mass is exactly ``L/ε`` (``b = 0``); a spread measure adds the
    offset ``b`` it accumulates before it collapses. Returns ``L``, ``b``, ``rms_residual``
    (``(mean (t − L/ε − b)²)^{1/2}``: on deterministic data the only measure of misfit) and
    ``n_points``; ``nan`` with fewer than two distinct ε (one point: ``L = ε t`` with
    ``b = 0`` is not a fit and is not returned).
    """
    x, y = np.asarray(eps, float).ravel(), np.asarray(t, float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"eps and t must have the same length, got {x.size} and {y.size}")
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0)
    out = {"L": float("nan"), "b": float("nan"), "rms_residual": float("nan"),
           "n_points": int(ok.sum())}  # fmt: skip
    if len(np.unique(x[ok])) < 2:
        return out
    u = 1.0 / x[ok]
    L, b = np.polyfit(u, y[ok], 1)
    res = y[ok] - (L * u + b)
    out.update(L=float(L), b=float(b), rms_residual=float(np.sqrt(np.mean(res**2))))
    return out


def loglog_fit(x, y) -> tuple[float, float]:
    """Least-squares ``log y = log c + a log x``: returns ``(a, c)`` (nan with < 2 points)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    if ok.sum() < 2:
        return float("nan"), float("nan")
    a, b = np.polyfit(np.log(x[ok]), np.log(y[ok]), 1)
    return float(a), float(math.exp(b))


def _finite_reduce(fn, x) -> float:
    x = np.asarray(x, dtype=float)
    return float(fn(x[np.isfinite(x)])) if np.isfinite(x).any() else float("nan")


def nanmedian(x) -> float:
    """Median of the finite values (nan when there are none)."""
    return _finite_reduce(np.median, x)


def nanmean(x) -> float:
    """Mean of the finite values (nan when there are none)."""
    return _finite_reduce(np.mean, x)


def nanmin(x) -> float:
    """Minimum of the finite values (nan when there are none)."""
    return _finite_reduce(np.min, x)


def nanmax(x) -> float:
    """Maximum of the finite values (nan when there are none)."""
    return _finite_reduce(np.max, x)


def rows_where(rows, **match) -> list[dict]:
    """The rows whose fields equal ``match``."""
    return [r for r in rows if all(r[k] == v for k, v in match.items())]
