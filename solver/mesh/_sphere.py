"""Distributed DOLFINx meshes of the unit sphere: the circle S^1 and icosphere meshes of S^2.

Meshes are manifold meshes of the unit sphere S^{gdim-1}: the circle (intervals in R^2) or
the sphere (triangles in R^3), distributed over MPI ranks with ``GhostMode.shared_facet`` so
that interior-facet integrals see both neighbours. :class:`SphereMesh` holds the mesh and the
cell geometry that the transport operators and the nonlocal integral need.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

try:  # the PyPI DOLFINx wheel loads MPI through mpi4py: this import must come first
    import dolfinx_solver  # noqa: F401
except ImportError:  # pragma: no cover - conda / system DOLFINx
    pass

import basix.ufl
import ufl
from dolfinx import fem, io, la, mesh
from mpi4py import MPI

from ..parallel import gather_ordered, share_cores
from ._geometry import MAX_ICOSPHERE_LEVEL, circle_mesh, icosphere, normalize, whole

__all__ = ["SphereMesh", "sphere_mesh", "load_mesh", "partitioner", "ON_SPHERE_TOL"]

#: Tolerance for "a vertex lies on the unit sphere".
ON_SPHERE_TOL = 1e-8


class SphereMesh:
    """A distributed DOLFINx mesh of the unit sphere S^{gdim-1} and its cell geometry.

    Attributes
    ----------
    mesh : dolfinx.mesh.Mesh
    gdim : int
        Ambient dimension ``d`` (2 for S^1, 3 for S^2).
    num_owned : int
        Cells owned by this rank (ghosts come after them in DOLFINx's local order).
    keys : (num_owned,) int64
        Original (input) index of each owned cell: a rank-independent global cell order.
    num_cells : int
        Global number of cells.
    centroids : (num_owned, gdim)
        Cell centroids projected radially onto the sphere.
    areas : (num_owned,)
        Cell measures (length on S^1, area on S^2) of the flat cells.
    """

    def __init__(self, msh: mesh.Mesh):
        self.mesh = msh
        self.comm = msh.comm
        share_cores(self.comm)  # ranks on a node share its cores (BLAS threads per rank)
        self.gdim = msh.geometry.dim
        tdim = msh.topology.dim
        if tdim != self.gdim - 1:
            raise ValueError(
                f"expected a surface mesh of the sphere (tdim = gdim - 1), got tdim={tdim}, "
                f"gdim={self.gdim}"
            )
        msh.topology.create_connectivity(tdim - 1, tdim)
        imap = msh.topology.index_map(tdim)
        self.num_owned = imap.size_local
        self.num_cells = imap.size_global
        self.keys = np.asarray(msh.topology.original_cell_index[: self.num_owned], dtype=np.int64)
        self.V0 = fem.functionspace(msh, ("DG", 0))
        q = ufl.TestFunction(self.V0)
        self.areas = _assemble_owned(fem.form(q * ufl.dx), self.V0)
        #: sum of facet measures per cell (facet "measure" of a point is 1 on S^1)
        self.perimeters = _assemble_owned(fem.form((q("+") + q("-")) * ufl.dS), self.V0)
        x = msh.geometry.x[:, : self.gdim]
        dofs = msh.geometry.dofmaps[0][: self.num_owned]
        self.centroids = normalize(x[dofs].mean(axis=1))

    @property
    def sphere_dim(self) -> int:
        """``k`` of S^k."""
        return self.gdim - 1

    def min_area_per_perimeter(self) -> float:
        """``min_K |K| / |∂K|`` over all cells (the CFL length scale)."""
        loc = np.min(self.areas / self.perimeters) if self.num_owned else np.inf
        return float(self.comm.allreduce(loc, op=MPI.MIN))

    def quadrature(self, degree: int = 4) -> tuple[np.ndarray, np.ndarray]:
        """Points (projected onto the sphere) and weights of a cell quadrature rule.

        Returns ``(points (num_owned, nq, gdim), weights (nq,))`` with weights summing to 1, so
        that ``mean_K f ≈ Σ_q w_q f(p_Kq)``.
        """
        cell = self.mesh.basix_cell()
        import basix

        pts, wts = basix.make_quadrature(cell, degree)
        x = self.mesh.geometry.x[:, : self.gdim]
        verts = x[self.mesh.geometry.dofmaps[0][: self.num_owned]]  # (nc, nv, gdim)
        bary = np.column_stack([1 - pts.sum(axis=1), pts])  # (nq, nv) P1 shape functions
        phys = np.einsum("qv,cvg->cqg", bary, verts)
        return normalize(phys), wts / wts.sum()

    def cell_averages(self, f, degree: int = 4) -> np.ndarray:
        """Cell averages of ``f(points (n, gdim)) -> (n,)`` on the owned cells (quadrature)."""
        p, w = self.quadrature(degree)
        vals = np.asarray(f(p.reshape(-1, self.gdim)), dtype=float).reshape(p.shape[:2])
        return vals @ w

    def integrate(self, values: np.ndarray) -> float:
        """``Σ_K values_K |K|`` over all ranks."""
        return float(self.comm.allreduce(float(values @ self.areas), op=MPI.SUM))

    def gather(self, values: np.ndarray, root: int = 0) -> np.ndarray | None:
        """Owned per-cell ``values`` of all ranks on ``root``, in original cell order."""
        return gather_ordered(self.comm, self.keys, values, self.num_cells, root)

    def gather_mesh(self, root: int = 0) -> tuple[np.ndarray, np.ndarray] | None:
        """``(points (np, gdim), cells (ncells, nv))`` of the whole mesh on ``root``, cells in
        original order (the order of ``result.npz``), vertices of the affine cell geometry."""
        x = self.mesh.geometry.x[:, : self.gdim]
        dofs = self.mesh.geometry.dofmaps[0][: self.num_owned]
        nv = self.gdim  # simplices of dimension gdim - 1: intervals (2), triangles (3)
        corners = self.gather(np.ascontiguousarray(x[dofs[:, :nv]]), root)
        if corners is None:
            return None
        flat = corners.reshape(-1, self.gdim)
        points, inv = np.unique(np.round(flat, 12), axis=0, return_inverse=True)
        return points, inv.reshape(len(corners), nv).astype(np.int64)

    def vtk_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(points, cells, order)`` of a one-rank mesh via :func:`dolfinx.plot.vtk_mesh`:
        VTK cell ``i`` (DOLFINx's order, P1 corners) is input cell ``order[i]``."""
        from dolfinx.plot import vtk_mesh

        if self.comm.size != 1:
            raise ValueError("pictures need the mesh on one rank (MPI.COMM_SELF)")
        topology, _, x = vtk_mesh(self.mesh)
        nv = self.mesh.topology.dim + 1  # interval: 2, triangle: 3 (P1 corners)
        cells = np.asarray(topology).reshape(-1, nv + 1)[:, 1:]
        nc = self.num_owned
        return np.asarray(x, float), cells[:nc], np.asarray(self.keys[:nc])

    def scatter(self, global_values: np.ndarray) -> np.ndarray:
        """This rank's owned part of an array given in original cell order (on every rank)."""
        return np.asarray(global_values)[self.keys]


def _assemble_owned(form, V) -> np.ndarray:
    b = fem.assemble_vector(form)
    b.scatter_reverse(la.InsertMode.add)
    return b.array[: V.dofmap.index_map.size_local].copy()


def check_comm(comm) -> None:
    """TypeError unless ``comm`` is an mpi4py communicator (``None`` was an AttributeError)."""
    if not isinstance(comm, MPI.Comm):
        raise TypeError("comm must be an mpi4py communicator (MPI.COMM_WORLD, MPI.COMM_SELF), "
                        f"got {comm!r}")  # fmt: skip


def partitioner():
    return mesh.create_cell_partitioner(mesh.GhostMode.shared_facet, 2)


def sphere_mesh(comm, sphere: int, refinement: int | None = None, cells: int | None = None):
    """Mesh of S^1 (``cells`` equal segments) or S^2 (icosphere of level ``refinement``).

    The mesh is generated on rank 0 and partitioned over ``comm``.
    """
    check_comm(comm)
    points, conn, cell = generate(sphere, refinement, cells)
    if comm.rank != 0:
        points, conn = np.zeros((0, points.shape[1])), np.zeros((0, conn.shape[1]), np.int64)
    el = basix.ufl.element("Lagrange", cell, 1, shape=(points.shape[1],))
    return SphereMesh(mesh.create_mesh(comm, conn, el, points, partitioner=partitioner()))


def generate(sphere: int, refinement: int | None = None, cells: int | None = None):
    """``(points, cells, cell name)`` of the mesh :func:`sphere_mesh` makes, its arguments
    checked (TypeError/ValueError naming the argument)."""
    if whole("sphere_mesh sphere", sphere, 1, 2) == 1:
        if cells is None:
            raise ValueError("mesh.cells is required for the circle (sphere = 1)")
        if refinement is not None:
            raise ValueError("sphere_mesh refinement applies to sphere = 2; the circle "
                             "(sphere = 1) takes cells")  # fmt: skip
        points, conn = circle_mesh(whole("sphere_mesh cells", cells, 3))
        cell = "interval"
    else:
        if refinement is None:
            raise ValueError("mesh.refinement is required for the sphere (sphere = 2)")
        if cells is not None:
            raise ValueError("sphere_mesh cells applies to sphere = 1; the sphere (sphere = 2) "
                             "takes refinement")  # fmt: skip
        points, conn = icosphere(whole("sphere_mesh refinement", refinement, 0,
                                       MAX_ICOSPHERE_LEVEL))  # fmt: skip
        cell = "triangle"
    return points, conn, cell


def load_mesh(comm, path: str | os.PathLike, *, project: bool = False) -> SphereMesh:
    """Read a mesh of the unit sphere from XDMF (``.xdmf``) or Gmsh (``.msh``).

    Every vertex must lie on the unit sphere (to ``1e-8``); with ``project=True`` vertices
    are projected radially onto it instead.
    """
    check_comm(comm)
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"load_mesh path must be a file path (str or Path), got {path!r}")
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"mesh.file: {path} does not exist or is not a file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".xdmf":
            with io.XDMFFile(comm, str(path), "r") as f:
                msh = f.read_mesh(ghost_mode=mesh.GhostMode.shared_facet)
        elif suffix == ".msh":
            try:
                import gmsh  # noqa: F401
            except ImportError:
                raise ValueError(
                    "mesh.file: reading .msh needs the gmsh Python module (pip install gmsh); "
                    "or convert the mesh to XDMF"
                ) from None
            data = io.gmsh.read_from_msh(str(path), comm, 0, gdim=3, partitioner=partitioner())
            msh = data.mesh if hasattr(data, "mesh") else data[0]
        else:
            raise ValueError(f"mesh.file: unsupported mesh format {suffix!r} (use .xdmf or .msh)")
    except ValueError:
        raise
    except Exception as e:  # unreadable file: say which and why
        raise ValueError(f"mesh.file: cannot read {path}: {e}") from None
    x = msh.geometry.x[:, : msh.geometry.dim]
    err = np.abs(np.linalg.norm(x, axis=1) - 1.0).max(initial=0.0)
    err = comm.allreduce(err, op=MPI.MAX)
    if err > ON_SPHERE_TOL:
        if not project:
            raise ValueError(
                f"mesh.file: {path} is not a mesh of the unit sphere: a vertex is {err:.3g} off "
                "|x| = 1 (set mesh.project = true to project vertices onto the sphere)"
            )
        msh.geometry.x[:, : msh.geometry.dim] = normalize(x)
    return SphereMesh(msh)
