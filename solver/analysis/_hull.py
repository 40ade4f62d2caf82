r"""The floor that cell averages put under a cluster's spread, and the δ-state without it.

Cell masses read at the centroids ``ŷ_K`` projected to the sphere hold a collapsed cluster
at the Euclidean mean ``x̄ = Σ m_K ŷ_K / Σ m_K``, which lies in the convex hull ``H`` of the
``ŷ_K``. Along a direction ``u`` the hull reaches ``ρ(u) = max{r : r u ∈ H} <= 1`` (its
radial function: ``1`` at a centroid, ``cos`` of about half a cell at the centre of a hull
facet), so any measure on the centroids with mean along ``u`` has spread
``s² = 1 − |x̄|² >= 1 − ρ(u)² = s_min(u)²``, ``O(h)``: a point mass is read at least ``s_min``
wide, however exactly the scheme moves it.

With unit atoms ``c`` the Wasserstein distance to the measures on the atoms
(:func:`atoms_distance`, ``p = 2``) is, per group ``g`` of the cells nearest to the atom
``c_g`` (mass ``M_g``, mean ``x̄_g = |x̄_g| u_g``),

.. math::

    W_2^2 = \sum_g M_g\, |ŷ - c_g|^2 = \sum_g 2 M_g \big(1 - |x̄_g| ⟨u_g, c_g⟩\big) / \sum_g M_g ,

so it reads a point mass at angle ``θ`` from its atom at ``(r² + s_min²)^{1/2}``
(``r = 2 sin(θ/2)``) and a drifting cluster leaves the ball of radius ``δ`` about
``s_min² / (2 δ v)`` early (``v`` its speed): ``O(h²)``, but with a prefactor that depends on
where the exit falls on the mesh, so it has no Richardson limit (measured on the phase
diagram's S² case, ε = 0.0464: 0.31 of exit time at icosphere level 5, docs/experiments.md).
:func:`hull_w2` removes that floor: ``|x̄_g|`` is replaced by ``min(1, |x̄_g| / ρ(u_g))``,
the mean the group would have if the cells held it as tightly as a point mass can be held.
A point mass then reads ``r`` on any mesh; a spread group changes by ``O(h²)`` of its spread
(``1 − ρ = O(h²)``); and a measure on the sphere itself (particles, ``ρ ≡ 1``) is unchanged.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import ConvexHull, cKDTree

__all__ = ["CentroidHull", "atom_moments", "hull_w2", "nearest_atoms"]


class CentroidHull:
    r"""The convex hull of unit vectors (projected cell centroids, ``(n, d)``, ``d = 2, 3``)
    and its radial function :meth:`radius`, ``ρ(u) = max{r : r u ∈ H}``.

    Exact: the ray from the origin along ``u`` leaves ``H`` through the facet whose radial
    projection (a spherical simplex) contains ``u``, and there ``ρ(u) = b_F / ⟨n_F, u⟩``
    (``n_F`` the facet's unit normal, ``b_F`` its distance to the origin); every other facet
    with ``⟨n_F, u⟩ > 0`` gives a larger value. That facet's projection is within the largest
    vertex distance ``R`` of its normalised centroid (balls of radius under ``π/2`` are
    spherically convex), so only the facets whose normalised centroids lie within ``R`` of ``u``
    are tried (a k-d tree query)."""

    def __init__(self, points: np.ndarray):
        y = np.asarray(points, dtype=float)
        if y.ndim != 2 or y.shape[1] not in (2, 3) or len(y) < y.shape[1] + 1:
            raise ValueError(f"CentroidHull needs (n, 2) or (n, 3) points, n > d, got shape "
                             f"{y.shape}")  # fmt: skip
        if not np.allclose(np.linalg.norm(y, axis=1), 1.0, atol=1e-12):
            raise ValueError("CentroidHull needs unit vectors: project the centroids first")
        hull = ConvexHull(y)
        self.normals = hull.equations[:, :-1]
        self.offsets = -hull.equations[:, -1]  # n·x <= b inside
        if not np.all(self.offsets > 0):
            raise ValueError("CentroidHull: the points do not surround the origin (a whole "
                             "sphere's centroids are needed)")  # fmt: skip
        verts = y[hull.simplices]  # (facets, d, d)
        mid = verts.mean(axis=1)
        mid /= np.linalg.norm(mid, axis=1)[:, None]
        self.reach = float(np.max(np.linalg.norm(verts - mid[:, None, :], axis=2))) * (1 + 1e-9)
        self.tree = cKDTree(mid)

    def radius(self, u: np.ndarray) -> np.ndarray:
        """``ρ(u)`` along the directions ``u`` (``(k, d)`` or ``(d,)``; normalised here, none
        may be zero)."""
        u = np.atleast_2d(np.asarray(u, dtype=float))
        norm = np.linalg.norm(u, axis=1)
        if u.shape[1] != self.normals.shape[1] or not np.all(norm > 0):
            raise ValueError(f"CentroidHull.radius needs non-zero directions in "
                             f"R^{self.normals.shape[1]}, got shape {u.shape}")  # fmt: skip
        u = u / norm[:, None]
        out = np.empty(len(u))
        for i, (ui, near) in enumerate(zip(u, self.tree.query_ball_point(u, self.reach),
                                           strict=True)):  # fmt: skip
            near = np.asarray(near, dtype=np.int64)
            cos = self.normals[near] @ ui
            ok = cos > 0
            out[i] = np.min(self.offsets[near[ok]] / cos[ok])
        return out


def nearest_atoms(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """The index of the nearest of the ``centres`` (chordal) for every point (a k-d tree:
    no ``points × centres`` array; ties to either)."""
    y = np.asarray(points, dtype=float)
    if len(y) == 0:
        return np.zeros(0, dtype=np.int64)
    return cKDTree(np.asarray(centres, dtype=float)).query(y)[1].astype(np.int64)


def atom_moments(points: np.ndarray, weights: np.ndarray, centres: np.ndarray,
                 groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Per atom ``c_g``: the mass ``M_g`` and first moment ``X_g = Σ w_j y_j`` of the points
    nearest to it (chordal, :func:`nearest_atoms`; ``groups``: those indices where the caller
    has them), ``((k,), (k, d))`` — sums, so that the ranks' parts add up."""
    y, w = np.asarray(points, dtype=float), np.asarray(weights, dtype=float)
    c = np.asarray(centres, dtype=float)
    k, d = c.shape
    g = nearest_atoms(y, c) if groups is None else groups
    mass = np.bincount(g, weights=w, minlength=k)
    moment = np.stack([np.bincount(g, weights=w * y[:, i], minlength=k) for i in range(d)],
                      axis=1)  # fmt: skip
    return mass, moment


def hull_w2(mass: np.ndarray, moment: np.ndarray, centres: np.ndarray,
            hull: CentroidHull | None) -> float:  # fmt: skip
    r"""The δ-state's ``W_2`` to the unit atoms ``c_g`` from each group's mass ``M_g`` and first
    moment ``X_g`` (:func:`atom_moments`, summed over the ranks), with the hull's floor removed:

    .. math::

        W_{2,H}^2 = \sum_g 2 M_g \big(1 - \min(1, |x̄_g| / ρ(u_g))\, ⟨u_g, c_g⟩\big)
                    \Big/ \sum_g M_g , \qquad x̄_g = X_g / M_g = |x̄_g| u_g .

    ``hull=None`` (``ρ ≡ 1``): exactly :func:`atoms_distance` with ``p = 2`` of unit points."""
    mass, moment = np.asarray(mass, dtype=float), np.asarray(moment, dtype=float)
    c = np.asarray(centres, dtype=float)
    total = mass.sum()
    if not total > 0:
        raise ValueError("hull_w2 needs a positive total mass")
    held = mass > 0
    m, x, c = mass[held], moment[held] / mass[held, None], c[held]
    r = np.linalg.norm(x, axis=1)
    u = x / np.where(r > 0, r, 1.0)[:, None]
    q = r.copy()
    if hull is not None:  # a group whose mean is 0 has no direction and no floor to remove
        pos = r > 0
        q[pos] = np.minimum(1.0, r[pos] / hull.radius(u[pos]))
    cos = np.sum(u * c, axis=1)
    return float(np.sqrt(max(0.0, np.sum(2 * m * (1 - q * cos)) / total)))
