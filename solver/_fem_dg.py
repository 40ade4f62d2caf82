"""Upwind DG of degree 1 and 2 on curved (P2) sphere meshes, with a positivity limiter.

Geometry
--------
:class:`CurvedSphereMesh` is a :class:`~solver._fem.SphereMesh` whose cells are second-order:
3-node intervals (S^1) or 6-node triangles (S^2) whose edge-midpoint nodes are projected onto
the sphere, so the discrete surface is ``O(h^3)`` close to the sphere instead of ``O(h^2)``.
Cell measures, centroids and quadrature use the P2 map (numerical quadrature of degree
:data:`GEOMETRY_DEGREE` of ``|det J|``), and the cells keep the input order of the P1 mesh
they were built from (:attr:`keys` are the same), so results gathered in original cell order
line up with the DG0 ones. Build one with :func:`curved_sphere_mesh` or :func:`curve`.

Scheme
------
On each cell ``K`` the density is a polynomial of degree ``k`` (DG Lagrange on the reference
cell, mapped by the P2 geometry). With a continuous nodal velocity ``u`` (Lagrange of degree
``max(1, k)``, tangent at the nodes) the semi-discrete upwind DG scheme is

.. math::

    \\int_K \\partial_t ρ \\, q = \\int_K ρ \\, u·∇_Γ q
      - \\sum_{F} \\int_F u_n \\, ρ^{up} \\, (q⁺ - q⁻) \\, ds ,
    \\qquad u_n = \\tfrac12 (u⁺·n⁺ - u⁻·n⁻) ,

with the same antisymmetric normal velocity as :class:`~solver._fem.DG0Upwind`: the facet
term is symmetric under '+' ↔ '-' (partition independent) and the fluxes cancel in pairs
(mass conserved to round-off) although the co-normals of the curved cells differ.

State and limiter
-----------------
The state of a cell is ``(ρ̄_K, c_1 - c_0, ..., c_{n-1} - c_0)``: the cell average followed by
the differences of the nodal DG coefficients. It is a basis change of the DG space (the
``n - 1`` differences are the coefficients of ``φ_j - mean_K φ_j``), so

* :meth:`DGUpwind.cell_averages` is ``state[:, 0]`` and works on gathered arrays too;
* the Zhang–Shu scaling limiter ``ρ ↦ ρ̄ + θ (ρ - ρ̄)`` multiplies columns ``1:`` by ``θ``
  and leaves the cell averages — hence the mass — untouched to the last bit.

``θ = min(1, (1 - 10⁻¹²) ρ̄ / (ρ̄ - min_p ρ(p)))`` (the margin keeps round-off from making a
trace negative) over a set of reference points: for DG1 the vertices
(``ρ`` is linear on the reference cell, so it is then ``>= 0`` on the whole cell); for DG2 the
DG nodes, the cell quadrature points of the nonlocal integral and Gauss points on every facet,
so that the density is ``>= 0`` where the flux and the nonlocal integral see it.
With ``ρ >= 0`` at the facet points the new cell average is ``>= 0`` under a CFL condition
(Zhang & Shu 2010), and SSP-RK3 — convex combinations of Euler steps, limited after each
stage — keeps it.

The mass of a cell is ``ρ̄_K |K|`` with ``|K|`` the same P2 quadrature that defines the mass
matrices, and ``d ρ̄_K/dt = Σ_j b_{K,j} / |K|`` (the residual tested with ``q = 1``), so
``Σ_K ρ̄_K |K|`` changes only by round-off.
"""

from __future__ import annotations

# (solver/__init__ and solver._fem import dolfinx_solver before DOLFINx)
import basix
import basix.ufl
import numpy as np
import ufl
from dolfinx import fem, la, mesh
from mpi4py import MPI

from ._fem import SphereMesh, _partitioner
from ._geometry import circle_mesh, icosphere, normalize
from ._timestepping import time_grid
from ._transport import Transport

__all__ = [
    "CurvedSphereMesh",
    "curved_sphere_mesh",
    "curve",
    "p2_cells",
    "DGUpwind",
    "normalised_errors",
    "advance",
    "MAX_DEGREE",
    "StandardTest",
    "nair_lauritzen",
    "williamson1",
    "gaussian_hills",
    "cosine_bell",
]

#: Quadrature degree of the P2 geometry: areas, centroids, mass matrices, L2 projections.
GEOMETRY_DEGREE = 10

#: The limiter keeps the density >= MARGIN * (cell average) at its points (see ``limit``).
MARGIN = 1e-12

#: Highest DG degree (SSP-RK3 is third order: degree 2 is the most it matches).
MAX_DEGREE = 2

#: Fraction of the DG0 positivity time step ``|K| / (U |∂K|)`` used by DG of degree k with
#: SSP-RK3, by cell dimension (1: intervals on S^1, 2: triangles on S^2).
#:
#: * Intervals: linear stability of DG1 / DG2 + SSP-RK3 is Courant ``U Δt / h`` 0.409 / 0.209
#:   (Cockburn & Shu 2001), i.e. 0.82 / 0.42 of ``|K| / |∂K| = h / 2`` (measured here: 0.82 /
#:   0.42); Zhang-Shu positivity asks 1 / (1/3). Used: 0.75 / 1/3.
#: * Triangles, DG1: ρ >= 0 at the vertices gives ``ρ̄ = Σ v / 3`` and an outflow of at most
#:   ``U max|F| Σ v``, so averages stay >= 0 for ``Δt <= |K| / (3 U max|F|)``; on icospheres
#:   ``3 max|F| <= 1.111 |∂K|`` (all levels), hence 0.85 (instability sets in near 1.9).
#: * Triangles, DG2: measured (stable to ~1.0; no negative average seen at 0.25 on the
#:   standard tests); Zhang-Xia-Shu's sufficient bound would be ~1/9.
CFL_FACTOR = {1: {1: 0.75, 2: 1.0 / 3.0}, 2: {1: 0.85, 2: 0.25}}


# --------------------------------------------------------------------------------------------
# curved geometry


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
    return CurvedSphereMesh(mesh.create_mesh(comm, c, el, x, partitioner=_partitioner()))


def curved_sphere_mesh(
    comm, sphere: int, refinement: int | None = None, cells: int | None = None
) -> CurvedSphereMesh:
    """P2 mesh of S^1 (``cells`` arcs) or S^2 (icosphere of level ``refinement``).

    Same vertices, cells and cell order as :func:`solver.sphere_mesh` with the same arguments.
    """
    if sphere == 1:
        if cells is None:
            raise ValueError("mesh.cells is required for the circle (sphere = 1)")
        points, conn = circle_mesh(cells)
    elif sphere == 2:
        if refinement is None:
            raise ValueError("mesh.refinement is required for the sphere (sphere = 2)")
        points, conn = icosphere(refinement)
    else:
        raise ValueError(f"mesh.sphere must be 1 (circle) or 2 (sphere), got {sphere}")
    return _create_p2(comm, points, conn)


def curve(sm: SphereMesh) -> CurvedSphereMesh:
    """The P2 version of a (P1) sphere mesh: same vertices, cells and cell keys.

    The global mesh is gathered on rank 0 in original cell order and redistributed, so a mesh
    read from a file works as well as a generated one. A curved mesh is returned as it is.
    """
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
    keys = comm.gather(sm.keys, root=0)
    ids = comm.gather(ids, root=0)
    x = comm.gather(x, root=0)
    nv = dofs.shape[1]
    if comm.rank == 0:
        keys, ids, x = np.concatenate(keys), np.concatenate(ids), np.concatenate(x)
        cells = np.empty((sm.num_cells, nv), np.int64)
        cells[keys] = ids
        xc = np.empty((sm.num_cells, nv, sm.gdim))
        xc[keys] = x
        used, cells_c = np.unique(cells, return_inverse=True)  # compact numbering of nodes
        points = np.empty((used.size, sm.gdim))
        points[cells_c.reshape(-1)] = xc.reshape(-1, sm.gdim)
        cells = cells_c.reshape(-1, nv)
    else:
        points, cells = np.zeros((0, sm.gdim)), np.zeros((0, nv), np.int64)
    return _create_p2(comm, normalize(points) if len(points) else points, cells)


class CurvedSphereMesh(SphereMesh):
    """A :class:`~solver._fem.SphereMesh` with P2 cells (see the module doc).

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


# --------------------------------------------------------------------------------------------
# errors in the form of Williamson et al. (1992) / Lauritzen et al. (2012)


def normalised_errors(comm, values: np.ndarray, exact: np.ndarray, weights: np.ndarray) -> dict:
    """``l1, l2, linf`` of Williamson et al. (1992): ``I|q - q_T| / I|q_T|``,
    ``sqrt(I(q - q_T)^2 / I q_T^2)``, ``max|q - q_T| / max|q_T|``.

    ``values``, ``exact`` and ``weights`` are arrays of the same shape (points of this rank's
    cells); ``I`` is the weighted sum over all ranks.
    """
    e = np.asarray(values, float) - np.asarray(exact, float)
    ex, w = np.asarray(exact, float), np.asarray(weights, float)
    loc = np.array([np.sum(w * np.abs(e)), np.sum(w * np.abs(ex)), np.sum(w * e * e),
                    np.sum(w * ex * ex)])  # fmt: skip
    glob = np.empty_like(loc)
    comm.Allreduce(loc, glob, op=MPI.SUM)
    emax = comm.allreduce(float(np.abs(e).max(initial=0.0)), op=MPI.MAX)
    xmax = comm.allreduce(float(np.abs(ex).max(initial=0.0)), op=MPI.MAX)
    return {
        "l1": glob[0] / glob[1],
        "l2": float(np.sqrt(glob[2] / glob[3])),
        "linf": emax / xmax,
        "L1": float(glob[0]),
        "L2": float(np.sqrt(glob[2])),
    }


# --------------------------------------------------------------------------------------------
# the operator


class DGUpwind:
    """Upwind DG of degree ``degree`` (1 or 2) on a curved sphere mesh (see module doc).

    Implements the transport operator interface of :class:`~solver._fem.DG0Upwind`; the state
    is ``(num_owned, n)`` (``n`` DG nodes per cell): cell averages in column 0.

    Parameters
    ----------
    sm : SphereMesh
        A P1 mesh (made curved here by :func:`curve`, same cells and keys) or a
        :class:`CurvedSphereMesh`. The operator's own mesh is :attr:`sm`: a run must use it
        (areas, gather, scatter), not the P1 mesh it came from.
    degree : int
        Polynomial degree of the density, 1 or 2.
    velocity_degree : int, optional
        Degree of the continuous nodal velocity (default ``max(1, degree)``).
    source_degree : int, optional
        Degree of the cell quadrature of the nonlocal integral (default ``2 * degree``).
    """

    def __init__(
        self,
        sm: SphereMesh,
        degree: int = 1,
        *,
        velocity_degree: int | None = None,
        source_degree: int | None = None,
    ):
        if int(degree) != degree or not 1 <= degree <= MAX_DEGREE:
            raise ValueError(f"scheme.degree must be 1..{MAX_DEGREE} for DG, got {degree}")
        self.degree = k = int(degree)
        self.sm = sm = curve(sm)
        msh, gdim, tdim = sm.mesh, sm.gdim, sm.gdim - 1
        cell = sm.cell_type
        self._nown = nown = sm.num_owned

        vdeg = max(1, k) if velocity_degree is None else int(velocity_degree)

        # DG space and its reference basis
        self.element = basix.ufl.element("Lagrange", cell.name, k, discontinuous=True)
        self.V = fem.functionspace(msh, self.element)
        self.ndofs = self.element.dim
        self._dofs = self.V.dofmap.list[:nown].astype(np.int64)  # (nown, n), owned dofs

        # per-cell mass matrices, averages of the basis functions
        pts, wts = basix.make_quadrature(cell, GEOMETRY_DEGREE)
        phi = self._tab(pts)  # (nq, n)
        _, detj = sm.map(pts)
        wj = detj * wts
        mass = np.einsum("cq,qi,qj->cij", wj, phi, phi)
        self._minv = np.linalg.inv(mass)
        self._mu = np.einsum("cq,qi->ci", wj, phi) / sm.areas[:, None]  # mean_K φ_i

        # nonlocal integral: cell quadrature points on the sphere, weights |det J| w_q
        sdeg = 2 * k if source_degree is None else int(source_degree)
        spts, swts = basix.make_quadrature(cell, sdeg)
        xs, sdet = sm.map(spts)
        self.nq = len(swts)
        self._sphi = self._tab(spts)
        self._sw = sdet * swts  # (nown, nq)
        self.source_points = normalize(xs.reshape(-1, gdim))
        self.source_keys = (sm.keys[:, None] * self.nq + np.arange(self.nq)).reshape(-1)

        # limiter points. DG1: the vertices (ρ is linear on the reference cell, so ρ >= 0 at
        # the vertices is ρ >= 0 on the whole cell). DG2: the DG nodes, the source points and
        # the Gauss points of every facet.
        geo = basix.geometry(cell)
        if k == 1:
            self.limit_points = geo
        else:
            fpts = [np.asarray(self.element.basix_element.points), spts]
            gpts, _ = basix.make_quadrature(basix.CellType.interval, 2 * k + vdeg)
            for facet in basix.topology(cell)[tdim - 1]:
                v = geo[facet]
                fpts.append(v if tdim == 1 else v[0] + gpts[:, :1] * (v[1] - v[0]))
            self.limit_points = np.unique(np.round(np.vstack(fpts), 14), axis=0)
        lphi = self._tab(self.limit_points)  # (np, n)
        # values at limiter points: ρ(p) = ρ̄ + Σ_{j>=1} a_j (φ_j(p) - μ_j)
        self._lim = lphi[None, :, 1:] - self._mu[:, None, 1:]  # (nown, np, n-1)
        self._src = self._sphi[None, :, 1:] - self._mu[:, None, 1:]  # (nown, nq, n-1)

        # velocity: continuous Lagrange, owned nodes on the sphere
        self.Vu = fem.functionspace(msh, ("Lagrange", vdeg, (gdim,)))
        self.num_targets = self.Vu.dofmap.index_map.size_local
        self.targets = normalize(self.Vu.tabulate_dof_coordinates()[: self.num_targets, :gdim])
        self.target_keys = self.Vu.dofmap.index_map.local_to_global(
            np.arange(self.num_targets, dtype=np.int32)
        )
        self.u = fem.Function(self.Vu, name="velocity")
        self.rho = fem.Function(self.V, name="density")

        q = ufl.TestFunction(self.V)
        nrm = ufl.FacetNormal(msh)
        u, rho = self.u, self.rho
        un = 0.5 * (ufl.dot(u("+"), nrm("+")) - ufl.dot(u("-"), nrm("-")))
        flux = un * ufl.conditional(ufl.gt(un, 0), rho("+"), rho("-"))
        qd = {"quadrature_degree": 2 * k + vdeg}  # exact for the polynomial parts
        self.form = fem.form(
            rho * ufl.dot(u, ufl.grad(q)) * ufl.dx(metadata=qd)
            - (q("+") - q("-")) * flux * ufl.dS(metadata=qd)
        )
        self._b = la.vector(self.V.dofmap.index_map, 1)

    def _tab(self, points: np.ndarray) -> np.ndarray:
        """Reference DG basis at ``points``: ``(np, n)``."""
        pts = np.asarray(points, dtype=float).reshape(len(points), -1)
        return self.element.tabulate(0, pts)[0]

    # --- state <-> nodal DG coefficients ------------------------------------------------

    def nodal(self, state: np.ndarray) -> np.ndarray:
        """Nodal DG coefficients ``(num_owned, n)`` of an owned state."""
        a = np.asarray(state, dtype=float)
        c0 = a[:, 0] - np.einsum("cj,cj->c", a[:, 1:], self._mu[:, 1:])
        c = np.empty_like(a)
        c[:, 0] = c0
        c[:, 1:] = c0[:, None] + a[:, 1:]
        return c

    def from_nodal(self, c: np.ndarray) -> np.ndarray:
        """State of nodal DG coefficients ``(num_owned, n)``."""
        c = np.asarray(c, dtype=float)
        a = np.empty_like(c)
        a[:, 0] = np.einsum("ci,ci->c", c, self._mu)
        a[:, 1:] = c[:, 1:] - c[:, :1]
        return a

    def point_values(self, state: np.ndarray, points: np.ndarray) -> np.ndarray:
        """Density at reference ``points`` of every owned cell: ``(num_owned, np)``."""
        return self.nodal(state) @ self._tab(points).T

    # --- the interface --------------------------------------------------------------------

    def source_weights(self, state: np.ndarray) -> np.ndarray:
        """``ρ(y_Kq) |det J| w_q`` at the source points (clipped at 0: limiter round-off)."""
        vals = state[:, :1] + np.einsum("cqj,cj->cq", self._src, state[:, 1:])
        return (np.maximum(vals, 0.0) * self._sw).reshape(-1)

    @staticmethod
    def cell_averages(state: np.ndarray) -> np.ndarray:
        """Cell averages (column 0): works on owned and on gathered states."""
        return np.asarray(state)[:, 0]

    def limit(self, state: np.ndarray) -> np.ndarray:
        """Zhang–Shu scaling toward the cell average: ``ρ >= 0`` at the limiter points.

        Only columns ``1:`` change (by a factor ``θ ∈ [0, 1]``), so cell averages and mass
        are kept exactly. ``θ`` is ``ρ̄ / (ρ̄ - min_p ρ(p))`` shrunk by ``MARGIN`` (relative),
        so the minimum is ``MARGIN ρ̄ > 0`` rather than a round-off ``±1e-17 ρ̄``: a negative
        round-off trace would flow into an empty neighbour and give it a ``-1e-24`` average.
        A cell with a negative average (a CFL violation) is made constant and left negative,
        for the caller to report.
        """
        mean = state[:, 0]
        vals = np.einsum("cpj,cj->cp", self._lim, state[:, 1:])  # ρ - ρ̄ at the points
        low = vals.min(axis=1)
        bad = mean + low < MARGIN * mean
        if not np.any(bad):
            return state
        out = state.copy()
        m, lo = mean[bad], low[bad]
        theta = np.clip(m / np.maximum(-lo, 1e-300) * (1.0 - MARGIN), 0.0, 1.0)
        out[bad, 1:] *= theta[:, None]
        return out

    def initial_state(self, f, degree: int | None = None) -> np.ndarray:
        """L2 projection of ``f`` on each curved cell, limited, normalised to unit mass."""
        deg = GEOMETRY_DEGREE if degree is None else int(degree)
        pts, wts = basix.make_quadrature(self.sm.cell_type, deg)
        x, detj = self.sm.map(pts)
        vals = np.asarray(f(normalize(x).reshape(-1, self.sm.gdim)), dtype=float)
        vals = vals.reshape(detj.shape)
        if not np.all(np.isfinite(vals)):
            raise ValueError("initial density must be finite on every cell")
        rhs = np.einsum("cq,qi->ci", vals * detj * wts, self._tab(pts))
        state = self.from_nodal(np.einsum("cij,cj->ci", self._minv, rhs))
        state[:, 0] = rhs.sum(axis=1) / self.sm.areas  # exact mean of the quadrature
        if np.any(state[:, 0] < 0):
            raise ValueError("initial density must be >= 0 on every cell")
        mass = self.sm.integrate(state[:, 0])
        if not mass > 0:
            raise ValueError("initial density is zero everywhere on the mesh: nothing to evolve")
        return self.limit(state / mass)

    def max_time_step(self, speed: float, cfl: float) -> float:
        """``cfl * CFL_FACTOR[tdim][k] * min_K |K| / |∂K| / speed`` (stable and positive for
        cfl <= 1)."""
        if not (np.isfinite(cfl) and 0 < cfl <= 1):
            raise ValueError(f"time.cfl must be in (0, 1] (positivity of the scheme), got {cfl}")
        fac = CFL_FACTOR[self.sm.gdim - 1][self.degree]
        return cfl * fac * self.sm.min_area_per_perimeter() / max(speed, 1e-300)

    def rhs(self, velocity: np.ndarray, state: np.ndarray) -> np.ndarray:
        """``d state/dt`` on owned cells for owned nodal ``velocity`` and an owned state."""
        u = self.u.x
        u.array[: velocity.size] = np.asarray(velocity, dtype=float).ravel()
        u.scatter_forward()
        self.rho.x.array[self._dofs] = self.nodal(state)
        self.rho.x.scatter_forward()
        b = self._b
        b.array[:] = 0.0
        fem.assemble_vector(b.array, self.form)
        b.scatter_reverse(la.InsertMode.add)
        bk = b.array[self._dofs]  # (nown, n): residual tested with the nodal basis
        g = np.einsum("cij,cj->ci", self._minv, bk)  # nodal time derivative
        out = np.empty_like(g)
        out[:, 0] = bk.sum(axis=1) / self.sm.areas  # tested with q = 1: exact mass balance
        out[:, 1:] = g[:, 1:] - g[:, :1]
        return out

    # --- errors ---------------------------------------------------------------------------

    def errors(self, state: np.ndarray, exact, degree: int = GEOMETRY_DEGREE) -> dict:
        """Normalised ``l1, l2, linf`` (:func:`normalised_errors`) of the DG density against
        ``exact(points on the sphere) -> values``, by quadrature on the curved cells; and
        ``l1_avg``: the same ``l1`` of the cell averages against exact cell averages."""
        pts, wts = basix.make_quadrature(self.sm.cell_type, degree)
        x, detj = self.sm.map(pts)
        ex = np.asarray(exact(normalize(x).reshape(-1, self.sm.gdim)), float).reshape(detj.shape)
        w = detj * wts
        out = normalised_errors(self.sm.comm, self.point_values(state, pts), ex, w)
        mean_ex = (ex * w).sum(axis=1) / self.sm.areas
        avg = normalised_errors(self.sm.comm, state[:, 0], mean_ex, self.sm.areas)
        out["l1_avg"], out["l2_avg"] = avg["l1"], avg["l2"]
        return out


# --------------------------------------------------------------------------------------------
# standard transport tests on the unit sphere (prescribed velocity, exact solution at T)


def lonlat(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Longitude ``λ ∈ (-π, π]`` and latitude ``θ ∈ [-π/2, π/2]`` of unit vectors."""
    return np.arctan2(x[:, 1], x[:, 0]), np.arcsin(np.clip(x[:, 2], -1.0, 1.0))


def from_lonlat(lam, theta) -> np.ndarray:
    """Unit vectors of longitudes and latitudes."""
    lam, theta = np.asarray(lam, float), np.asarray(theta, float)
    return np.stack([np.cos(theta) * np.cos(lam), np.cos(theta) * np.sin(lam), np.sin(theta)], -1)


def _wind(x: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Cartesian vector ``u e_λ + v e_θ`` at unit vectors ``x`` (zonal ``u``, meridional ``v``)."""
    lam, th = lonlat(x)
    e_lam = np.column_stack([-np.sin(lam), np.cos(lam), np.zeros_like(lam)])
    e_th = np.column_stack([-np.sin(th) * np.cos(lam), -np.sin(th) * np.sin(lam), np.cos(th)])
    return u[:, None] * e_lam + v[:, None] * e_th


class StandardTest:
    """A transport test case with prescribed velocity whose solution at ``T`` is known.

    Attributes: ``velocity(x, t) -> (n, 3)``, ``speed`` (a bound of ``|u|``), ``T``,
    ``initial(x)`` and ``exact(x)`` (the solution at ``T``), ``name``.
    """

    def __init__(self, name, velocity, speed, T, initial, exact=None):
        self.name, self.velocity, self.speed, self.T = name, velocity, float(speed), float(T)
        self.initial = initial
        self.exact = initial if exact is None else exact


def gaussian_hills(x: np.ndarray, h_max: float = 0.95, b: float = 5.0) -> np.ndarray:
    """Two Gaussian hills of Lauritzen et al. (2012) at ``(λ, θ) = (5π/6, 0), (7π/6, 0)``."""
    c = from_lonlat(np.array([5 * np.pi / 6, 7 * np.pi / 6]), np.zeros(2))
    return sum(h_max * np.exp(-b * np.sum((x - ci) ** 2, axis=1)) for ci in c)


def cosine_bell(x: np.ndarray, centre, radius: float = 1.0 / 3.0, h0: float = 1.0) -> np.ndarray:
    """Cosine bell ``h0/2 (1 + cos(π r / R))`` for great-circle distance ``r < R``, else 0."""
    r = np.arccos(np.clip(x @ np.asarray(centre, float), -1.0, 1.0))
    return np.where(r < radius, 0.5 * h0 * (1.0 + np.cos(np.pi * np.minimum(r / radius, 1))), 0.0)


def nair_lauritzen(T: float = 5.0, kappa: float | None = None, initial=gaussian_hills):
    """Non-divergent deformational flow with translation (Nair & Lauritzen 2010, case 4;
    Lauritzen et al. 2012): the tracer returns to its initial state at ``T``.

    ``u = κ sin²λ' sin 2θ cos(πt/T) + 2π cos θ / T``, ``v = κ sin 2λ' cos θ cos(πt/T)``,
    ``λ' = λ - 2πt/T``, ``κ = 10/T``.
    """
    k = 10.0 / T if kappa is None else float(kappa)

    def velocity(x, t):
        lam, th = lonlat(x)
        lp = lam - 2 * np.pi * t / T
        c = np.cos(np.pi * t / T)
        u = k * np.sin(lp) ** 2 * np.sin(2 * th) * c + 2 * np.pi * np.cos(th) / T
        v = k * np.sin(2 * lp) * np.cos(th) * c
        return _wind(x, u, v)

    # max |u| sampled on a 2° grid at 21 times, plus 2% (the crude bound hypot(κ + 2π/T, κ)
    # is 30% larger and would cost as many more time steps)
    lam, th = np.meshgrid(np.linspace(-np.pi, np.pi, 181), np.linspace(-np.pi / 2, np.pi / 2, 91))
    xs = from_lonlat(lam.ravel(), th.ravel())
    speed = 1.02 * max(np.linalg.norm(velocity(xs, t), axis=1).max() for t in np.linspace(0, T, 21))
    return StandardTest("Nair-Lauritzen deformational flow", velocity, speed, T, initial)


def williamson1(alpha: float = 0.0, T: float = 5.0):
    """Williamson et al. (1992) test 1: a cosine bell of radius 1/3 centred at
    ``(3π/2, 0)`` carried once around the sphere by solid-body rotation at angle ``α``
    (``u = u0 (cos θ cos α + sin θ cos λ sin α)``, ``v = -u0 sin λ sin α``, ``u0 = 2π/T``)."""
    u0 = 2 * np.pi / T
    omega = u0 * np.array([-np.sin(alpha), 0.0, np.cos(alpha)])
    centre = from_lonlat(3 * np.pi / 2, 0.0)

    def velocity(x, t):
        return np.cross(omega, x)

    def bell(x):
        return cosine_bell(x, centre)

    return StandardTest(f"Williamson test 1 (alpha = {alpha:.4g})", velocity, u0, T, bell)


# --------------------------------------------------------------------------------------------
# a bare time loop (what :func:`solver.evolve` does, without output): tests and benchmarks


def advance(op, field, state: np.ndarray, T: float, cfl: float = 0.9) -> tuple[np.ndarray, dict]:
    """Step ``state`` from 0 to ``T`` by SSP-RK3 (limited after each stage) under ``field``
    (a :class:`~solver._transport.PrescribedField` or ``NonlocalField`` of ``op``).

    Returns the final state and ``{"steps", "mass_drift" (max |M(t) - M(0)| / M(0)),
    "min_average" (smallest cell average seen)}`` (global, identical on every rank).
    """
    times, _ = time_grid(T, op.max_time_step(field.speed(T), cfl))
    flow = Transport(op, field)
    comm, sm = op.sm.comm, op.sm
    mass0 = sm.integrate(op.cell_averages(state))
    drift, low = 0.0, float(np.min(op.cell_averages(state), initial=np.inf))
    for t0, t1 in zip(times[:-1], times[1:], strict=True):
        state = flow.step(state, float(t0), float(t1 - t0))
        drift = max(drift, abs(sm.integrate(op.cell_averages(state)) - mass0))
        low = min(low, float(np.min(op.cell_averages(state), initial=np.inf)))
    low = comm.allreduce(low, op=MPI.MIN)
    return state, {"steps": len(times) - 1, "mass_drift": drift / mass0, "min_average": low}
