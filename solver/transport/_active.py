"""Active targets of a transport operator: the velocity nodes of the cells that hold the mass
and of their neighbours (DOLFINx: ghost layers, dofmaps, scatters).

The upwind fluxes of a cell ``K`` are its density times outflow speeds made of the velocity
at ``K``'s own nodes and, through the facet velocity and the directional / cluster terms, at
its facet neighbours' nodes. So the transport of the *heavy* cells (those at or above the
cut of :func:`solver.velocity._active.tail_cut`; the others hold together at most a tail
``τ`` of the mass) needs the velocity at the nodes of the heavy cells and of their facet
neighbours (the *ring*) and nowhere else;
every other cell holds, with the other light cells, at most ``τ`` of the mass. The velocity
is set to zero at the nodes outside (:meth:`solver.NonlocalVelocity.evaluate_active`), so a
run with the active set differs from the full run only in how the light cells (together at
most ``τ`` of the mass at every stage) move their content: each stage still conserves the
mass to round-off and keeps every cell ``>= 0`` (the fluxes and the capped stages are those
of the full scheme). Mass that a heavy cell sends out in a stage reaches its facet neighbours
only (the adaptive step moves the heavy cells' mass at most one cell per step), which are in
the ring: a cell that receives mass from the heavy cells has its velocity before the step
that fills it, and the set is chosen again at every stage.
"""

from __future__ import annotations

import numpy as np
from dolfinx import fem, la
from mpi4py import MPI

from ..velocity._active import tail_cut
from ._forms import mass_floor

__all__ = ["ActiveTargets", "ActiveDG0", "facet_neighbours"]


def facet_neighbours(sm) -> np.ndarray:
    """``(num_owned, facets per cell)``: the local index (ghosts included) of the cell across
    each facet of every owned cell (closed sphere mesh: every facet has two cells)."""
    top, tdim = sm.mesh.topology, sm.gdim - 1
    top.create_connectivity(tdim, tdim - 1)
    top.create_connectivity(tdim - 1, tdim)
    c2f, f2c = top.connectivity(tdim, tdim - 1), top.connectivity(tdim - 1, tdim)
    nown = sm.num_owned
    facets = c2f.array.reshape(-1, sm.gdim)[:nown]
    off = f2c.offsets
    if np.any(off[facets + 1] - off[facets] != 2):  # pragma: no cover - closed sphere mesh
        raise RuntimeError("a facet of an owned cell does not have two local cells")
    c0, c1 = f2c.array[off[facets]], f2c.array[off[facets] + 1]
    return np.where(c0 == np.arange(nown)[:, None], c1, c0)


class ActiveTargets:
    """The boolean mask of an operator's owned velocity targets that are active (module doc).

    Parameters
    ----------
    op : transport operator (:class:`~solver.transport.DG0Upwind`,
        :class:`~solver.transport.DGUpwind`)
    tail : float
        The light cells, together at most this fraction of the mass, are left out (with
        those of their neighbours that are not next to a heavy cell).
    """

    def __init__(self, op, tail: float):
        if not (np.isfinite(tail) and 0 <= tail < 1):
            raise ValueError(f"active tail must be in [0, 1), got {tail!r}")
        self.op, self.tail = op, float(tail)
        sm = op.sm
        self._nbr = facet_neighbours(sm)
        self._flag = fem.Function(sm.V0, name="active")  # owned + ghost cell flags
        self._nown = sm.num_owned
        # the targets of each local cell (DG0 donor: the cell itself)
        dm = op.Vu.dofmap
        self._cell_nodes = None if _one_per_cell(op) else dm.list
        if self._cell_nodes is not None:
            self._nodes = la.vector(dm.index_map, 1)

    @property
    def keyed(self) -> bool:
        """Whether :meth:`from_gathered` applies (one target per owned cell, in order)."""
        return self._cell_nodes is None

    def _global_neighbours(self) -> np.ndarray:
        """``(num_cells, facets per cell)``: the keys of every cell's facet neighbours, in key
        order, the same on every rank (gathered once)."""
        if getattr(self, "_gnbr", None) is None:
            from ..parallel import allgather_rows

            sm, nown = self.op.sm, self._nown
            keys = fem.Function(sm.V0, name="keys")  # the ghosts' keys (exact below 2^53)
            keys.x.array[:nown] = sm.keys
            keys.x.scatter_forward()
            nb = np.rint(keys.x.array[self._nbr]).astype(np.int64)
            counts = np.array(sm.comm.allgather(nown))
            g = np.empty((int(counts.sum()), nb.shape[1]), dtype=np.int64)
            g[allgather_rows(sm.comm, sm.keys, counts)] = allgather_rows(sm.comm, nb, counts)
            self._gnbr = g
        return self._gnbr

    def from_gathered(self, w: np.ndarray) -> tuple[np.ndarray, int]:
        """``(mask, count)``: :meth:`__call__`'s mask of the owned targets and the number of
        active targets over all ranks, from the source weights of every cell gathered in key
        order (``w``: :meth:`solver.NonlocalVelocity.gather` of ``ρ_K |K|``; :attr:`keyed`
        operators only). Every rank holds every cell's mass, so the cut, the heavy cells and
        their ring are found on the whole mesh without communication (the same on every
        rank; the cut's ladder summed in key order)."""
        w = np.ascontiguousarray(w, dtype=float)
        heavy = np.flatnonzero(w >= tail_cut(w, self.tail * float(w.sum())))
        if getattr(self, "_pos", None) is None:  # key -> owned index (-1: another rank's)
            self._pos = np.full(w.size, -1, dtype=np.int64)
            self._pos[self.op.sm.keys] = np.arange(self._nown)
        return _ring_of(heavy, self._global_neighbours(), self._pos, self._nown)

    def _total(self, m: np.ndarray) -> float:
        s = float(m.sum())
        return self.op.sm.comm.allreduce(s) if self.op.sm.comm.size > 1 else s

    def __call__(self, state: np.ndarray) -> np.ndarray:
        """Active owned targets for ``state`` (collective)."""
        op, sm, nown = self.op, self.op.sm, self._nown
        m = op.cell_averages(state) * sm.areas  # unit total mass (evolve normalises it)
        heavy = m >= tail_cut(m, self.tail * self._total(m), sm.comm)
        f = self._flag.x
        if sm.comm.size > 1:
            f.array[:nown] = heavy
            f.scatter_forward()  # the ghosts' flags (one rank: no ghosts)
            act = _ring(f.array, self._nbr)  # heavy, or a heavy neighbour
        else:
            act = _ring(heavy, self._nbr)
        if self._cell_nodes is None:
            return act
        f.array[:nown] = act
        if sm.comm.size > 1:
            f.scatter_forward()
        v = self._nodes
        v.array[:] = 0.0
        cells = np.flatnonzero(f.array > 0)
        v.array[self._cell_nodes[cells].ravel()] = 1.0
        if sm.comm.size > 1:
            v.scatter_reverse(la.InsertMode.add)
        return v.array[: op.num_targets] > 0


def _one_per_cell(op) -> bool:
    """The targets are the owned cells in order (DG0 donor flux: one velocity per cell)."""
    return op.num_targets == op.sm.num_owned and getattr(op, "flux", None) == "donor"


class ActiveDG0:
    """A :class:`~solver.transport.DG0Upwind` (donor flux, first moment) whose stages work on
    the cells the velocity reaches: everything else is delegated to the operator.

    With the active set the velocity is zero outside the active cells. A cell's outflow speeds
    are made of its own velocity, its neighbours' (facet velocity) and its directional velocity
    ``a_K``, itself made of the same (module doc of :mod:`solver.transport._dg0`): outside the
    cells whose velocity or whose neighbour's velocity is non-zero (the *flux region*) they are
    exactly zero. :meth:`euler_step` and :meth:`rhs` compute ``a_K`` (and its cluster weight)
    on the flux region only, and the facet fluxes on the facets that touch a cell with a
    non-zero velocity or directional velocity only; the facets left out carry exactly zero, so
    the result is the operator's own for the same velocity (the same sums, without terms that
    are exactly zero), at a cost that follows the mass. The positivity cap, conservation and
    the rest are the operator's.
    """

    #: a flux region larger than this fraction of the owned cells is computed on all of them
    #: (the operator's kernels without copying the stencil's rows: a spread density)
    WHOLE = 0.25

    def __init__(self, op):
        from ._dg0 import DG0Upwind

        if not (isinstance(op, DG0Upwind) and op.first_moment and op._fv is not None):
            raise ValueError("ActiveDG0 needs a DG0Upwind with the donor flux and first moment")
        self.op = op
        fd, gdim = op._fv, op.sm.gdim
        self._plus, self._minus = fd["plus"], fd["minus"]
        coo = fd["G"][0].tocoo()  # row f: ñ_f w |F| on the '+' cell's velocity components
        self._ntf = np.zeros((len(self._plus), gdim))
        self._ntf[coo.row, coo.col % gdim] = coo.data
        st = op._stencil
        self._nbr, self._nt, self._dk = st["nbr"], st["nt"], st["d_area"]
        self._C, self._B = st["cone"]
        #: cells of the flux region and facets computed at the last call (this rank)
        self.last = (0, 0)
        # the owned cells next to each local cell, the facets of each local cell (CSR): the
        # flux region and its facets from the moving cells without a pass over the mesh
        nloc, nown, nbr = op.rho.x.array.size, op._nown, self._nbr
        self._adj = _csr(nbr.ravel(), np.repeat(np.arange(nown), nbr.shape[1]), nloc)
        self._scratch = np.zeros(nloc)  # _bincounts' second sums (left zero)
        nfac = len(self._plus)
        self._c2f = _csr(np.concatenate([self._plus, self._minus]),
                         np.tile(np.arange(nfac), 2), nloc)  # fmt: skip

    def __getattr__(self, name):
        return getattr(self.op, name)

    def _speeds(self, velocity: np.ndarray, rho: np.ndarray):
        """``(facets, sp, sm)``: the facets computed and the outflow speeds of '+' and '-'."""
        from ._dg0 import _nb, cluster_weight, directional_velocity, directional_velocity_numpy

        op, gdim, nown = self.op, self.op.sm.gdim, self.op._nown
        u = op.u.x
        u.array[: velocity.size] = np.asarray(velocity, dtype=float).ravel()
        u.scatter_forward()
        ua = u.array.reshape(-1, gdim)
        nbr = self._nbr
        # the local cells with a velocity (ghosts included) and the flux region F (owned)
        moving, ml, F = _region_sparse(ua, nown, *self._adj)
        k = len(F)
        a = op.a.x
        if rho is not None:
            r = op.rho.x
            r.array[:nown] = rho
            r.scatter_forward()
        if k > self.WHOLE * nown:
            # most of the mesh (a spread density): the operator's kernels on every owned
            # cell, as the operator calls them, without copying the stencil's rows; outside
            # F they give exactly zero, on F the same numbers as the rows below
            aF = directional_velocity(ua, op._stencil)
            if rho is not None:
                aF *= cluster_weight(op.rho.x.array, nbr, op.cluster_scale)[:, None]
            a.array[: aF.size] = aF.ravel()
            a.array[aF.size :] = 0.0
        else:
            # a_K on F: the operator's kernels on the region's rows (the row's own cell first)
            nb = nbr[F]
            u_ext = np.concatenate([ua[F], ua[nb.ravel()]])
            nb_ext = k + np.arange(nb.size).reshape(nb.shape)
            st = {"nbr": nb_ext, "nt": self._nt[F], "d_area": self._dk[F],
                  "cone": (self._C[:, F], self._B[:, F])}  # fmt: skip
            if _nb is not None:
                from ._dg0 import _nb_directional_velocity

                aF = _nb_directional_velocity(u_ext, nb_ext, st["nt"], st["d_area"], *st["cone"])
            else:  # pragma: no cover - without numba
                aF = directional_velocity_numpy(u_ext, st)
            if rho is not None:  # the cluster weight (the positivity limits use a unweighted)
                rl = op.rho.x.array
                wF = cluster_weight(np.concatenate([rl[F], rl[nb.ravel()]]), nb_ext,
                                    op.cluster_scale[F])  # fmt: skip
                aF *= wF[:, None]
            a.array[:] = 0.0
            a.array.reshape(-1, gdim)[F] = aF
        a.scatter_forward()
        aa = a.array.reshape(-1, gdim)
        if k > self.WHOLE * nown:
            E, sp, sm = _edges(self._plus, self._minus, self._ntf, ua, aa, moving)
        else:  # the facets of the live cells only (the same facets, ascending)
            E, sp, sm = _edges_sparse(self._plus, self._minus, self._ntf, ua, aa, ml, F, nown,
                                      *self._c2f)  # fmt: skip
        self.last = (k, len(E))
        return E, sp, sm

    def _cell_outflow(self, E, sp, sm) -> np.ndarray:
        op = self.op
        b = op._b
        pE, mE = self._plus[E], self._minus[E]
        _bincounts(b.array, pE, sp, mE, sm, 1.0, self._scratch)  # bincount(pE) + bincount(mE)
        b.scatter_reverse(la.InsertMode.add)
        return b.array[: op._nown]

    def step_limits(self, velocity: np.ndarray, rho: np.ndarray, tail: float) -> tuple:
        """The operator's :meth:`~solver.transport.DG0Upwind.step_limits` (the outflow rates
        on the flux region; zero elsewhere)."""
        op, comm = self.op, self.op.sm.comm
        out = self._cell_outflow(*self._speeds(velocity, None)).copy()
        m = rho * op.sm.areas
        floor = mass_floor(comm, m, tail)
        pos = out > 0
        heavy = pos & (m >= floor)
        area = op.sm.areas
        lims = np.array([np.min(area[pos] / out[pos], initial=np.inf),
                         np.min(area[heavy] / out[heavy], initial=np.inf)])  # fmt: skip
        if comm.size > 1:  # both limits in one reduction
            comm.Allreduce(MPI.IN_PLACE, lims, op=MPI.MIN)
        return float(lims[0]), float(lims[1])

    def rhs(self, velocity: np.ndarray, rho: np.ndarray) -> np.ndarray:
        """The operator's :meth:`~solver.transport.DG0Upwind.rhs` on the flux region."""
        op = self.op
        E, sp, sm = self._speeds(velocity, rho)
        b = op._b
        rl = op.rho.x.array
        pE, mE = self._plus[E], self._minus[E]
        flux = rl[pE] * sp - rl[mE] * sm
        _bincounts(b.array, mE, flux, pE, flux, -1.0, self._scratch)
        b.scatter_reverse(la.InsertMode.add)
        return b.array[: op._nown] / op.sm.areas

    def euler_step(self, velocity: np.ndarray, rho: np.ndarray, dt: float) -> np.ndarray:
        """The operator's capped :meth:`~solver.transport.DG0Upwind.euler_step` on the flux
        region (``θ_K = 1`` where nothing flows out)."""
        op = self.op
        E, sp, sm = self._speeds(velocity, rho)
        b = op._b
        pE, mE = self._plus[E], self._minus[E]
        o = self._cell_outflow(E, sp, sm)
        th = op._theta.x.array
        _theta(th, op.sm.areas, o, dt)  # min(1, |K| / max(dt o_K, 1e-300)) on the owned cells
        op._theta.x.scatter_forward()
        rl = op.rho.x.array
        flux = rl[pE] * th[pE] * sp - rl[mE] * th[mE] * sm
        _bincounts(b.array, mE, flux, pE, flux, -1.0, self._scratch)
        b.scatter_reverse(la.InsertMode.add)
        return _update(rho, b.array, op.sm.areas, dt)  # max(ρ + dt b / |K|, 0), owned


# --------------------------------------------------------------------------------------------
# the flux region and the facets that carry a flux: compiled passes over the local cells and
# facets (numba; the NumPy twins without it give the same numbers)

try:  # numba is optional
    import numba as _numba
except ImportError:  # pragma: no cover - depends on the environment
    _numba = None


def _ring_numpy(flag: np.ndarray, nbr: np.ndarray) -> np.ndarray:
    act = flag[: len(nbr)] > 0
    for i in range(nbr.shape[1]):
        act |= flag[nbr[:, i]] > 0
    return act


def _region_numpy(ua: np.ndarray, nbr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    moving = np.any(ua != 0.0, axis=1)
    return moving, np.flatnonzero(_ring_numpy(moving, nbr))


def _edges_numpy(plus, minus, ntf, ua, aa, moving) -> tuple:
    live = moving | np.any(aa != 0.0, axis=1)
    E = np.flatnonzero(live[plus] | live[minus])
    pE, mE, nE = plus[E], minus[E], ntf[E]
    up = np.einsum("fi,fi->f", nE, ua[pE])
    um = np.einsum("fi,fi->f", nE, ua[mE])
    avg = 0.5 * (up + um)
    ap = np.einsum("fi,fi->f", nE, aa[pE])
    am = np.einsum("fi,fi->f", nE, aa[mE])
    return (E, np.maximum(avg, 0.0) + np.maximum(ap, 0.0),
            np.maximum(-avg, 0.0) + np.maximum(-am, 0.0))  # fmt: skip


def _csr(rows: np.ndarray, cols: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(ptr, idx)``: the ``cols`` of each row ``0..n-1`` (ascending within a row)."""
    order = np.lexsort((cols, rows))
    ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=ptr[1:])
    return ptr, np.ascontiguousarray(cols[order], dtype=np.int64)


def _ring_of_numpy(heavy, gnbr, pos, nown):
    ring = np.zeros(len(gnbr), dtype=bool)
    ring[heavy] = True
    ring[gnbr[heavy].ravel()] = True
    mask = np.zeros(nown, dtype=bool)
    mine = pos[ring]
    mask[mine[mine >= 0]] = True
    return mask, int(np.count_nonzero(ring))


def _region_sparse_numpy(ua, nown, ptr, idx):
    moving = np.any(ua != 0.0, axis=1)
    ml = np.flatnonzero(moving)
    near = np.concatenate([ml[ml < nown]] + [idx[ptr[c] : ptr[c + 1]] for c in ml])
    return moving, ml, np.unique(near.astype(np.int64))


def _edges_sparse_numpy(plus, minus, ntf, ua, aa, ml, F, nown, ptr, idx):
    moving = np.zeros(len(ua), dtype=bool)
    moving[ml] = True
    return _edges_numpy(plus, minus, ntf, ua, aa, moving)


def _bincounts_numpy(out, i1, w1, i2, w2, sign, scratch):
    out[:] = np.bincount(i1, w1, out.size) + sign * np.bincount(i2, w2, out.size)


def _theta_numpy(th, areas, o, dt):
    th[: areas.size] = np.minimum(1.0, areas / np.maximum(dt * o, 1e-300))


def _update_numpy(rho, b, areas, dt):
    return np.maximum(rho + dt * b[: rho.size] / areas, 0.0)


if _numba is not None:

    @_numba.njit(cache=True)
    def _bincounts(out, i1, w1, i2, w2, sign, scratch):
        """``out[:] = bincount(i1, w1) + sign · bincount(i2, w2)`` (each sum in index order,
        as ``np.bincount``; ``sign`` ±1: exact) without arrays of the mesh's length;
        ``scratch``: zeros of ``out``'s length, left zero."""
        out[:] = 0.0
        for e in range(i1.size):
            out[i1[e]] += w1[e]
        for e in range(i2.size):
            scratch[i2[e]] += w2[e]
        for e in range(i2.size):
            c = i2[e]
            out[c] += sign * scratch[c]
            scratch[c] = 0.0

    @_numba.njit(cache=True)
    def _theta(th, areas, o, dt):
        """The capped stage's outflow fractions ``min(1, |K| / max(dt o_K, 1e-300))``."""
        for c in range(areas.size):
            th[c] = min(1.0, areas[c] / max(dt * o[c], 1e-300))

    @_numba.njit(cache=True)
    def _update(rho, b, areas, dt):
        """``max(ρ_K + dt b_K / |K|, 0)`` on the owned cells."""
        out = np.empty(rho.size)
        for c in range(rho.size):
            out[c] = max(rho[c] + dt * b[c] / areas[c], 0.0)
        return out

    @_numba.njit(cache=True)
    def _ring_of(heavy, gnbr, pos, nown):
        """``(mask, count)``: the owned cells (``pos``: key -> owned index, -1 elsewhere) of
        the heavy cells and their facet neighbours (``gnbr``, by key), and how many there are
        on the whole mesh."""
        ring = np.zeros(len(gnbr), np.bool_)
        mask = np.zeros(nown, np.bool_)
        count = 0
        for h in heavy:
            for j in range(-1, gnbr.shape[1]):
                c = h if j < 0 else gnbr[h, j]
                if not ring[c]:
                    ring[c] = True
                    count += 1
                    if pos[c] >= 0:
                        mask[pos[c]] = True
        return mask, count

    @_numba.njit(cache=True)
    def _region_sparse(ua, nown, ptr, idx):
        """``(moving, moving cells, F)``: :func:`_region` from the moving cells' owned
        neighbours (``ptr``, ``idx``: CSR of the owned cells next to each local cell), without
        a pass over every cell's neighbours; ``F`` ascending."""
        nloc, gdim = ua.shape
        moving = np.zeros(nloc, np.bool_)
        ml = np.empty(nloc, np.int64)
        nm = 0
        for c in range(nloc):
            for i in range(gdim):
                if ua[c, i] != 0.0:
                    moving[c] = True
                    ml[nm] = c
                    nm += 1
                    break
        mark = np.zeros(nown, np.bool_)
        F = np.empty(nown, np.int64)
        k = 0
        for j in range(nm):
            c = ml[j]
            if c < nown and not mark[c]:
                mark[c] = True
                F[k] = c
                k += 1
            for p in range(ptr[c], ptr[c + 1]):
                o = idx[p]
                if not mark[o]:
                    mark[o] = True
                    F[k] = o
                    k += 1
        return moving, ml[:nm], np.sort(F[:k])

    @_numba.njit(cache=True)
    def _facet_speeds(E, plus, minus, ntf, ua, aa):
        """The outflow speeds of '+' and '-' on the facets ``E`` (module doc of :mod:`._dg0`):
        ``(½ (u⁺ + u⁻)·ñ)^± + (a^±·ñ)^±``."""
        ne, gdim = E.size, ua.shape[1]
        sp, sm = np.empty(ne), np.empty(ne)
        for e in range(ne):
            f = E[e]
            p, m = plus[f], minus[f]
            up = um = ap = am = 0.0
            for i in range(gdim):
                up += ntf[f, i] * ua[p, i]
                um += ntf[f, i] * ua[m, i]
                ap += ntf[f, i] * aa[p, i]
                am += ntf[f, i] * aa[m, i]
            avg = 0.5 * (up + um)
            sp[e] = max(avg, 0.0) + max(ap, 0.0)
            sm[e] = max(-avg, 0.0) + max(-am, 0.0)
        return sp, sm

    @_numba.njit(cache=True)
    def _edges_sparse(plus, minus, ntf, ua, aa, ml, F, nown, ptr, idx):
        """:func:`_edges` from the live cells' facets (``ptr``, ``idx``: CSR of each local
        cell's facets): the live cells are the moving ones and those with a directional
        velocity, which only the flux region ``F`` and the ghosts can have."""
        nloc, gdim = ua.shape
        nf = plus.size
        fmark = np.zeros(nf, np.bool_)
        E = np.empty(nf, np.int64)
        ne = 0
        nF, ng = F.size, nloc - nown
        for j in range(ml.size + nF + ng):
            if j < ml.size:
                c = ml[j]
            else:
                c = F[j - ml.size] if j < ml.size + nF else nown + (j - ml.size - nF)
                live = False
                for i in range(gdim):
                    if aa[c, i] != 0.0:
                        live = True
                        break
                if not live:
                    continue
            for p in range(ptr[c], ptr[c + 1]):
                f = idx[p]
                if not fmark[f]:
                    fmark[f] = True
                    E[ne] = f
                    ne += 1
        E = np.sort(E[:ne])
        sp, sm = _facet_speeds(E, plus, minus, ntf, ua, aa)
        return E, sp, sm

    @_numba.njit(cache=True)
    def _ring(flag, nbr):
        """The owned cells flagged (``> 0``) or with a flagged facet neighbour."""
        nown, nf = nbr.shape
        act = np.empty(nown, np.bool_)
        for c in range(nown):
            r = flag[c] > 0
            for f in range(nf):
                r = r or flag[nbr[c, f]] > 0
            act[c] = r
        return act

    @_numba.njit(cache=True)
    def _region(ua, nbr):
        """``(moving, F)``: the local cells whose velocity is not zero, and the owned cells that
        are moving or have a moving facet neighbour (ascending: the ring of the moving cells)."""
        nloc, gdim = ua.shape
        moving = np.zeros(nloc, np.bool_)
        for c in range(nloc):
            for i in range(gdim):
                if ua[c, i] != 0.0:
                    moving[c] = True
                    break
        nown, nf = nbr.shape
        F = np.empty(nown, np.int64)
        k = 0
        for c in range(nown):
            r = moving[c]
            for f in range(nf):
                r = r or moving[nbr[c, f]]
            if r:
                F[k] = c
                k += 1
        return moving, F[:k]

    @_numba.njit(cache=True)
    def _edges(plus, minus, ntf, ua, aa, moving):
        """``(E, sp, sm)``: the facets with a cell that moves or has a directional velocity,
        and their outflow speeds of '+' and '-' (module doc of :mod:`._dg0`)."""
        nloc, gdim = ua.shape
        live = moving.copy()
        for c in range(nloc):
            if not live[c]:
                for i in range(gdim):
                    if aa[c, i] != 0.0:
                        live[c] = True
                        break
        nf = plus.size
        E = np.empty(nf, np.int64)
        ne = 0
        for f in range(nf):
            if live[plus[f]] or live[minus[f]]:
                E[ne] = f
                ne += 1
        E = E[:ne]
        sp, sm = _facet_speeds(E, plus, minus, ntf, ua, aa)
        return E, sp, sm

else:  # pragma: no cover - without numba
    _ring, _region, _edges = _ring_numpy, _region_numpy, _edges_numpy
    _bincounts, _theta, _update = _bincounts_numpy, _theta_numpy, _update_numpy
    _ring_of, _region_sparse, _edges_sparse = (_ring_of_numpy, _region_sparse_numpy,
                                               _edges_sparse_numpy)  # fmt: skip
