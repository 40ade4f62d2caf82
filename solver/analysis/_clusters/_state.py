r"""The δ-cluster state of a configuration around given centres (particles:
:func:`delta_cluster_state`; measures: :func:`cluster_mass_outside` and its reach
:func:`cluster_reach`), the snap of a collapsed cluster onto its centre at the resolution of
a mesh (:func:`point_mass_radius`, :func:`snap_to_clusters`) and cluster directions."""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from .._wasserstein import check_points, check_weights
from ._modes import _vertex_sharing_pairs


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


def atoms_distance(points, weights, centres, p: float = 2.0) -> float | np.ndarray:
    r"""Wasserstein distance from a measure to the measures supported on the atoms ``C``.

    For ``μ = Σ_j w_j δ_{y_j}`` (normalised to mass 1) and the set ``P(C)`` of probability
    measures on the finite set ``C`` (the base clusters' centres), with the chordal cost
    ``|y - c|``,

    .. math::

        W_p(μ, P(C)) = \min_{σ ∈ P(C)} W_p(μ, σ)
                     = \Big(\sum_j w_j \min_{c∈C} |y_j - c|^p \Big/ \sum_j w_j\Big)^{1/p} :

    every coupling of ``μ`` with a measure on ``C`` moves ``y`` to some ``c``, at a cost of at
    least ``min_c |y - c|^p``, and the nearest-atom map achieves it. ``p = ∞``: the largest
    ``min_c |y_j - c|`` over the atoms of positive weight, so ``W_∞(μ, P(C)) < δ`` is the paper's
    particle δ-cluster state :func:`delta_cluster_state`; for ``p < ∞``, ``W_p(μ, P(C)) < δ`` is
    its measure-level version, continuous in the data: a distance to a set, it moves by at most
    ``W_p(μ, μ')`` when ``μ`` becomes ``μ'``, and by at most ``η`` when every atom moves by at
    most ``η``. A single cluster collapsed to a point ``x`` gives ``|x - c|``, the distance a
    point mass has drifted; with ``p = 2`` a cluster whose atoms are all nearest to one ``c``
    gives exactly ``(|x̄ - c|^2 + s^2)^{1/2}``, ``x̄`` its (Euclidean) mean and ``s^2`` its
    variance ``Σ w_j |y_j - x̄|^2 / Σ w_j``, so cell averages that hold a collapsed cluster
    over a few cells of spread ``s_h`` read it ``s_h^2 / (2δ)`` farther than its mean at ``δ``.

    Parameters
    ----------
    points : (n, d) or (nt, n, d) array
        Atoms (particles, or cell centroids: pass them normalised to the unit sphere).
    weights : None, (n,) or (nt, n) array
        Non-negative, positive total per time; ``None`` = equal weights.
    centres : (k, d) array
        The atoms ``C``.
    p : float
        ``1 <= p <= ∞`` (``numpy.inf``).

    Returns
    -------
    float, or (nt,) array when ``points`` or ``weights`` has a time axis.
    """
    y, w, centres = _atoms(points, weights, centres)
    if not (p >= 1):  # also nan
        raise ValueError(f"p must be >= 1 (or numpy.inf), got {p}")
    dist = centre_distances(y, centres)
    dist, w = np.broadcast_arrays(dist, w)
    if np.isinf(p):
        out = np.max(np.where(w > 0, dist, 0.0), axis=-1)
    else:
        out = (np.sum(w * dist**p, axis=-1) / np.sum(w, axis=-1)) ** (1.0 / p)
    return float(out) if np.ndim(out) == 0 else out


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
    steps = snap_steps(y, w, lab, radius, k, anchors)
    try:
        sums = next(steps)
        while True:
            sums = steps.send(reduce(sums) if reduce is not None else sums)
    except StopIteration as done:
        return done.value


def snap_steps(y: np.ndarray, w: np.ndarray, lab: np.ndarray, radius: float, k: int, anchors):
    """:func:`snap_to_clusters` (checked arguments) as a generator: it yields each ``(k, d)``
    array of moment sums that the ranks must add up, is sent the sums over the ranks, and
    returns the snapped points. Every rank yields the same number of times (two, or none for
    ``k = 0``), so several snaps (one per flow) can share each reduction."""

    def centres(s):
        norm = np.linalg.norm(s, axis=1)[:, None]
        return np.divide(s, norm, out=np.zeros_like(s), where=norm > 0)

    def anchored(c):  # a centre of no mass anchors nothing
        a = anchors(c) if anchors is not None else c
        return np.where(np.linalg.norm(c, axis=1)[:, None] > 0, a, np.inf)

    out = y.copy()
    if k == 0:
        return out
    reach = radius * (1 + 1e-9)  # R is itself a centroid distance: keep its own pairs
    c = centres((yield _cluster_moments(y, w, lab, k)))
    a = anchored(c)
    free = np.flatnonzero(lab < 0)
    dist = np.linalg.norm(y[free, None, :] - a[None, :, :], axis=2)
    near = np.argmin(dist, axis=1) if free.size else np.zeros(0, dtype=np.int64)
    join = dist[np.arange(free.size), near] <= reach
    lab = lab.copy()
    lab[free[join]] = near[join]
    c = centres((yield _cluster_moments(y, w, lab, k)))  # every rank yields here
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
                     for a in range(y.shape[1])], axis=1).astype(float)  # fmt: skip (no cell: int)


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
