r"""Cluster diagnostics for weighted points on the sphere ``S^{d-1}``.

The points are mesh cell centroids with their masses (the PDE) or particles with weights
``1/n``. Distances: geodesic (``arccos(x·y)``, radians) for grouping mass in
:func:`find_clusters`; Euclidean (chordal, ``|x - c|``; ``= 2 sin(θ/2)`` for unit vectors at
angle ``θ``) in the δ-cluster state of the paper, :func:`delta_cluster_state`, and in its
measure-level version :func:`cluster_mass_outside`.

- :func:`find_clusters`: quick shift on the mass within geodesic radius ``r`` (each point
  links to its nearest heavier neighbour within ``r``; a cluster is a tree of links); centres
  are normalised weighted means, masses fractions of the total. For particles.
- :func:`density_clusters`: modes of a density on a mesh (local maxima of the cell density
  over the cell adjacency) and their basins (gradient paths of a least-squares cell
  gradient); same output. For cell averages.
- :func:`delta_cluster_state`: ``max_i min_c |x_i - c| < δ`` (particles).
- :func:`cluster_mass_outside`: ``μ({y: min_c |y - c| >= δ}) / μ(S)``; the measure-level
  δ-cluster state is ``mass outside <= tol`` (a density or particles alike; for ``n`` equal
  weights and ``tol < 1/n`` it is exactly :func:`delta_cluster_state`).
- :func:`point_mass_radius`, :func:`snap_to_clusters`: the reach of a point mass on a mesh
  (cells sharing a vertex) and the cell masses within it moved onto their cluster's centre,
  so that the state of a collapsed cluster is read at its centre, not at its cells.
- :func:`cluster_times`: first time a state holds, first later time it fails.
- :func:`crossing_times`, :func:`measure_cluster_times`: the same for ``f <= level`` (or
  ``f < level``), with the crossings interpolated linearly between the samples.
- :func:`cluster_direction`, :func:`direction_drift`: ``u = Σ w_i x_i / |Σ w_i x_i|`` and
  ``|u - v|``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.sparse import csr_matrix, triu
from scipy.spatial import cKDTree

from ._wasserstein import check_points, check_weights

try:  # numba is optional: without it the gradient paths query a k-d tree step by step
    import numba as _nb
except ImportError:  # pragma: no cover - depends on the environment
    _nb = None

__all__ = [
    "Clusters",
    "find_clusters",
    "density_clusters",
    "delta_cluster_state",
    "cluster_mass_outside",
    "centre_distances",
    "cluster_reach",
    "mass_reach",
    "reach_candidates",
    "point_mass_radius",
    "snap_to_clusters",
    "cluster_times",
    "crossing_times",
    "measure_cluster_times",
    "cluster_direction",
    "direction_drift",
]


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


def _gradient_paths(x, rho, size, i, j, root) -> np.ndarray:
    """Mode reached by the gradient path from every centroid (step 2 of
    :func:`density_clusters`); ``root`` is the provisional mode of every cell."""
    n, d = x.shape
    if root.size == 0 or np.all(root == root[0]):  # one mode: every path ends there
        return root.copy()
    a, b = np.concatenate((i, j)), np.concatenate((j, i))
    # least-squares tangential gradient: min_g Σ_b (ρ_b - ρ_a - g·t_ab)², t_ab the tangential
    # part of y_b - y_a; the normal direction is pinned by adding y_a y_aᵀ to the matrix
    t = x[b] - x[a]
    t -= np.sum(t * x[a], axis=1)[:, None] * x[a]
    lhs = x[:, :, None] * x[:, None, :]
    np.add.at(lhs, a, t[:, :, None] * t[:, None, :])
    rhs = np.zeros((n, d))
    np.add.at(rhs, a, t * (rho[b] - rho[a])[:, None])
    # a cell with fewer than d - 1 positive neighbours (an isolated speck of the tail) leaves
    # the matrix singular: the least-squares solution of least norm (0 with no neighbour)
    g = (np.linalg.pinv(lhs, hermitian=True) @ rhs[..., None])[..., 0]
    g -= np.sum(g * x, axis=1)[:, None] * x
    gnorm = np.linalg.norm(g, axis=1)
    # cells within two links of a mode: paths end there
    modes = np.flatnonzero(root == np.arange(n))
    adjacency = csr_matrix((np.ones(a.size), (a, b)), shape=(n, n))
    near = np.zeros(n)
    near[modes] = 1.0
    for _ in range(2):
        near += adjacency @ near
    done = (near > 0) | (gnorm == 0)
    tree = cKDTree(x)
    active = np.flatnonzero(~done)
    steps = int(np.ceil(4 * np.pi / size.min())) if active.size else 0
    if _nb is not None and active.size:  # the same paths, compiled (see _nb_gradient_walk)
        k = min(n, int(np.diff(adjacency.indptr).max()) + 2)
        far_d, far_i = tree.query(x, k=k)
        return _nb_gradient_walk(x, g, gnorm, size, done, root, active, adjacency.indptr,
                                 adjacency.indices, far_d.reshape(n, k), far_i.reshape(n, k),
                                 steps)  # fmt: skip
    out = root.copy()
    y = x.copy()
    cell = np.arange(n)
    for _ in range(steps):
        c = cell[active]
        step = y[active] + (size[c] / gnorm[c])[:, None] * g[c]
        y[active] = step / np.linalg.norm(step, axis=1)[:, None]
        _, cell[active] = tree.query(y[active])
        c = cell[active]
        out[active] = root[c]
        active = active[~done[c]]
        if active.size == 0:
            break
    return out


if _nb is not None:

    @_nb.njit(cache=True)
    def _nb_gradient_walk(x, g, gnorm, size, done, root, active, indptr, indices, knn_d, knn_i,
                          steps):  # fmt: skip
        """The gradient paths of :func:`_gradient_paths` from the ``active`` cells, one at a
        time. The cell holding a path's point (the nearest centroid) is found by walking the
        adjacency from the previous one to a cell nearer than all its neighbours, which is
        the nearest of all when the point is within half of ``r_c`` of it, ``r_c`` the
        distance from ``x_c`` to the nearest centroid that is neither ``c`` nor a neighbour
        (from the ``k`` nearest ``knn_*``): every other centroid is then farther by the
        triangle inequality. Otherwise (rare) all centroids are searched. The same cells as
        the k-d tree's nearest-centroid queries, ties aside."""
        n, d = x.shape
        r2 = np.full(n, np.inf)  # (r_c / 2)^2
        for c in range(n):
            for t in range(knn_i.shape[1]):
                j = knn_i[c, t]
                if j == c:
                    continue
                nb = False
                for q in range(indptr[c], indptr[c + 1]):
                    if indices[q] == j:
                        nb = True
                        break
                if not nb:
                    r2[c] = 0.25 * knn_d[c, t] * knn_d[c, t]
                    break
        out = root.copy()
        y = np.empty(d)
        for p in active:
            c = p
            for a in range(d):
                y[a] = x[p, a]
            for _ in range(steps):
                s, norm = size[c] / gnorm[c], 0.0
                for a in range(d):
                    y[a] += s * g[c, a]
                    norm += y[a] * y[a]
                norm = math.sqrt(norm)
                for a in range(d):
                    y[a] /= norm
                best = 0.0
                for a in range(d):
                    best += (y[a] - x[c, a]) ** 2
                while True:
                    nxt = c
                    for q in range(indptr[c], indptr[c + 1]):
                        j = indices[q]
                        dj = 0.0
                        for a in range(d):
                            dj += (y[a] - x[j, a]) ** 2
                        if dj < best:
                            best, nxt = dj, j
                    if nxt == c:
                        break
                    c = nxt
                if best >= r2[c]:  # not certified: search them all
                    for j in range(n):
                        dj = 0.0
                        for a in range(d):
                            dj += (y[a] - x[j, a]) ** 2
                        if dj < best:
                            best, c = dj, j
                out[p] = root[c]
                if done[c]:
                    break
        return out


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


def delta_cluster_state(x, centres, delta: float = 0.1, w=None, mass_tol: float = 0.0) -> bool:
    r"""Whether the configuration is in the δ-cluster state around ``centres``.

    .. math::

        \max_{i:\ w_i > \text{mass\_tol}} \ \min_{c ∈ C} |x_i - c| < δ

    (Euclidean, i.e. chordal, distance; strict inequality), the definition of the paper's
    Fig. 3, where ``C`` is the final configuration of the unperturbed run. Without ``w`` every
    point counts; with ``w`` (mesh masses) points of mass at most ``mass_tol`` are ignored.
    With no point left the state holds vacuously.

    Parameters
    ----------
    x : (n, d) array
    centres : (k, d) array
    delta : float, > 0
    w : (n,) array or None
    mass_tol : float, >= 0

    Returns
    -------
    bool
    """
    x = np.asarray(x, dtype=float)
    centres = np.asarray(centres, dtype=float)
    if x.ndim != 2:
        raise ValueError(f"x must be an (n, d) array, got shape {x.shape}")
    if centres.ndim != 2 or centres.shape[1] != x.shape[1] or centres.shape[0] == 0:
        raise ValueError(
            f"centres must be a non-empty (k, {x.shape[1]}) array, got shape {centres.shape}"
        )
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(centres))):
        raise ValueError("x and centres must be finite")
    if not (np.isfinite(delta) and delta > 0):
        raise ValueError(f"delta must be positive, got {delta}")
    if w is not None:
        w = np.asarray(w, dtype=float)
        if w.shape != (x.shape[0],) or not np.all(np.isfinite(w)):
            raise ValueError(f"w must be a finite array of shape ({x.shape[0]},), got {w.shape}")
        if not (np.isfinite(mass_tol) and mass_tol >= 0):
            raise ValueError(f"mass_tol must be >= 0, got {mass_tol}")
        x = x[w > mass_tol]
    if x.shape[0] == 0:
        return True
    return bool(np.max(centre_distances(x, centres)) < delta)


def cluster_mass_outside(points, weights, centres, delta: float) -> float | np.ndarray:
    r"""Fraction of the mass farther than ``δ`` from the cluster centres.

    For the measure ``μ = Σ_j w_j δ_{y_j}`` (cell masses at centroids, or particles)

    .. math::

        m_δ(μ) = \frac{\sum_j w_j \, 1[\min_{c∈C} |y_j - c| \ge δ]}{\sum_j w_j},

    with the Euclidean (chordal) distance of :func:`delta_cluster_state`
    (``|y - c| = 2 sin(θ/2)`` for unit vectors at geodesic angle ``θ``). The measure-level
    δ-cluster state is ``m_δ(μ) <= tol``. With ``n`` equal weights ``m_δ`` is a multiple of
    ``1/n``, so for ``0 <= tol < 1/n`` the state is exactly
    ``max_j min_c |y_j - c| < δ``, the particle criterion. For cell masses it is the
    midpoint-rule value of ``μ(S \ ∪_c B_δ(c))``, which converges under mesh refinement.

    Parameters
    ----------
    points : (n, d) or (nt, n, d) array
        Atoms: particles (``positions`` of a run), or cell centroids. Used as given (pass
        unit vectors: :func:`delta_cluster_state` does not normalise either).
    weights : None, (n,) or (nt, n) array
        Non-negative, positive total per time (any normalisation, e.g. ``density * areas``);
        ``None`` = equal weights.
    centres : (k, d) array
        The base cluster centres ``C`` (e.g. the final particles of the unperturbed run, or
        :attr:`Clusters.centres`).
    delta : float, > 0
        Chordal radius ``δ``.

    Returns
    -------
    float, or (nt,) array when ``points`` or ``weights`` has a time axis.
    """
    y, w, centres = _atoms(points, weights, centres)
    if not (np.isfinite(delta) and delta > 0):
        raise ValueError(f"delta must be positive, got {delta}")
    outside = centre_distances(y, centres) >= delta
    frac = np.sum(w * outside, axis=-1) / np.sum(w, axis=-1)
    return float(frac) if np.ndim(frac) == 0 else frac


def cluster_reach(points, weights, centres, tol: float = 0.0) -> float | np.ndarray:
    r"""How far from the cluster centres all but ``tol`` of the mass lies.

    With ``D_j = min_{c∈C} |y_j - c|`` (chordal) and ``W = Σ_j w_j``,

    .. math::

        q_{tol}(μ) = \max\{D_j : \textstyle\sum_{D_i \ge D_j} w_i > tol\, W\},

    the distance of the heaviest atoms that together hold more than ``tol`` of the mass.
    Then :func:`cluster_mass_outside` ``m_δ(μ) <= tol`` exactly when ``q_tol(μ) < δ``: the
    measure-level δ-cluster state at every ``δ`` at once. With ``n`` equal weights and
    ``0 <= tol < 1/n``, ``q = max_j D_j`` (the particle criterion). Unlike ``m_δ``, which
    jumps from 0 to 1 as a collapsed cluster crosses the sphere of radius ``δ``, ``q`` follows
    the cluster's centre continuously, so the entry and exit times are found by interpolating
    ``q`` between samples (:func:`crossing_times` at level ``δ``) to the accuracy of the
    trajectory, not of the sampling.

    Parameters
    ----------
    points, weights, centres
        As for :func:`cluster_mass_outside` (a time axis allowed on points or weights).
    tol : float
        In ``[0, 1)``.

    Returns
    -------
    float, or (nt,) array when ``points`` or ``weights`` has a time axis.
    """
    y, w, centres = _atoms(points, weights, centres)
    if not (np.isfinite(tol) and 0 <= tol < 1):
        raise ValueError(f"tol must be in [0, 1), got {tol}")
    dist = centre_distances(y, centres)
    dist, w = np.broadcast_arrays(dist, w)
    q = np.array(
        [
            mass_reach(di, wi, tol)
            for di, wi in zip(
                dist.reshape(-1, dist.shape[-1]), w.reshape(-1, w.shape[-1]), strict=True
            )
        ]
    )
    return float(q[0]) if dist.ndim == 1 else q


def mass_reach(distances: np.ndarray, weights: np.ndarray, tol: float,
               total: float | None = None) -> float:  # fmt: skip
    """:func:`cluster_reach` of atoms at ``distances`` from the centres (flat, unchecked
    arrays): ``max{D_j : Σ_{D_i >= D_j} w_i > tol W}``, ``W = total`` (default: the sum of
    ``weights``). Only the farthest atoms, together just over ``tol W``, decide it: with
    ``total`` the atoms may be those of :func:`reach_candidates` of every MPI rank. It is the
    nearest of the whole's own candidates."""
    W = float(np.sum(weights)) if total is None else total
    return float(np.min(reach_candidates(distances, weights, tol, W)[0]))


def reach_candidates(distances: np.ndarray, weights: np.ndarray, tol: float,
                     total: float) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The atoms of one part of a measure (one MPI rank's cells) that can decide
    :func:`mass_reach` of the whole (total mass ``total``): the farthest ones until they
    hold more than ``tol · total``. Any atom at ``D >= q`` of the whole is among them, since
    the part's mass at ``D > q`` is at most the whole's, ``tol · total``."""
    order = np.argsort(-distances, kind="stable")
    cum = np.cumsum(weights[order])
    keep = order[: int(np.searchsorted(cum, tol * total, side="right")) + 1]
    return distances[keep], weights[keep]


def _atoms(points, weights, centres) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Checked ``(points, weights, centres)`` of :func:`cluster_mass_outside`."""
    y = np.asarray(points, dtype=float)
    centres = np.asarray(centres, dtype=float)
    if y.ndim not in (2, 3) or y.shape[-2] == 0:
        raise ValueError(f"points must be a non-empty (n, d) or (nt, n, d) array, got {y.shape}")
    n, d = y.shape[-2:]
    if centres.ndim != 2 or centres.shape[1] != d or centres.shape[0] == 0:
        raise ValueError(f"centres must be a non-empty (k, {d}) array, got shape {centres.shape}")
    if not (np.all(np.isfinite(y)) and np.all(np.isfinite(centres))):
        raise ValueError("points and centres must be finite")
    if weights is None:
        w = np.ones(n)
    else:
        w = np.asarray(weights, dtype=float)
        if w.ndim not in (1, 2) or w.shape[-1] != n or not np.all(np.isfinite(w)):
            raise ValueError(
                f"weights must be a finite (n,) or (nt, n) array with n = {n}, got {w.shape}"
            )
        if np.any(w < 0):
            raise ValueError(f"weights must be non-negative (min {w.min():.3g}); clip them")
        if not np.all(w.sum(axis=-1) > 0):
            raise ValueError("weights must have a positive total (at every time)")
    if y.ndim == 3 and w.ndim == 2 and y.shape[0] != w.shape[0]:
        raise ValueError(f"points and weights have {y.shape[0]} and {w.shape[0]} times")
    return y, w, centres


def centre_distances(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """``min_c |y - c|`` (chordal) for every point ``y`` (shape ``points.shape[:-1]``).

    Repeated centres are dropped first (the distances are the same): a collapsed particle
    cluster gives thousands of bitwise-equal centres, on which a k-d tree cannot split and
    every query visits them all (measured: 2,000 particles at T = 50 are 3 distinct points,
    and 201 × 2,000 queries took 2.1 s against 0.06 s; at n = 20,000 the phase diagram's
    particle sweep did not finish in 10 minutes)."""
    y = np.asarray(points, dtype=float)
    c = np.unique(np.asarray(centres, dtype=float).reshape(-1, y.shape[-1]), axis=0)
    dist, _ = cKDTree(c).query(y.reshape(-1, y.shape[-1]), k=1)
    return dist.reshape(y.shape[:-1])


def point_mass_radius(centroids, cells) -> float:
    r"""How far a point mass reaches on a mesh: the largest chordal distance ``|y_K − y_L|``
    between the centroids of two cells ``K``, ``L`` that share a vertex.

    A point mass held by cell averages (DG0) sits in the cell that contains it and spreads
    into that cell's vertex-sharing ring as it moves (the donor flux moves the mass one
    facet per step, and the cluster's own attraction pulls it back): the ring is the cells
    within ``R`` of that cell's centroid. Measured: a drifting point mass on the level-4
    icosphere (``R = 0.095``) holds all but 1.3 % of its mass within 0.075 of its first
    moment and all of it within 0.1; on a circle of 256 arcs it holds three cells, the
    leading one just beyond ``R`` from the first moment (docs/experiments.md, Fig 3). ``R``
    is ``O(h)``: 0.19, 0.095 and 0.048 on icosphere levels 3, 4 and 5; ``h`` (one arc) on a
    circle of equal arcs.

    Parameters
    ----------
    centroids : (n, d) array
        Cell centroids (normalised here).
    cells : (n, nv) int array
        Vertex indices of each cell (``cells`` of ``result.npz``), same order.

    Returns
    -------
    float
    """
    x = check_points(centroids, "centroids", unit=False)
    x = x / np.linalg.norm(x, axis=1)[:, None]
    i, j = _vertex_sharing_pairs(cells, len(x))
    return float(np.max(np.linalg.norm(x[i] - x[j], axis=1))) if i.size else 0.0


def snap_to_clusters(
    points, weights, labels, radius: float, *, k: int | None = None, reduce=None, anchors=None
) -> np.ndarray:
    r"""The points within ``radius`` of their cluster's centre, moved onto that centre.

    With the centre of cluster ``k`` the normalised first moment of its members,
    ``c_k = Σ_{ℓ_j = k} w_j y_j / |Σ_{ℓ_j = k} w_j y_j|``:

    1. a point of no cluster (``ℓ_j = -1``) within ``R`` of an anchor ``a_k`` joins the
       nearest one (labels come from the last mode search; a moving cluster has spilled into
       cells that were empty then), and the centres are recomputed with it;
    2. ``y'_j = c_{ℓ_j}`` if ``ℓ_j ≥ 0`` and ``|y_j − a_{ℓ_j}| ≤ R``, ``y'_j = y_j`` otherwise.

    The anchor of a centre is the centre itself (``anchors=None``: particles) or, on a mesh,
    the centroid of the cell that holds it (``anchors``): with ``R`` from
    :func:`point_mass_radius` the snapped cells are then that cell and its vertex-sharing
    ring, wherever in its cell the centre lies.

    :func:`cluster_mass_outside` of the snapped points is the measure-level δ-cluster state at
    the resolution ``R`` of the mesh (:func:`point_mass_radius`): a collapsed cluster, which
    cell averages hold as a blob of radius about ``R`` around its first moment (which the
    directional donor flux transports exactly), counts where its centre is, as the point mass
    of the continuous equation does; mass farther than ``R`` from its centre (a cluster still
    collapsing, a tail) counts where it is. ``R = 0`` (particles) moves only points that are
    exactly at their centre; as ``h → 0``, ``R = O(h) → 0`` and the state tends to the plain
    one. Before a cluster has collapsed the snap moves only mass within ``R`` of an anchor,
    which lies in the δ-ball of the centre anyway when ``R`` plus the anchor's distance to
    the centre is below ``δ``.

    Parameters
    ----------
    points : (n, d) array
        Unit vectors (cell centroids or particles).
    weights : (n,) array
        Non-negative masses.
    labels : (n,) int array
        Cluster of each point (:attr:`Clusters.labels`; ``-1``: none).
    radius : float
        ``R >= 0`` (chordal).
    k : int or None
        Number of clusters (``None``: ``max(labels) + 1``; give it when the points are one
        MPI rank's part).
    reduce : callable or None
        Applied to every array of moment sums (e.g. ``lambda a: comm.allreduce(a)`` when the
        points are spread over MPI ranks); ``None``: the points are all there is.
    anchors : callable or None
        ``(k, d)`` centres to ``(k, d)`` anchors (e.g. the nearest cell centroid of the
        whole mesh); ``None``: the centres.

    Returns
    -------
    (n, d) array
    """
    y = check_points(points, "points", unit=False)
    n, d = y.shape
    # one rank's part may hold no mass at all: the total is checked only for whole sets
    w = check_weights(weights, n, "weights") if reduce is None else np.asarray(weights, float)
    lab = np.asarray(labels)
    if lab.shape != (n,) or not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"labels must be an integer array of shape ({n},), got {lab.shape}")
    if not (np.isfinite(radius) and radius >= 0):
        raise ValueError(f"radius must be finite and >= 0, got {radius}")
    k = int(lab.max(initial=-1)) + 1 if k is None else int(k)
    reduce = reduce if reduce is not None else (lambda a: a)

    def centres(lab):
        s = reduce(_cluster_moments(y, w, lab, k))
        norm = np.linalg.norm(s, axis=1)[:, None]
        return np.divide(s, norm, out=np.zeros_like(s), where=norm > 0)

    def anchored(c):  # a centre of no mass anchors nothing
        a = anchors(c) if anchors is not None else c
        return np.where(np.linalg.norm(c, axis=1)[:, None] > 0, a, np.inf)

    out = y.copy()
    if k == 0:
        return out
    reach = radius * (1 + 1e-9)  # R is itself a centroid distance: keep its own pairs
    c = centres(lab)
    a = anchored(c)
    free = np.flatnonzero(lab < 0)
    dist = np.linalg.norm(y[free, None, :] - a[None, :, :], axis=2)
    near = np.argmin(dist, axis=1) if free.size else np.zeros(0, dtype=np.int64)
    join = dist[np.arange(free.size), near] <= reach
    lab = lab.copy()
    lab[free[join]] = near[join]
    c = centres(lab)  # collective with `reduce`: every rank calls it
    a = anchored(c)
    mine = np.maximum(lab, 0)
    near = (lab >= 0) & (np.linalg.norm(y - a[mine], axis=1) <= reach)
    out[near] = c[mine[near]]
    return out


def _cluster_moments(y: np.ndarray, w: np.ndarray, lab: np.ndarray, k: int) -> np.ndarray:
    """``s_k = Σ_{ℓ_j = k} w_j y_j`` for the clusters ``0 … k − 1``, shape ``(k, d)``
    (labels ``< 0`` are left out); sums over MPI ranks add up."""
    m = lab >= 0
    return np.stack([np.bincount(lab[m], weights=w[m] * y[m, a], minlength=k)[:k]
                     for a in range(y.shape[1])], axis=1)  # fmt: skip


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


def cluster_direction(x, w=None) -> np.ndarray:
    """Cluster direction ``u = Σ_i w_i x_i / |Σ_i w_i x_i|`` (``u_1`` for a single cluster).

    Parameters
    ----------
    x : (n, d) array
    w : (n,) array or None
        Non-negative weights with positive total; ``None`` = equal weights.

    Returns
    -------
    (d,) array
        A unit vector. ``ValueError`` when the weighted mean vanishes (no direction).
    """
    x = np.asarray(x, dtype=float)
    if x.ndim != 2 or x.shape[0] == 0 or not np.all(np.isfinite(x)):
        raise ValueError(f"x must be a finite, non-empty (n, d) array, got shape {x.shape}")
    w = check_weights(w, x.shape[0], "w")
    m = w @ x
    norm = np.linalg.norm(m)
    scale = float(w @ np.linalg.norm(x, axis=1))
    if not norm > 1e-12 * scale:
        raise ValueError("the weighted mean of x vanishes: the cluster direction is undefined")
    return m / norm


def direction_drift(u, v) -> float:
    """``|u - v|`` (Euclidean) between two cluster directions of equal shape."""
    u, v = np.asarray(u, dtype=float), np.asarray(v, dtype=float)
    if u.shape != v.shape or u.ndim != 1:
        raise ValueError(f"u and v must be 1-D of equal shape, got {u.shape} and {v.shape}")
    return float(np.linalg.norm(u - v))
