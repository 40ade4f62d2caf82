"""Measurements on particle runs and the statistics of the experiments' fits.

Distances: ``W2`` is geodesic (radians), exact (``S^1``: quantiles; ``S^{d-1}``, d ≥ 3:
network simplex); the δ-cluster distance is chordal, ``|x − c|``. Reductions ignore
non-finite values (a case that never crosses a level records ``nan``).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.spatial import cKDTree

from ..analysis import cluster_direction, wasserstein

__all__ = [
    "angle",
    "delta_distance",
    "directions",
    "loglog_fit",
    "nanmax",
    "nanmean",
    "nanmedian",
    "nanmin",
    "rows_where",
    "w2",
]


def delta_distance(positions: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """``max_i min_c |x_i(t) − c|`` at each saved time (``positions``: (nt, n, d)): the
    configuration is in the δ-cluster state exactly when this is ``< δ``
    (:func:`solver.analysis.delta_cluster_state`)."""
    nt, n, d = positions.shape
    dist, _ = cKDTree(centres).query(positions.reshape(-1, d), k=1)
    return dist.reshape(nt, n).max(axis=1)


def directions(positions: np.ndarray) -> np.ndarray:
    """Cluster direction (:func:`solver.analysis.cluster_direction`) at each saved time."""
    return np.array([cluster_direction(x) for x in positions])


def angle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Angle ``arccos <u, v>`` between unit vectors (last axis)."""
    return np.arccos(np.clip(np.sum(u * v, axis=-1), -1.0, 1.0))


def w2(x: np.ndarray, y: np.ndarray, wx=None, wy=None) -> float:
    """Exact geodesic ``W2`` between two weighted point clouds on the sphere."""
    return float(wasserstein(x, wx, y, wy, p=2, method="exact" if x.shape[1] > 2 else "auto"))


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
