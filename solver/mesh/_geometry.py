"""Sphere geometry in plain NumPy: mesh generators, projections, geodesics.

Mesh generators return ``(points, cells)`` with every vertex exactly on the unit sphere
(to round-off) and cells oriented counter-clockwise seen from outside.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "circle_mesh",
    "icosphere",
    "icosphere_cells",
    "normalize",
    "geodesic_distance",
    "MAX_ICOSPHERE_LEVEL",
]

MAX_ICOSPHERE_LEVEL = 7


def _points(name: str, x) -> np.ndarray:
    """``x`` as a finite float array of points (rows along the last axis): TypeError for
    anything that is not numbers (``None`` included), ValueError for a 0-d or non-finite one."""
    a = np.asarray(x)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be an array of point coordinates, got {x!r:.80}")
    a = a.astype(float, copy=False)
    if a.ndim == 0:
        raise ValueError(f"{name} must have the coordinates along its last axis, got a scalar")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite (found NaN or inf)")
    return a


def normalize(x: np.ndarray) -> np.ndarray:
    """Radial projection ``x / |x|`` row by row (rows along the last axis; none may be 0)."""
    x = _points("normalize: x", x)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    if np.any(norm == 0):
        raise ValueError("normalize: x has a zero row, which has no direction on the sphere")
    return x / norm


def geodesic_distance(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Great-circle distance ``arccos(<x, y>)`` between unit vectors (broadcasting rows)."""
    x, y = _points("geodesic_distance: x", x), _points("geodesic_distance: y", y)
    if x.shape[-1] != y.shape[-1]:
        raise ValueError(f"geodesic_distance: x and y are points of different dimensions "
                         f"({x.shape[-1]} and {y.shape[-1]})")
    return np.arccos(np.clip(np.sum(x * y, axis=-1), -1.0, 1.0))


def whole(name: str, v, lo: int, hi: int | None = None) -> int:
    """``v`` as an int in ``lo..hi``: TypeError naming ``name`` for anything but an integer
    (``True``, ``2.0``, ``"2"`` and ``None`` included), ValueError out of range."""
    if isinstance(v, bool) or not isinstance(v, int | np.integer):
        raise TypeError(f"{name} must be an integer, got {v!r} ({type(v).__name__})")
    if v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        raise ValueError(f"{name} must be {rng}, got {v}")
    return int(v)


def circle_mesh(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The unit circle as ``n`` equal segments (gdim 2).

    Vertex ``k`` sits at angle ``2πk/n``; cell ``k`` joins vertices ``k`` and ``k+1 mod n``.
    """
    n = whole("circle mesh cells n", n, 3)
    th = 2 * np.pi * np.arange(n) / n
    points = np.column_stack([np.cos(th), np.sin(th)])
    cells = np.column_stack([np.arange(n), (np.arange(n) + 1) % n]).astype(np.int64)
    return points, cells


def _icosahedron() -> tuple[np.ndarray, np.ndarray]:
    p = (1 + np.sqrt(5)) / 2
    x = np.array(
        [[-1, p, 0], [1, p, 0], [-1, -p, 0], [1, -p, 0],
         [0, -1, p], [0, 1, p], [0, -1, -p], [0, 1, -p],
         [p, 0, -1], [p, 0, 1], [-p, 0, -1], [-p, 0, 1]], dtype=float)  # fmt: skip
    c = np.array(
        [[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11],
         [1, 5, 9], [5, 11, 4], [11, 10, 2], [10, 7, 6], [7, 1, 8],
         [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8], [3, 8, 9],
         [4, 9, 5], [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1]], dtype=np.int64)  # fmt: skip
    return normalize(x), c


def icosphere_cells(level: int) -> int:
    """Number of triangles of the icosphere of a given refinement level: ``20 * 4**level``."""
    return 20 * 4 ** whole("icosphere level", level, 0)


def icosphere(level: int) -> tuple[np.ndarray, np.ndarray]:
    """Icosahedral triangulation of the unit sphere, refined ``level`` times (0..7).

    Each refinement splits every triangle into four at the edge midpoints, which are
    projected onto the sphere: ``20 * 4**level`` cells, ``10 * 4**level + 2`` vertices.
    """
    level = whole("icosphere refinement level", level, 0, MAX_ICOSPHERE_LEVEL)
    x, c = _icosahedron()
    for _ in range(level):
        edges = np.concatenate([c[:, [0, 1]], c[:, [1, 2]], c[:, [2, 0]]])
        edges.sort(axis=1)
        uniq, inv = np.unique(edges, axis=0, return_inverse=True)
        mid = normalize(0.5 * (x[uniq[:, 0]] + x[uniq[:, 1]]))
        m = inv.reshape(3, -1).T + len(x)  # midpoints of edges (01, 12, 20) per cell
        x = np.vstack([x, mid])
        a, b, cc = c.T
        m01, m12, m20 = m.T
        c = np.concatenate(
            [np.column_stack(t) for t in
             ((a, m01, m20), (b, m12, m01), (cc, m20, m12), (m01, m12, m20))])  # fmt: skip
    return x, c
