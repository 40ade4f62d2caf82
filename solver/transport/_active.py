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

from ..velocity._active import tail_cut

__all__ = ["ActiveTargets", "facet_neighbours"]


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

    def _total(self, m: np.ndarray) -> float:
        s = float(m.sum())
        return self.op.sm.comm.allreduce(s) if self.op.sm.comm.size > 1 else s

    def __call__(self, state: np.ndarray) -> np.ndarray:
        """Active owned targets for ``state`` (collective)."""
        op, sm, nown = self.op, self.op.sm, self._nown
        m = op.cell_averages(state) * sm.areas  # unit total mass (evolve normalises it)
        heavy = m >= tail_cut(m, self.tail * self._total(m), sm.comm)
        f = self._flag.x
        f.array[:nown] = heavy
        if sm.comm.size > 1:
            f.scatter_forward()  # the ghosts' flags (one rank: no ghosts)
        nb = self._nbr
        act = heavy.copy()
        for i in range(nb.shape[1]):  # the ring: a heavy neighbour
            act |= f.array[nb[:, i]] > 0
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
