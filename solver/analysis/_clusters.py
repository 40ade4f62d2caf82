r"""Cluster diagnostics for weighted points on the sphere ``S^{d-1}``.

The points are mesh cell centroids with their masses (the PDE) or particles with weights
``1/n``. Distances: geodesic (``arccos(x·y)``, radians) for grouping mass in
:func:`find_clusters`; Euclidean (chordal, ``|x - c|``) in the δ-cluster state of the paper,
:func:`delta_cluster_state`.

- :func:`find_clusters`: quick shift on the mass within geodesic radius ``r`` (each point
  links to its nearest heavier neighbour within ``r``; a cluster is a tree of links); centres
  are normalised weighted means, masses fractions of the total.
- :func:`delta_cluster_state`: ``max_i min_c |x_i - c| < δ``.
- :func:`cluster_times`: first time a state holds, first later time it fails.
- :func:`cluster_direction`, :func:`direction_drift`: ``u = Σ w_i x_i / |Σ w_i x_i|`` and
  ``|u - v|``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from ._wasserstein import check_points, check_weights

__all__ = [
    "Clusters",
    "find_clusters",
    "delta_cluster_state",
    "cluster_times",
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

    # 2. link to the nearest higher-ranked neighbour (rank 0 = heaviest)
    order = np.lexsort(tuple(xk[:, c] for c in range(d - 1, -1, -1)) + (-local,))
    rank = np.empty(nk, dtype=np.int64)
    rank[order] = np.arange(nk)
    child = np.where(rank[i] > rank[j], i, j)
    cand = np.where(rank[i] > rank[j], j, i)
    dist = np.linalg.norm(xk[i] - xk[j], axis=1)
    s = np.lexsort((rank[cand], dist, child))
    child, cand = child[s], cand[s]
    first = np.ones(child.size, dtype=bool)
    first[1:] = child[1:] != child[:-1]
    parent = np.arange(nk)
    parent[child[first]] = cand[first]
    while True:  # pointer jumping to the roots
        grand = parent[parent]
        if np.array_equal(grand, parent):
            break
        parent = grand
    roots, group = np.unique(parent, return_inverse=True)
    ngroups = roots.size

    # 3. centres and masses
    masses = np.bincount(group, weights=wk, minlength=ngroups)
    sums = np.zeros((ngroups, d))
    np.add.at(sums, group, wk[:, None] * xk)
    norms = np.linalg.norm(sums, axis=1)
    heavy = np.flatnonzero(masses >= min_mass)
    centres = np.empty((heavy.size, d))
    for c, g in enumerate(heavy):
        if norms[g] > 1e-12 * masses[g]:
            centres[c] = sums[g] / norms[g]
        else:  # members spread symmetrically about the origin: use the root
            centres[c] = xk[roots[g]]
    hm = masses[heavy]
    out = np.lexsort(tuple(centres[:, c] for c in range(d - 1, -1, -1)) + (-hm,))
    relabel = np.full(ngroups, -1, dtype=np.int64)
    relabel[heavy[out]] = np.arange(out.size)
    labels[keep] = relabel[group]
    return Clusters(centres=centres[out], masses=hm[out], labels=labels)


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
    dist, _ = cKDTree(centres).query(x, k=1)
    return bool(np.max(dist) < delta)


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
