r"""Clusters of a weighted point set (quick shift, :func:`find_clusters`) and of a density on
a mesh (modes and their basins, :func:`density_clusters`; the basins' gradient paths are in
:mod:`._walks`), with the vertex-sharing adjacency of a mesh's cells."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.sparse import csr_matrix, triu
from scipy.spatial import cKDTree

from .._wasserstein import check_points, check_weights
from ._walks import _gradient_paths


@dataclass(frozen=True)
class Clusters:
    """Clusters of a weighted point set on the sphere.

    Attributes
    ----------
    centres : (k, d) array
        Unit vectors: normalised weighted means of the members.
    masses : (k,) array
        Fractions of the total mass, in decreasing order (ties: lexicographic centres).
    labels : (n,) int array
        Cluster index of each input point; ``-1`` for points of zero weight and for members
        of groups lighter than ``min_mass`` (which are not reported).
    """

    centres: np.ndarray
    masses: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.masses.shape[0])


def _chord(radius: float) -> float:
    """Chordal length of a geodesic arc of ``radius`` radians on the unit sphere."""
    return 2.0 * np.sin(0.5 * radius)


def find_clusters(x, w=None, radius: float = 0.1, min_mass: float = 1e-3) -> Clusters:
    r"""Group the mass of a weighted point set on the sphere into clusters.

    Quick shift (Vedaldi & Soatto 2008) on the mass within a geodesic radius ``r``:

    1. Local mass ``m_i = Σ_{d(x_i, x_j) <= r} w_j`` (a flat-kernel density estimate).
    2. Every point links to its nearest neighbour within ``r`` that ranks higher (larger
       ``m``; ties broken by the lexicographic order of the coordinates). Points with no
       higher neighbour within ``r`` are the roots (local maxima of ``m`` at scale ``r``);
       following the links partitions the points into trees, one per root.
    3. A cluster is a tree: centre = normalised weighted mean of its points, mass = sum of
       their weights as a fraction of the total. Clusters lighter than ``min_mass`` are not
       reported (a diffuse background splits into many light trees).

    Deterministic (no random numbers, no iteration to convergence) and independent of the
    order of the points up to exact ties of ``m`` and round-off. Two roots are always more
    than ``r`` apart (the lighter would link to the heavier), so clusters closer than ``r``
    are merged; a cluster wider than ``r`` stays whole as long as ``m`` increases towards its
    centre. Cost ``O(n k)`` time and memory, ``k`` = number of neighbours within ``r``.

    Parameters
    ----------
    x : (n, d) array
        Points; non-zero, normalised here (flat-cell centroids may lie slightly inside).
    w : (n,) array or None
        Non-negative masses with positive total; ``None`` = equal weights.
    radius : float
        Geodesic radius ``r`` in radians, ``0 < r < π``.
    min_mass : float
        Smallest reported cluster mass, as a fraction of the total, in ``[0, 1)``.

    Returns
    -------
    Clusters
    """
    x = check_points(x, "x", unit=False)
    n, d = x.shape
    w = check_weights(w, n, "w")
    if not (np.isfinite(radius) and 0 < radius < np.pi):
        raise ValueError(f"radius must be in (0, π) radians, got {radius}")
    if not (np.isfinite(min_mass) and 0 <= min_mass < 1):
        raise ValueError(f"min_mass must be in [0, 1), got {min_mass}")
    labels = np.full(n, -1, dtype=np.int64)
    keep = np.flatnonzero(w > 0)
    xk, wk = x[keep], w[keep]
    nk = keep.size
    r = _chord(radius)

    # 1. local mass from all pairs within r
    pairs = cKDTree(xk).query_pairs(r, output_type="ndarray")
    i, j = pairs[:, 0], pairs[:, 1]
    local = (
        wk
        + np.bincount(i, weights=wk[j], minlength=nk)
        + np.bincount(j, weights=wk[i], minlength=nk)
    )

    # 2.-3. trees of links to the nearest higher-ranked neighbour
    root = _ascend(xk, local, i, j, nearest=True)
    centres, masses, labels[keep] = _gather(xk, wk, root, min_mass)
    return Clusters(centres=centres, masses=masses, labels=labels)


def _ascend(x, height, i, j, *, nearest: bool) -> np.ndarray:
    """Root (local maximum) reached from every point by uphill links on a graph.

    ``x`` (n, d) unit vectors, ``height`` (n,) the function climbed, ``(i[e], j[e])`` the
    undirected edges. Rank 0 is the highest point (ties: lexicographic coordinates). Every
    point links to a neighbour of lower rank: the nearest one (``nearest``, quick shift) or
    the lowest-ranked one (discrete steepest ascent); roots are the local maxima. Returns
    the index of the root of each point.
    """
    n, d = x.shape
    order = np.lexsort(tuple(x[:, c] for c in range(d - 1, -1, -1)) + (-height,))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    child = np.where(rank[i] > rank[j], i, j)
    cand = np.where(rank[i] > rank[j], j, i)
    if nearest:
        dist = np.linalg.norm(x[i] - x[j], axis=1)
        s = np.lexsort((rank[cand], dist, child))
    else:
        s = np.lexsort((rank[cand], child))
    child, cand = child[s], cand[s]
    first = np.ones(child.size, dtype=bool)
    first[1:] = child[1:] != child[:-1]
    parent = np.arange(n)
    parent[child[first]] = cand[first]
    while True:  # pointer jumping to the roots
        grand = parent[parent]
        if np.array_equal(grand, parent):
            return parent
        parent = grand


def _gather(x, w, root, min_mass: float):
    """``(centres, masses, labels)`` of :class:`Clusters` from the root of every point:
    a cluster is the set of points with one root; labels ``-1`` for clusters lighter than
    ``min_mass`` (``w``: fractions of the total)."""
    d = x.shape[1]
    roots, group = np.unique(root, return_inverse=True)
    ngroups = roots.size
    masses = np.bincount(group, weights=w, minlength=ngroups)
    sums = np.zeros((ngroups, d))
    np.add.at(sums, group, w[:, None] * x)
    norms = np.linalg.norm(sums, axis=1)
    heavy = np.flatnonzero(masses >= min_mass)
    centres = np.empty((heavy.size, d))
    for c, g in enumerate(heavy):
        if norms[g] > 1e-12 * masses[g]:
            centres[c] = sums[g] / norms[g]
        else:  # members spread symmetrically about the origin: use the root
            centres[c] = x[roots[g]]
    hm = masses[heavy]
    out = np.lexsort(tuple(centres[:, c] for c in range(d - 1, -1, -1)) + (-hm,))
    relabel = np.full(ngroups, -1, dtype=np.int64)
    relabel[heavy[out]] = np.arange(out.size)
    return centres[out], hm[out], relabel[group]


def density_clusters(
    centroids,
    masses,
    areas,
    cells=None,
    neighbours: int | None = None,
    min_mass: float = 1e-3,
    light: float = 0.0,
) -> Clusters:
    r"""Modes of a density on a mesh and the mass of their basins of attraction.

    The density of cell ``j`` is ``ρ_j = m_j / A_j`` (cell mass over cell area). Two cells are
    neighbours when they share a vertex (``cells`` given) or when either is among the
    ``neighbours`` nearest centroids of the other (no connectivity given).

    1. Modes: the local maxima of ``ρ`` over the adjacency (ties broken by the lexicographic
       order of the centroids). Linking every cell to its highest neighbour, when that is
       higher than itself (discrete steepest ascent), gives every cell a provisional mode.
    2. Basins: the basin of a mode is the set of points whose gradient flow
       ``ẏ = ∇ρ / |∇ρ|`` ends there. From every cell centroid ``y`` a path
       ``y ← (y + h_c g_c/|g_c|) / |…|`` is followed, where ``c`` is the cell with the
       nearest centroid, ``h_c = A_c^{1/(d-1)}`` its size and ``g_c`` the least-squares
       tangential gradient of ``ρ`` over its neighbours, until it reaches a cell within two
       links of a mode (which it then joins; provisional mode of that cell). A cell of zero
       gradient, or a path not done after ``4π / min h`` steps, keeps the provisional mode
       of the cell where it stands. (The discrete steepest ascent alone misplaces the basin
       boundaries by a distance that does not shrink with ``h``: its step directions are
       off the gradient by up to the angle between neighbours.)
    3. A cluster is a basin: centre ``c = Σ_{j∈B} m_j y_j / |Σ_{j∈B} m_j y_j|``, mass
       ``Σ_{j∈B} m_j / Σ_j m_j``. Basins lighter than ``min_mass`` are not reported (noise in
       a flat background makes many light modes).

    For a smooth density with non-degenerate maxima on a quasi-uniform mesh of size ``h``
    the modes are found to ``O(h)`` and the Euler paths move the basin boundaries by
    ``O(h)``, so centres and masses converge at first order under refinement (measured in
    ``tests/test_clusters.py``). Cost ``O(n^{3/2} log n)`` on a surface (``n`` paths of
    ``O(n^{1/2})`` steps). Cells of zero mass belong to no cluster (label ``-1``), as in
    :func:`find_clusters`, the particle counterpart with the same :class:`Clusters` output
    (particles have no cell density).

    Parameters
    ----------
    centroids : (n, d) array
        Cell centroids; non-zero, normalised here (flat-cell centroids may lie inside).
    masses : (n,) array
        Cell masses ``∫_cell ρ`` (e.g. ``density * areas`` of ``result.npz``), non-negative
        with positive total; any normalisation.
    areas : (n,) array
        Positive cell areas (lengths on ``S^1``), the same order as ``centroids``.
    cells : (n, nv) int array or None
        Vertex indices of each cell (``cells`` of ``result.npz``, same cell order). Preferred.
    neighbours : int or None
        Without ``cells``: number ``k >= 1`` of nearest centroids taken as neighbours;
        ``None`` = 2 on ``S^1``, 12 otherwise (the vertex-sharing ring of a regular
        triangulation). Ignored with ``cells``.
    min_mass : float
        Smallest reported cluster mass, as a fraction of the total, in ``[0, 1)``.
    light : float
        The lightest cells, together at most this fraction of the total mass, in ``[0, 1)``,
        are treated as empty (label ``-1``). A clustered density leaves a tail of tiny
        positive masses over the whole sphere, thousands of modes whose gradient paths cost
        most of the time; leaving out ``light = 1e-5`` of it makes the search on a clustered
        level-4 density 20–40 times faster and moves a centre by at most about ``light``
        divided by its cluster's mass.

    Returns
    -------
    Clusters
    """
    x = check_points(centroids, "centroids", unit=False)
    n, d = x.shape
    w = check_weights(masses, n, "masses")
    areas = np.asarray(areas, dtype=float)
    if areas.shape != (n,) or not np.all(np.isfinite(areas)) or np.any(areas <= 0):
        raise ValueError(f"areas must be a positive finite array of shape ({n},), one per cell")
    if not (np.isfinite(min_mass) and 0 <= min_mass < 1):
        raise ValueError(f"min_mass must be in [0, 1), got {min_mass}")
    if not (np.isfinite(light) and 0 <= light < 1):
        raise ValueError(f"light must be in [0, 1), got {light}")
    if light > 0:
        order = np.argsort(w, kind="stable")
        w = w.copy()
        w[order[np.cumsum(w[order]) <= light * w.sum()]] = 0.0
    if cells is not None:
        i, j = _vertex_sharing_pairs(cells, n)
    else:
        if neighbours is None:
            k = 2 if d == 2 else 12
        elif int(neighbours) == neighbours and neighbours >= 1:
            k = int(neighbours)
        else:
            raise ValueError(f"neighbours must be a positive integer, got {neighbours}")
        k = min(k, n - 1)
        pairs = np.zeros((0, 2), dtype=np.int64)
        if k > 0:
            _, nb = cKDTree(x).query(x, k=k + 1)
            pairs = np.column_stack((np.repeat(np.arange(n), k), nb[:, 1:].ravel()))
        i, j = np.unique(np.sort(pairs, axis=1), axis=0).T
    keep = w > 0
    both = keep[i] & keep[j]
    index = np.cumsum(keep) - 1
    i, j = index[i[both]], index[j[both]]
    xk, wk, ak = x[keep], w[keep], areas[keep]
    rho = wk / ak
    root = _ascend(xk, rho, i, j, nearest=False)
    root = _gradient_paths(xk, rho, ak ** (1.0 / (d - 1)), i, j, root)
    labels = np.full(n, -1, dtype=np.int64)
    centres, cm, labels[keep] = _gather(xk, wk, root, min_mass)
    return Clusters(centres=centres, masses=cm, labels=labels)


def _vertex_sharing_pairs(cells, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(i, j)``, ``i < j``, of cells sharing at least one vertex (remembered for the
    last few meshes: a run asks for the same mesh's pairs at every saved time)."""
    cells = np.asarray(cells)
    if cells.ndim == 2 and np.issubdtype(cells.dtype, np.integer):
        i, j = _pairs_of(cells.tobytes(), cells.shape, cells.dtype.str, n)
        return i.copy(), j.copy()
    return _pairs_of_array(cells, n)


@lru_cache(maxsize=8)
def _pairs_of(data: bytes, shape: tuple, dtype: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    return _pairs_of_array(np.frombuffer(data, dtype=dtype).reshape(shape), n)


def _pairs_of_array(cells: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    if (
        cells.ndim != 2
        or cells.shape[0] != n
        or not np.issubdtype(cells.dtype, np.integer)
        or cells.size == 0
        or cells.min() < 0
    ):
        raise ValueError(
            f"cells must be an (n, nv) array of non-negative vertex indices with n = {n} "
            f"(one row per cell, as 'cells' in result.npz), got shape {cells.shape}, "
            f"dtype {cells.dtype}"
        )
    nv = cells.shape[1]
    incidence = csr_matrix(
        (np.ones(cells.size), (np.repeat(np.arange(n), nv), cells.ravel())),
        shape=(n, int(cells.max()) + 1),
    )
    adj = triu(incidence @ incidence.T, k=1).tocoo()
    return adj.row.astype(np.int64), adj.col.astype(np.int64)
