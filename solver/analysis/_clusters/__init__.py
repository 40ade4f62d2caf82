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
- :func:`atoms_distance`: ``W_p(μ, P(C))``, the Wasserstein distance from ``μ`` to the
  measures on the atoms ``C``: ``(Σ_j w_j min_c |y_j - c|^p / Σ_j w_j)^{1/p}``; ``< δ`` is a
  δ-cluster state continuous in the data (``p = ∞``: the particle criterion).
- :func:`cluster_times`: first time a state holds, first later time it fails.
- :func:`crossing_times`, :func:`measure_cluster_times`: the same for ``f <= level`` (or
  ``f < level``), with the crossings interpolated linearly between the samples.
- :func:`cluster_direction`, :func:`direction_drift`: ``u = Σ w_i x_i / |Σ w_i x_i|`` and
  ``|u - v|``.

By concept: :mod:`._modes` (clusters of points and of densities: quick shift, modes, basins),
:mod:`._walks` (the gradient paths of the basins, compiled with numba when it is there),
:mod:`._state` (the δ-cluster state, its reach, the snap of a collapsed cluster, directions)
and :mod:`._times` (entry and exit times along a time series).
"""

from ._modes import Clusters, density_clusters, find_clusters
from ._state import (
    atoms_distance,
    centre_distances,
    cluster_direction,
    cluster_mass_outside,
    cluster_reach,
    delta_cluster_state,
    direction_drift,
    mass_reach,
    point_mass_radius,
    reach_candidates,
    snap_to_clusters,
)
from ._times import cluster_times, crossing_times, measure_cluster_times

__all__ = [
    "Clusters",
    "find_clusters",
    "density_clusters",
    "delta_cluster_state",
    "cluster_mass_outside",
    "atoms_distance",
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
