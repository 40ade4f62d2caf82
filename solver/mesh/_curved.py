"""Curved (P2) sphere meshes: second-order cells whose edge midpoints lie on the sphere.

:class:`CurvedSphereMesh` is a :class:`~solver.mesh.SphereMesh` whose cells are second-order:
3-node intervals (S^1) or 6-node triangles (S^2) whose edge-midpoint nodes are projected onto
the sphere, so the discrete surface is ``O(h^3)`` close to the sphere instead of ``O(h^2)``.
Cell measures, centroids and quadrature use the P2 map (numerical quadrature of degree
:data:`GEOMETRY_DEGREE` of ``|det J|``), and the cells keep the input order of the P1 mesh
they were built from (:attr:`keys` are the same), so results gathered in original cell order
line up with the DG0 ones. Build one with :func:`curved_sphere_mesh` or :func:`curve`.
"""

from __future__ import annotations

try:  # the PyPI DOLFINx wheel loads MPI through mpi4py: this import must come first
    import dolfinx_solver  # noqa: F401
except ImportError:  # pragma: no cover - conda / system DOLFINx
    pass

import basix
import basix.ufl
import numpy as np
from dolfinx import mesh

from ._geometry import normalize
from ._sphere import SphereMesh, check_comm, generate, partitioner

__all__ = ["CurvedSphereMesh", "curved_sphere_mesh", "curve", "p2_cells", "GEOMETRY_DEGREE"]

#: Quadrature degree of the P2 geometry: areas, centroids, mass matrices, L2 projections.
GEOMETRY_DEGREE = 10


def p2_cells(points: np.ndarray, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Second-order cells from a P1 mesh of the unit sphere: edge midpoints on the sphere.

    Returns ``(nodes, cells6)`` in DOLFINx's node order: intervals ``(v0, v1, m01)``,
    triangles ``(v0, v1, v2, m12, m02, m01)``. Midpoints are shared by the cells of an edge.
    """
    points = np.asarray(points, dtype=float)
    cells = np.asarray(cells, dtype=np.int64)
    if cells.shape[1] == 2:
        pairs = [(0, 1)]
    elif cells.shape[1] == 3:
        pairs = [(1, 2), (0, 2), (0, 1)]  # edge i is opposite vertex i (basix reference)
    else:
        raise ValueError(f"expected P1 intervals or triangles, got {cells.shape[1]} nodes/cell")
    edges = np.concatenate([cells[:, list(p)] for p in pairs])
    edges.sort(axis=1)
    uniq, inv = np.unique(edges, axis=0, return_inverse=True)
    mid = 0.5 * (points[uniq[:, 0]] + points[uniq[:, 1]])
    if np.any(np.linalg.norm(mid, axis=1) < 1e-3):
        raise ValueError("an edge joins (nearly) antipodal points: refine the mesh")
    m = inv.reshape(len(pairs), -1).T + len(points)
    return np.vstack([points, normalize(mid)]), np.hstack([cells, m]).astype(np.int64)


def _create_p2(comm, points: np.ndarray, cells: np.ndarray) -> CurvedSphereMesh:
    """P2 mesh from a P1 mesh given on rank 0 (other ranks pass empty arrays)."""
    gdim = 2 if cells.shape[1] == 2 else 3
    cell = "interval" if gdim == 2 else "triangle"
    if comm.rank == 0:
        x, c = p2_cells(points, cells)
    else:
        x = np.zeros((0, gdim))
        c = np.zeros((0, 3 if gdim == 2 else 6), np.int64)
    el = basix.ufl.element("Lagrange", cell, 2, shape=(gdim,))
    return CurvedSphereMesh(mesh.create_mesh(comm, c, el, x, partitioner=partitioner()))


def curved_sphere_mesh(
    comm, sphere: int, refinement: int | None = None, cells: int | None = None
) -> CurvedSphereMesh:
    """P2 mesh of S^1 (``cells`` arcs) or S^2 (icosphere of level ``refinement``).

    Same vertices, cells and cell order as :func:`solver.sphere_mesh` with the same arguments.
    """
    check_comm(comm)
    points, conn, _ = generate(sphere, refinement, cells)
    return _create_p2(comm, points, conn)


def curve(sm: SphereMesh) -> CurvedSphereMesh:
    """The P2 version of a (P1) sphere mesh: same vertices, cells and cell keys.

    The global mesh is gathered on rank 0 in original cell order and redistributed, so a mesh
    read from a file works as well as a generated one. A curved mesh is returned as it is.
    """
    if not isinstance(sm, SphereMesh):
        raise TypeError(f"curve needs a SphereMesh (solver.sphere_mesh, solver.load_mesh), got "
                        f"{type(sm).__name__}")  # fmt: skip
    if isinstance(sm, CurvedSphereMesh):
        return sm
    msh, comm = sm.mesh, sm.comm
    degree = msh.geometry.cmaps[0].degree
    if degree == 2:  # already second order (e.g. a P2 Gmsh mesh): use it as it is
        return CurvedSphereMesh(msh)
    if degree != 1:
        raise ValueError(f"curved DG needs a P1 or P2 sphere mesh, got geometry degree {degree}")
    dofs = msh.geometry.dofmaps[0][: sm.num_owned]
    ids = np.asarray(msh.geometry.input_global_indices, dtype=np.int64)[dofs]
    x = msh.geometry.x[:, : sm.gdim][dofs]
    cells, xc = sm.gather(ids), sm.gather(x)  # original cell order, on rank 0
    nv = dofs.shape[1]
    if comm.rank == 0:
        used, cells_c = np.unique(cells, return_inverse=True)  # compact numbering of nodes
        points = np.empty((used.size, sm.gdim))
        points[cells_c.reshape(-1)] = xc.reshape(-1, sm.gdim)
        cells = cells_c.reshape(-1, nv)
    else:
        points, cells = np.zeros((0, sm.gdim)), np.zeros((0, nv), np.int64)
    return _create_p2(comm, normalize(points) if len(points) else points, cells)


class CurvedSphereMesh(SphereMesh):
    """A :class:`~solver.mesh.SphereMesh` with P2 cells (see the module doc).

    ``areas`` are the curved cell measures, ``centroids`` the normalised first moments
    ``∫_K x / |K|``; :meth:`quadrature` returns per-cell weights.
    """

    def __init__(self, msh: mesh.Mesh):
        super().__init__(msh)
        cmap = msh.geometry.cmaps[0]
        self.cell_type = msh.basix_cell()
        self._cmap = basix.create_element(
            basix.ElementFamily.P, self.cell_type, cmap.degree, basix.LagrangeVariant(cmap.variant)
        )
        self._nodes = msh.geometry.x[:, : self.gdim][msh.geometry.dofmaps[0][: self.num_owned]]
        pts, wts = basix.make_quadrature(self.cell_type, GEOMETRY_DEGREE)
        x, detj = self.map(pts)
        self.areas = (detj * wts) @ np.ones(len(wts))
        self.centroids = normalize(np.einsum("cq,cqg->cg", detj * wts, x))

    def map(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Physical points ``(num_owned, np, gdim)`` (on the P2 surface, not normalised) and
        the surface Jacobians ``|det J|`` ``(num_owned, np)`` of reference ``points``."""
        tab = self._cmap.tabulate(1, np.asarray(points, dtype=float).reshape(len(points), -1))
        x = np.einsum("pn,cng->cpg", tab[0, :, :, 0], self._nodes)
        jac = np.einsum("tpn,cng->cpgt", tab[1:, :, :, 0], self._nodes)  # (nc, np, gdim, tdim)
        gram = np.einsum("cpgs,cpgt->cpst", jac, jac)
        return x, np.sqrt(np.abs(np.linalg.det(gram)))

    def quadrature(self, degree: int = 4) -> tuple[np.ndarray, np.ndarray]:
        """Points on the sphere ``(num_owned, nq, gdim)`` and per-cell weights ``(num_owned,
        nq)`` summing to 1 on each cell (``mean_K f ≈ Σ_q w_Kq f(p_Kq)``)."""
        pts, wts = basix.make_quadrature(self.cell_type, degree)
        x, detj = self.map(pts)
        w = detj * wts
        return normalize(x), w / w.sum(axis=1, keepdims=True)

    def cell_averages(self, f, degree: int = 8) -> np.ndarray:
        """Cell averages of ``f(points (n, gdim)) -> (n,)`` on the owned curved cells."""
        p, w = self.quadrature(degree)
        vals = np.asarray(f(p.reshape(-1, self.gdim)), dtype=float).reshape(p.shape[:2])
        return np.einsum("cq,cq->c", vals, w)
