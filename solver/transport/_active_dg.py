"""The stages of :class:`~solver.transport.DGUpwind` (DG1, DG2) on the cells the velocity
reaches: the flux form assembled over chosen cells and facets (DOLFINx integration domains).

With the active set (:mod:`solver.transport._active`) the nodal velocity is zero outside the
nodes of the active cells. Every term of the operator's flux form is a product with the
velocity: the cell term ``(1 - τ) ρ u·∇q`` vanishes on a cell whose velocity nodes are all
zero (``u`` is a Lagrange field: zero on the cell), the facet flux ``u_n ρ^{up}`` on a facet
whose nodes are zero, and the donor flux of the cluster zones is made of the centroid
velocity ``u_c`` (the nodal velocity at the centroid: zero on those cells) and the
directional velocity ``a`` (made of ``u_c`` of the cell and its facet neighbours). The cluster
weight of a cell is zero where its velocity is (the sink condition has no inflow), so its
zones lie within two layers of the *moving* cells (those with a non-zero velocity node).

:class:`ActiveDG` therefore computes, at every stage, the moving cells, the cluster weights and
``u_c``, ``a`` on them and their layers, and assembles the form over the moving cells and the
facets that touch a moving cell or a cell with ``a ≠ 0`` only (the form compiled once with a
subdomain id; a :func:`dolfinx.fem.create_form` per stage with the entity lists: ~0.2 ms);
the density enters the form on the cells next to those facets only. The terms left out are
exactly zero, so the right-hand side, the capped stages, the positivity limits and the limiter
are the operator's for the same velocity (to round-off; in practice bit for bit), at a cost
that follows the mass: positivity, conservation to round-off and everything else are the
operator's. Outside those cells a stage leaves the state as it is (its right-hand side is
zero there), and the limiter works on the cells a stage changed (a convex combination of
limited states passes the limiter, so SSP-RK3's combinations need it nowhere else; the first
call limits every cell).
"""

from __future__ import annotations

import numpy as np
import ufl
from dolfinx import fem, la
from mpi4py import MPI

from ..velocity import tangent_project
from ._dg import CFL_FACTOR, DGUpwind
from ._dg0 import _nb, directional_velocity_numpy

__all__ = ["ActiveDG"]


def _csr(rows: np.ndarray, cols: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(indptr, indices)``: for each ``r < n`` the ``cols`` paired with it in ``rows``."""
    order = np.argsort(rows, kind="stable")
    return np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))]), cols[order]


def _take(csr: tuple[np.ndarray, np.ndarray], idx: np.ndarray) -> np.ndarray:
    """The entries of the rows ``idx`` of a CSR map (with repeats)."""
    ptr, ind = csr
    start, stop = ptr[idx], ptr[idx + 1]
    n = stop - start
    total = int(n.sum())
    if not total:
        return ind[:0]
    pos = np.repeat(start - np.concatenate([[0], np.cumsum(n)[:-1]]), n) + np.arange(total)
    return ind[pos]


def _members(n: int, *parts: np.ndarray) -> np.ndarray:
    """The distinct indices ``< n`` in ``parts``, ascending (a mask: no sort)."""
    mask = np.zeros(n, dtype=bool)
    for p in parts:
        mask[p] = True
    return np.flatnonzero(mask)


class ActiveDG:
    """A :class:`~solver.transport.DGUpwind` whose stages work on the cells the velocity
    reaches (module doc): everything else is delegated to the operator. Its fields (velocity,
    density, cluster fields) are its own, so the operator's are left as the operator wrote
    them.

    ``last``: the cells integrated, the facets integrated and the cells whose density entered
    the form at the last stage (this rank).
    """

    def __init__(self, op):
        if not isinstance(op, DGUpwind):
            raise ValueError(f"ActiveDG needs a DGUpwind operator, got {type(op).__name__}")
        self.op = op
        sm, msh = op.sm, op.sm.mesh
        comm, nown, tdim, gdim = sm.comm, op._nown, msh.topology.dim, sm.gdim
        self._par = comm.size > 1
        names = ("u", "rho", "tau", "rbar", "uc", "a") if op.clusters else ("u", "rho")
        mine = {}
        for n in names:
            f = getattr(op, n)
            mine[f] = fem.Function(f.function_space, name=f.name)
            setattr(self, n, mine[f])
        # views of the local arrays (owned, then ghosts)
        self._u = self.u.x.array.reshape(-1, gdim)
        self._rho = self.rho.x.array
        if op.clusters:
            self._tau, self._rbar = self.tau.x.array, self.rbar.x.array
            self._uc, self._a = self.uc.x.array.reshape(-1, gdim), self.a.x.array.reshape(-1, gdim)
        self._b = la.vector(op.V.dofmap.index_map, 1)
        self._barr = self._b.array
        # the forms on subdomain 1, compiled once; a C++ form per stage with its entities
        self._forms = {}
        ftype = fem.forms.form_cpp_creator(np.float64)
        for name, form in op.ufl_forms.items():
            sub = ufl.Form([i.reconstruct(subdomain_id=1) for i in form.integrals()])
            cf = fem.compile_form(comm, sub, form_compiler_options={"scalar_type": np.float64})
            orig = ufl.algorithms.extract_coefficients(sub)
            ufcx = cf.ufcx_form
            coeffs = {f"w{i}": mine[orig[ufcx.original_coefficient_positions[i]]]._cpp_object
                      for i in range(ufcx.num_coefficients)}  # fmt: skip
            ptr = cf.module.ffi.cast("uintptr_t", cf.module.ffi.addressof(ufcx))
            self._forms[name] = (cf, ftype, ptr, coeffs)
        self._spaces = [op.V._cpp_object]
        # every owned interior facet as DOLFINx integrates it: (cell+, facet+, cell-, facet-)
        msh.topology.create_connectivity(tdim - 1, tdim)
        facets = np.arange(msh.topology.index_map(tdim - 1).size_local, dtype=np.int32)
        ent = fem.compute_integration_domains(fem.IntegralType.interior_facet, msh.topology,
                                              facets).reshape(-1, 4)  # fmt: skip
        self._facet_ent = ent
        self._nloc = nloc = len(op.Vu.dofmap.list)  # local cells, ghosts included
        rows = np.arange(len(ent))
        self._cell_facets = _csr(np.concatenate([ent[:, 0], ent[:, 2]]),
                                 np.concatenate([rows, rows]), nloc)  # fmt: skip
        # velocity nodes -> local cells; local cell -> the owned cells next to it
        ud = np.asarray(op.Vu.dofmap.list)
        self._udofs = ud
        self._node_cells = _csr(ud.ravel(), np.repeat(np.arange(nloc), ud.shape[1]),
                                len(self._u))  # fmt: skip
        if op.clusters:
            nbr = op._stencil["nbr"]
        else:
            from ._active import facet_neighbours

            nbr = facet_neighbours(sm)
        self._nbr = nbr
        self._owned_next = _csr(nbr.ravel(), np.repeat(np.arange(nown), nbr.shape[1]), nloc)
        leb = 1.0 if op.Vu.element.basix_element.degree == 1 else (1.25 if gdim == 2 else 5 / 3)
        self._leb, self._fac = leb, CFL_FACTOR[gdim - 1][op.degree]
        # a cell of zero speed: the operator's limit there (the smallest of them)
        self._lim0 = float(np.min(self._fac * sm.areas / (sm.perimeters * 1e-300),
                                  initial=np.inf))  # fmt: skip
        self._zone = np.zeros(nown)  # the owned cluster weights (zero outside self._zset)
        self._zset = np.zeros(0, dtype=np.int64)
        self._uc_set = np.zeros(0, dtype=np.int64)  # local cells with u_c set
        self._a_set = np.zeros(0, dtype=np.int64)  # owned cells with a set
        self._rows = None  # the cells the last stage changed (None: limit every cell)
        self.last = (0, 0, 0)

    def __getattr__(self, name):
        return getattr(self.op, name)

    # --- the region ---------------------------------------------------------------------

    def _moving(self, velocity: np.ndarray) -> np.ndarray:
        """Sets the velocity (owned and ghosts); returns the local cells (ghosts included)
        with a non-zero velocity node, ascending."""
        ua = self._u
        ua.ravel()[: velocity.size] = np.asarray(velocity, dtype=float).ravel()
        if self._par:
            self.u.x.scatter_forward()
        nodes = np.flatnonzero(np.any(ua != 0.0, axis=1))
        return _members(self._nloc, _take(self._node_cells, nodes))

    def _owned_near(self, cells: np.ndarray) -> np.ndarray:
        """The owned cells that are, or are next to, the local ``cells``."""
        return _members(self.op._nown, cells[cells < self.op._nown],
                        _take(self._owned_next, cells))  # fmt: skip

    def _speed_cells(self, moving: np.ndarray) -> np.ndarray:
        """The owned cells whose positivity step sees a non-zero speed (their own nodes, and
        with the cluster zones their neighbours')."""
        own = moving[moving < self.op._nown]
        return self._owned_near(moving) if self.op.clusters else own

    def _cell_limits(self, cells: np.ndarray) -> np.ndarray:
        """The operator's ``_cell_limits`` on the owned ``cells`` (velocity already set)."""
        op, ua = self.op, self._u
        speed = np.linalg.norm(ua[self._udofs[cells]], axis=2).max(axis=1)
        if op.clusters:
            nbn = np.linalg.norm(ua[self._udofs[self._nbr[cells]]], axis=3)
            speed = np.maximum(speed, nbn.max(axis=(1, 2)))
        sm = op.sm
        return (
            self._fac
            * sm.areas[cells]
            / (sm.perimeters[cells] * np.maximum(self._leb * speed, 1e-300))
        )

    # --- cluster fields -----------------------------------------------------------------

    def _cluster_zone(self, averages: np.ndarray, moving: np.ndarray) -> np.ndarray:
        """The operator's :meth:`~solver.transport.DGUpwind.cluster_cells` (zero outside two
        layers of the moving cells; sets ``rbar`` and ``tau``); returns the owned cells with
        a non-zero weight."""
        from ._dg import PEAK, SHARP, SINK

        op, nown = self.op, self.op._nown
        r = self._rbar
        r[:nown] = averages
        if self._par:
            self.rbar.x.scatter_forward()
        M = moving[moving < nown]
        nb = r[self._nbr[M]]
        radial = np.einsum("cng,cng->cn", self._u[self._udofs[M]], op._out[M])
        inflow = np.maximum(-radial, 0.0).sum(axis=1)
        outflow = np.maximum(radial, 0.0).sum(axis=1)

        def ramp(x, y, lo, hi):  # the operator's (DGUpwind.cluster_cells)
            return np.clip((x - lo * y) / np.maximum((hi - lo) * y, 1e-300), 0.0, 1.0)

        a = averages[M]
        core = np.minimum(ramp(a, nb.max(axis=1), *PEAK), ramp(a, nb.min(axis=1), *SHARP))
        core = np.minimum(core, ramp(inflow, outflow, *SINK))
        zone, t = self._zone, self._tau
        zone[self._zset] = 0.0
        t[self._zset] = 0.0
        Z = M[core > 0]
        zone[Z] = core[core > 0]
        for _ in range(op.CLUSTER_RINGS):
            t[Z] = zone[Z]
            src = Z
            if self._par:
                t[nown:] = 0.0
                self.tau.x.scatter_forward()
                src = np.concatenate([Z, nown + np.flatnonzero(t[nown:])])
            cand = _members(nown, _take(self._owned_next, src))
            zone[cand] = np.maximum(zone[cand], t[self._nbr[cand]].max(axis=1))
            Z = _members(nown, Z, cand[zone[cand] > 0])
        t[Z] = zone[Z]
        if self._par:
            t[nown:] = 0.0
            self.tau.x.scatter_forward()
        self._zset = Z
        return Z

    def _donor_fields(self, moving: np.ndarray) -> np.ndarray:
        """``u_c`` on the moving cells and ``a`` on them and their neighbours (zero
        elsewhere), as the operator's ``_set_cluster_fields``; returns the local cells with
        ``a ≠ 0``."""
        op, nown = self.op, self.op._nown
        st = op._stencil
        uc, a = self._uc, self._a
        uc[self._uc_set] = 0.0
        v = np.einsum("n,cng->cg", op._cw, self._u[self._udofs[moving]])
        uc[moving] = tangent_project(st["cen"][moving], v)
        self._uc_set = moving
        a[self._a_set] = 0.0
        F = self._owned_near(moving)
        k, nb = len(F), st["nbr"][F]
        u_ext = np.concatenate([uc[F], uc[nb.ravel()]])
        nb_ext = k + np.arange(nb.size).reshape(nb.shape)
        if _nb is not None:
            from ._dg0 import _nb_directional_velocity

            C, B = st["cone"]
            aF = _nb_directional_velocity(u_ext, nb_ext, st["nt"][F], st["d_area"][F],
                                          C[:, F], B[:, F])  # fmt: skip
        else:  # pragma: no cover - without numba
            sub = {"nbr": nb_ext, "nt": st["nt"][F], "d_area": st["d_area"][F],
                   "cone": (st["cone"][0][:, F], st["cone"][1][:, F])}  # fmt: skip
            aF = directional_velocity_numpy(u_ext, sub)
        a[F] = aF
        self._a_set = F
        live = F[np.any(aF != 0.0, axis=1)]
        if self._par:
            a[nown:] = 0.0
            self.a.x.scatter_forward()
            live = np.concatenate([live, nown + np.flatnonzero(np.any(a[nown:] != 0.0, axis=1))])
        return live

    # --- the stages ---------------------------------------------------------------------

    def _rhs(self, velocity, state, theta=None, moving=None) -> np.ndarray:
        """The operator's ``_rhs`` on the region (module doc)."""
        op, nown, comm = self.op, self.op._nown, self.op.sm.comm
        if moving is None:
            moving = self._moving(velocity)
        avg = state[:, 0]
        live = moving
        name = "plain"
        if op.clusters:
            Z = self._cluster_zone(avg, moving)
            if theta is not None:
                self._rbar[:nown] = avg * theta
                if self._par:
                    self.rbar.x.scatter_forward()
            if comm.allreduce(bool(Z.size), op=MPI.LOR) if self._par else bool(Z.size):
                name = "zone"
                live = _members(self._nloc, moving, self._donor_fields(moving))
        # the facets with a live side, the moving cells, the cells next to those facets
        rows = _members(len(self._facet_ent), _take(self._cell_facets, live))
        ent = self._facet_ent[rows]
        cells = moving[moving < nown].astype(np.int32)
        near = self._owned_near(live)
        a = state[near]  # the operator's nodal() on these cells
        c0 = a[:, 0] - np.einsum("cj,cj->c", a[:, 1:], op._mu[near, 1:])
        nodal = c0[:, None] + a
        nodal[:, 0] = c0
        dofs = op._dofs[near]
        self._rho[dofs] = nodal if theta is None else nodal * theta[near, None]
        if self._par:
            self.rho.x.scatter_forward()
        cf, ftype, ptr, coeffs = self._forms[name]
        f = ftype(ptr, self._spaces, coeffs, {}, {
            fem.IntegralType.cell: [(1, cells)],
            fem.IntegralType.interior_facet: [(1, ent.ravel())]}, [],
            op.sm.mesh._cpp_object)  # fmt: skip
        b = self._barr
        b[:] = 0.0
        fem.assemble_vector(b, fem.forms.Form(f, cf.ufcx_form, cf.code))
        if self._par:
            self._b.scatter_reverse(la.InsertMode.add)
        bk = b[dofs]
        g = np.einsum("cij,cj->ci", op._minv[near], bk)
        out = np.zeros_like(state)
        out[near, 0] = bk.sum(axis=1) / op.sm.areas[near]
        out[near, 1:] = g[:, 1:] - g[:, :1]
        if op.clusters:
            out[near, 1:] *= 1.0 - self._zone[near, None]
            self._rows = _members(nown, near, self._zset)
        else:
            self._rows = near
        self.last = (len(cells), len(rows), len(near))
        return out

    def rhs(self, velocity: np.ndarray, state: np.ndarray) -> np.ndarray:
        """The operator's :meth:`~solver.transport.DGUpwind.rhs` on the region."""
        return self._rhs(velocity, state)

    def euler_step(self, velocity: np.ndarray, state: np.ndarray, dt: float) -> np.ndarray:
        """The operator's capped :meth:`~solver.transport.DGUpwind.euler_step` on the region
        (``θ_K = 1`` where the speed is zero)."""
        moving = self._moving(velocity)
        S = self._speed_cells(moving)
        thS = np.minimum(1.0, self._cell_limits(S) / dt)
        capped = S[thS < 1.0]
        comm = self.op.sm.comm
        if not (comm.allreduce(bool(capped.size), op=MPI.LOR) if self._par else capped.size):
            return state + dt * self._rhs(velocity, state, moving=moving)
        theta = np.ones(len(state))
        theta[S] = thS
        state = state.copy()
        state[capped, 1:] = 0.0
        out = state + dt * self._rhs(velocity, state, theta, moving=moving)
        out[capped, 1:] = 0.0
        return out

    def step_limits(self, velocity: np.ndarray, state: np.ndarray, tail: float) -> tuple:
        """The operator's :meth:`~solver.transport.DGUpwind.step_limits` (the cells of zero
        speed: their common limit, far above any step)."""
        from ._forms import mass_floor

        op = self.op
        S = self._speed_cells(self._moving(velocity))
        lim = self._cell_limits(S)
        m = state[:, 0] * op.sm.areas
        floor = mass_floor(op.sm.comm, m, tail)
        low = (
            min(float(np.min(lim, initial=np.inf)), self._lim0),
            min(float(np.min(lim[m[S] >= floor], initial=np.inf)), self._lim0),
        )
        comm = op.sm.comm
        return tuple(comm.allreduce(x, op=MPI.MIN) for x in low) if self._par else low

    def limit(self, state: np.ndarray) -> np.ndarray:
        """The operator's limiter on the cells the last stage changed (every cell at the
        first call)."""
        rows, self._rows = self._rows, None
        self.op._zone = self._zone if self.op.clusters else None
        return self.op.limit(state, rows)
