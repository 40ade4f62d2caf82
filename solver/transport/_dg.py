"""Upwind DG of degree 1 and 2 on curved (P2) sphere meshes, with a positivity limiter.

Geometry
--------
The cells are those of :class:`~solver.mesh.CurvedSphereMesh` (P2 cells with edge midpoints on
the sphere, in the input order of the P1 mesh).

Scheme
------
On each cell ``K`` the density is a polynomial of degree ``k`` (DG Lagrange on the reference
cell, mapped by the P2 geometry). With a continuous nodal velocity ``u`` (Lagrange of degree
``max(1, k)``, tangent at the nodes) the semi-discrete upwind DG scheme is

.. math::

    \\int_K \\partial_t ρ \\, q = \\int_K ρ \\, u·∇_Γ q
      - \\sum_{F} \\int_F u_n \\, ρ^{up} \\, (q⁺ - q⁻) \\, ds ,
    \\qquad u_n = \\tfrac12 (u⁺·n⁺ - u⁻·n⁻) ,

with the same antisymmetric normal velocity as :class:`~solver.transport.DG0Upwind`: the facet
term is symmetric under '+' ↔ '-' (partition independent) and the fluxes cancel in pairs
(mass conserved to round-off) although the co-normals of the curved cells differ.

Clusters (``clusters=True``, the default)
-----------------------------------------
No polynomial of degree ``k`` on a cell represents a cluster far narrower than the cell, and
the scheme above pins one: the cluster's own attraction makes ``u_n`` point into its cell on
every facet, and the limiter pulls its first moment back towards the centroid (94.5 % of the
displacement short in the S^1 case of scripts/point_mass_drift.py). So the operator finds the
*cluster cells* from the state at every stage — a local maximum of the cell averages more than
twice its lightest neighbour's (the density halves within one cell: not resolved by a linear
function; a smooth peak on a mesh that resolves it is nowhere near) — and treats each one
together with two layers of neighbours, its *zone*, as DG0 cells of
:class:`~solver.transport.DG0Upwind`: their slopes are scaled by ``1 - τ`` (set by
:meth:`limit`, kept by :meth:`rhs`), their cell term is scaled by ``1 - τ``, and every facet
carries a blend of the DG flux and the donor flux of the cell averages with the centroid
velocities (the nodal velocity interpolated at the centroid) and the directional outflow that
moves each cell's first moment at its velocity:

.. math::

    F = (1 - τ_F)\\, u_n ρ^{up} + τ_F \\big(ρ̄⁺ o⁺ - ρ̄⁻ o⁻\\big), \\qquad τ_F = \\max(τ⁺, τ⁻).

A cluster cell must also sit where the flow converges (summed over the cell's velocity nodes,
the velocity towards its centroid is more than twice the velocity away from it; about 1 for a
divergence-free flow), so prescribed transport tests never form a zone. The weight ``τ`` is a
continuous function of the data (:meth:`DGUpwind.cluster_cells`): each of the three conditions
is a steep linear ramp (:data:`PEAK`, :data:`SHARP`, :data:`SINK`: from 0 to 1 over the last
1 - 2.5 % of its threshold), the core weight is their minimum and the zone weight the largest
core weight within two layers; so round-off in the data changes the scheme by round-off times
the ramps' slope (at most ~50), never by a switch. When ``τ = 0`` everywhere the plain DG form is
assembled (the same form at ``τ = 0``). The flux is still single-valued on every facet (mass
to round-off), the weight depends on the cell averages and the velocity at the nodes only
(the same on any partition), and outside the zones — everywhere, for a density the mesh
resolves — the scheme is the DG scheme above. Measured (tests/test_point_mass.py,
2026-12-07): a sub-cell cluster drifts 0.07 % / 1.1 % off the point-mass ODE on S^1 (120
cells) and 0.22 - 0.44 % on S^2 (icosphere level 3, four cases including a non-symmetric
rank-one ``dV``; 3.0 - 3.5 % with one layer of neighbours), against 9.3 % (and 94.5 %, pinned,
in the issue's case) without the zones; the zone cells are first order, as DG0 is. Smooth data
keep the DG1 order: the exact S^2 solution of uniform attention (``T = 2``) at levels 2 / 3 / 4,
L1 orders 1.88 and 1.91.

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

try:  # the PyPI DOLFINx wheel loads MPI through mpi4py: this import must come first
    import dolfinx_solver  # noqa: F401
except ImportError:  # pragma: no cover - conda / system DOLFINx
    pass

import basix
import basix.ufl
import numpy as np
import ufl
from dolfinx import fem, la
from mpi4py import MPI

from ..mesh import GEOMETRY_DEGREE, SphereMesh, curve, normalize
from ..parallel import normalised_errors
from ..velocity import tangent_project
from ._dg0 import cell_stencil, directional_velocity
from ._forms import check_cfl, mass_floor, unit_mass, upwind_flux, upwind_outflows

__all__ = ["DGUpwind", "MAX_DEGREE", "CFL_FACTOR"]


#: The limiter keeps the density >= MARGIN * (cell average) at its points (see ``limit``).
MARGIN = 1e-12

#: Highest DG degree (SSP-RK3 is third order: degree 2 is the most it matches).
MAX_DEGREE = 2
#: The ramps of the cluster weight (:meth:`DGUpwind.cluster_cells`): ``(lo, hi)`` such that a
#: condition ``x >= t y`` has weight 0 at ``x = lo·y``, 1 at ``x = hi·y``, linear between.
#: PEAK: the cell average against the heaviest neighbour's; SHARP: against the lightest
#: neighbour's; SINK: the inflow at the velocity nodes against the outflow. Steep ramps keep
#: the 0/1 criterion's accuracy (S^1 fast drift: 1.1 % off the point mass; 2.7 % with ramps
#: over 20 % of the thresholds, 0.87 % with the discontinuous 0/1 criterion).
PEAK = (0.98, 1.0)
SHARP = (1.95, 2.0)
SINK = (1.95, 2.0)

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


class DGUpwind:
    """Upwind DG of degree ``degree`` (1 or 2) on a curved sphere mesh (see module doc).

    Implements the transport operator interface of :class:`~solver.transport.DG0Upwind`; the state
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

    #: fixed steps are the a-priori step, positive for the plain stages: no capping there
    #: (capped stages, :meth:`euler_step`, serve the adaptive steps' light cells)
    capped_fixed_steps = False

    def __init__(
        self,
        sm: SphereMesh,
        degree: int = 1,
        *,
        velocity_degree: int | None = None,
        source_degree: int | None = None,
        clusters: bool = True,
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
        u, rho = self.u, self.rho
        flux = upwind_flux(rho, upwind_outflows(u, msh))
        qd = {"quadrature_degree": 2 * k + vdeg}  # exact for the polynomial parts
        cell_term = rho * ufl.dot(u, ufl.grad(q))
        self.clusters = bool(clusters)
        plain = cell_term * ufl.dx(metadata=qd) - (q("+") - q("-")) * flux * ufl.dS(metadata=qd)
        self.form = self._plain_form = fem.form(plain)
        #: the UFL forms (:class:`~solver.transport._active_dg.ActiveDG` compiles them for
        #: chosen cells and facets)
        self.ufl_forms = {"plain": plain}
        if self.clusters:  # cluster cells: DG0 donor flux of the averages (module doc)
            V0 = fem.functionspace(msh, ("DG", 0))
            W0 = fem.functionspace(msh, ("DG", 0, (gdim,)))
            self.tau = fem.Function(V0, name="cluster_cell")
            self.rbar = fem.Function(V0, name="average")
            self.uc = fem.Function(W0, name="centroid_velocity")
            self.a = fem.Function(W0, name="directional_velocity")
            self._stencil = cell_stencil(sm)
            mid = basix.geometry(cell).mean(axis=0)[None, :]
            self._cw = basix.create_element(basix.ElementFamily.P, cell, vdeg).tabulate(0, mid)[
                0, 0, :, 0
            ]  # nodal velocity -> centroid
            self._udofs = self.Vu.dofmap.list  # local cells, ghosts included
            nodes = self.Vu.tabulate_dof_coordinates()[:, :gdim][self._udofs[:nown]]
            self._out = nodes - sm.centroids[:, None, :]  # centroid -> velocity nodes
            tau = self.tau
            tf = ufl.max_value(tau("+"), tau("-"))
            donor = upwind_flux(self.rbar, upwind_outflows(self.uc, msh, donor=True,
                                                           direction=self.a))  # fmt: skip
            flux = (1.0 - tf) * flux + tf * donor
            cell_term = (1.0 - tau) * cell_term
            zone = cell_term * ufl.dx(metadata=qd) - (q("+") - q("-")) * flux * ufl.dS(metadata=qd)
            self._zone_form = fem.form(zone)
            self.ufl_forms["zone"] = zone
        self._b = la.vector(self.V.dofmap.index_map, 1)
        self._zone = None  # cluster weight τ of the owned cells at the last rhs

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

    def limit(self, state: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Zhang–Shu scaling toward the cell average: ``ρ >= 0`` at the limiter points.

        Only columns ``1:`` change (by a factor ``θ ∈ [0, 1]``), so cell averages and mass
        are kept exactly. ``θ`` is ``ρ̄ / (ρ̄ - min_p ρ(p))`` shrunk by ``MARGIN`` (relative),
        so the minimum is ``MARGIN ρ̄ > 0`` rather than a round-off ``±1e-17 ρ̄``: a negative
        round-off trace would flow into an empty neighbour and give it a ``-1e-24`` average.
        A cell with a negative average (a CFL violation) is made constant and left negative,
        for the caller to report. ``rows``: only these cells (the others are returned as they
        are; :class:`~solver.transport._active_dg.ActiveDG`).
        """
        zone = self._zone
        if zone is not None and zone.shape[0] != state.shape[0]:
            zone = None
        if rows is None:
            return self._limit(state, self._lim, zone)
        out = state.copy()
        out[rows] = self._limit(state[rows], self._lim[rows], None if zone is None else zone[rows])
        return out

    @staticmethod
    def _limit(state: np.ndarray, lim: np.ndarray, zone: np.ndarray | None) -> np.ndarray:
        """:meth:`limit` of the cells of ``state`` (their ``_lim`` rows and cluster weights)."""
        if zone is not None and zone.any():
            state = state.copy()  # the cluster zones of the last right-hand side: constant
            state[:, 1:] *= 1.0 - zone[:, None]
        mean = state[:, 0]
        vals = np.einsum("cpj,cj->cp", lim, state[:, 1:])  # ρ - ρ̄ at the points
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
            raise ValueError("initial density must be finite and >= 0 on every cell")
        rhs = np.einsum("cq,qi->ci", vals * detj * wts, self._tab(pts))
        state = self.from_nodal(np.einsum("cij,cj->ci", self._minv, rhs))
        state[:, 0] = rhs.sum(axis=1) / self.sm.areas  # exact mean of the quadrature
        return self.limit(state / unit_mass(self.sm, state[:, 0]))

    def max_time_step(self, speed: float, cfl: float) -> float:
        """``cfl * CFL_FACTOR[tdim][k] * min_K |K| / |∂K| / speed`` (stable and positive for
        cfl <= 1)."""
        check_cfl(cfl)
        fac = CFL_FACTOR[self.sm.gdim - 1][self.degree]
        return cfl * fac * self.sm.min_area_per_perimeter() / max(speed, 1e-300)

    def rhs(self, velocity: np.ndarray, state: np.ndarray) -> np.ndarray:
        """``d state/dt`` on owned cells for owned nodal ``velocity`` and an owned state."""
        return self._rhs(velocity, state)

    def _set_velocity(self, velocity: np.ndarray) -> None:
        """The owned nodal velocity, and the ghosts' by a forward scatter."""
        u = self.u.x
        u.array[: velocity.size] = np.asarray(velocity, dtype=float).ravel()
        u.scatter_forward()

    def _rhs(self, velocity, state, theta: np.ndarray | None = None) -> np.ndarray:
        """:meth:`rhs`, with the outflow of each owned cell scaled by ``theta`` (the capped
        stages of :meth:`euler_step`: the cell's density in the flux form is ``θ_K ρ``, so
        what leaves ``K`` is scaled and what enters it is not; the zone weights are those of
        the unscaled averages)."""
        self._set_velocity(velocity)
        nodal = self.nodal(state)
        self.rho.x.array[self._dofs] = nodal if theta is None else nodal * theta[:, None]
        self.rho.x.scatter_forward()
        if self.clusters:
            tau = self._zone = self._set_cluster_fields(state[:, 0], theta)
        b = self._b
        b.array[:] = 0.0
        fem.assemble_vector(b.array, self.form)
        b.scatter_reverse(la.InsertMode.add)
        bk = b.array[self._dofs]  # (nown, n): residual tested with the nodal basis
        g = np.einsum("cij,cj->ci", self._minv, bk)  # nodal time derivative
        out = np.empty_like(g)
        out[:, 0] = bk.sum(axis=1) / self.sm.areas  # tested with q = 1: exact mass balance
        out[:, 1:] = g[:, 1:] - g[:, :1]
        if self.clusters:
            out[:, 1:] *= 1.0 - tau[:, None]  # cluster cells stay constant
        return out

    def _cell_limits(self, velocity: np.ndarray) -> np.ndarray:
        """``Δt_K = CFL_FACTOR · |K| / (|∂K| U_K)``: the positivity step of each owned cell
        with its own speed ``U_K`` — the largest nodal ``|u|`` of the cell and (with the
        cluster zones, whose donor flux reads the neighbours' velocities) of its neighbours,
        times the Lebesgue constant of the velocity's nodes (1 for P1; P2: 5/4 on intervals,
        5/3 on triangles), so a bound of ``|u|`` on the cell. The a-priori step
        (:meth:`max_time_step`) is the same with one global speed."""
        self._set_velocity(velocity)
        gdim = self.sm.gdim
        nodes = np.linalg.norm(self.u.x.array.reshape(-1, gdim), axis=1)
        speed = nodes[self.Vu.dofmap.list].max(axis=1)  # local cells, ghosts included
        own = speed[: self._nown]
        if self.clusters:
            own = np.maximum(own, speed[self._stencil["nbr"]].max(axis=1))
        leb = 1.0 if self.Vu.element.basix_element.degree == 1 else (1.25 if gdim == 2 else 5 / 3)
        fac = CFL_FACTOR[gdim - 1][self.degree]
        return fac * self.sm.areas / (self.sm.perimeters * np.maximum(leb * own, 1e-300))

    def positivity_time_step(self, velocity: np.ndarray) -> float:
        """``min_K Δt_K`` (:meth:`_cell_limits`), the same on every rank."""
        local = float(np.min(self._cell_limits(velocity), initial=np.inf))
        return self.sm.comm.allreduce(local, op=MPI.MIN)

    def step_limits(self, velocity: np.ndarray, state: np.ndarray, tail: float) -> tuple:
        """``(Δt_+, Δt_m)``: :meth:`positivity_time_step` over all cells and over the cells
        that hold all but ``tail`` of the mass (:func:`mass_floor`), as
        :meth:`DG0Upwind.step_limits`; steps between the two take :meth:`euler_step`."""
        lim = self._cell_limits(velocity)
        m = state[:, 0] * self.sm.areas
        floor = mass_floor(self.sm.comm, m, tail)
        comm = self.sm.comm
        low = (float(np.min(lim, initial=np.inf)), float(np.min(lim[m >= floor], initial=np.inf)))
        return tuple(comm.allreduce(x, op=MPI.MIN) for x in low)

    def euler_step(self, velocity: np.ndarray, state: np.ndarray, dt: float) -> np.ndarray:
        """Forward Euler ``state + Δt d state/dt`` with the outflow of every cell whose
        positivity step ``Δt_K`` (:meth:`_cell_limits`) is below ``Δt`` scaled by
        ``θ_K = Δt_K / Δt`` and its slopes set to zero (a constant cell sends out at most what
        it holds in ``Δt_K``): the light cells that adaptive steps leave out of the step
        (:meth:`step_limits`) stay positive, as DG0's capped cells do, and mass is
        conserved (the scaled flux leaves ``K`` and enters its neighbour). Where no cell is
        capped this is the plain Euler stage."""
        theta = np.minimum(1.0, self._cell_limits(velocity) / dt)
        capped = theta < 1.0
        if not self.sm.comm.allreduce(bool(capped.any()), op=MPI.LOR):
            return state + dt * self._rhs(velocity, state)
        state = state.copy()
        state[capped, 1:] = 0.0
        out = state + dt * self._rhs(velocity, state, theta)
        out[capped, 1:] = 0.0
        return out

    #: layers of neighbours around a cluster cell that go with it (one layer left the S^2
    #: point masses of tests/test_point_mass.py 3.0 % / 3.5 % short at level 3; two: 0.35 % /
    #: 0.24 %)
    CLUSTER_RINGS = 2

    def cluster_cells(self, averages: np.ndarray) -> np.ndarray:
        """Cluster weight ``τ_K ∈ [0, 1]`` of the owned cells for the current velocity (module
        doc), a continuous function of the averages and the nodal velocity (no round-off can
        flip a cell in or out). A *cluster cell* is a local maximum of the cell averages,
        more than twice its lightest neighbour's (the density halves
        within one cell: a linear function does not resolve it), where the flow converges
        (summed over the nodes of the cell, the velocity towards the centroid is more than
        twice the velocity away from it; about 1 for a divergence-free
        flow). Each condition is a steep ramp from 0 to 1 below its threshold
        (:data:`PEAK`, :data:`SHARP`, :data:`SINK`), the core weight is their minimum,
        and the zone weight is the largest core weight within :attr:`CLUSTER_RINGS` layers of
        neighbours. Sets the averages and the weight of the flux form (owned and ghosts):
        collective."""
        r = self.rbar.x
        r.array[: self._nown] = averages
        r.scatter_forward()
        nbr = self._stencil["nbr"]
        nb = r.array[nbr]
        gdim = self.sm.gdim
        un = self.u.x.array.reshape(-1, gdim)[self._udofs[: self._nown]]
        radial = np.einsum("cng,cng->cn", un, self._out)  # > 0: away from the centroid
        inflow, outflow = np.maximum(-radial, 0.0).sum(axis=1), np.maximum(radial, 0.0).sum(axis=1)

        def ramp(x, y, lo, hi):  # 1 where x >= hi y, 0 where x <= lo y (y >= 0), linear between
            return np.clip((x - lo * y) / np.maximum((hi - lo) * y, 1e-300), 0.0, 1.0)

        core = np.minimum(ramp(averages, nb.max(axis=1), *PEAK),
                          ramp(averages, nb.min(axis=1), *SHARP))  # fmt: skip
        core = np.minimum(core, ramp(inflow, outflow, *SINK))
        t = self.tau.x  # the cores and their neighbours
        zone = core
        for _ in range(self.CLUSTER_RINGS):
            t.array[: self._nown] = zone
            t.scatter_forward()
            zone = np.maximum(zone, t.array[nbr].max(axis=1))
        t.array[: self._nown] = zone
        t.scatter_forward()
        return zone

    def _set_cluster_fields(self, averages: np.ndarray, theta=None) -> np.ndarray:
        """Cell averages, cluster indicator, centroid velocity and its directional velocity
        for the flux form; returns the owned cluster cells."""
        tau = self.cluster_cells(averages)  # also sets rbar and tau (owned + ghosts)
        if theta is not None:  # the capped cells' averages in the donor flux (euler_step)
            self.rbar.x.array[: self._nown] = averages * theta
            self.rbar.x.scatter_forward()
        if not self.sm.comm.allreduce(bool(tau.any()), op=MPI.LOR):  # all τ = 0
            self.form = self._plain_form  # no zone anywhere: the DG scheme alone (cheaper)
            return tau
        self.form = self._zone_form
        gdim = self.sm.gdim
        un = self.u.x.array.reshape(-1, gdim)
        uc = np.einsum("n,cng->cg", self._cw, un[self._udofs])  # all local cells
        uc = tangent_project(self._stencil["cen"], uc)
        self.uc.x.array[:] = uc.ravel()
        self.a.x.array[: self._nown * gdim] = directional_velocity(uc, self._stencil).ravel()
        self.a.x.scatter_forward()
        return tau

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
