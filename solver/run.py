"""Drive a run: base flow μ and perturbed flow ν together, diagnostics, output, resume.

:func:`evolve` is the library entry point (``solver.evolve``); :func:`run_config` builds
everything from a resolved TOML config (what ``python -m solver run`` does).

A run is a stepper (:class:`Flows`: the densities and their SSP-RK3 step on a time grid)
and output handlers called with a cadence, as Dedalus's evaluator calls its file handlers:

* :class:`Diagnostics` — every step: mass, min/max, first moments and drift (``diagnostics.csv``),
  and a loud stop on a NaN, a negative cell average or a lost mass;
* :class:`Snapshots` — every saved time: the densities gathered on rank 0 and ``W2(μ_t, ν_t)``
  computed at once (``result.npz``, ``w2.csv``);
* :class:`~solver.io.FieldWriter` — every saved time: the VTX (``density.bp``) series;
* :class:`Checkpoint` — every saved time: the states, the diagnostic rows, the fast velocity's
  chosen degrees and the saved data so far, so that ``resume=True`` continues bit for bit
  (each save appends one snapshot file: the I/O is linear in the output).

The output folder (:class:`~solver.io.RunFolder`) is checked before the run starts (writable,
not holding another run unless ``overwrite``) and gets ``manifest.json`` last, listing the
files of a complete run.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mpi4py.MPI import IN_PLACE as MPI_IN_PLACE
from mpi4py.MPI import MAX as MPI_MAX
from mpi4py.MPI import SUM as MPI_SUM
from scipy.spatial import cKDTree

from .analysis import (
    CentroidHull,
    atom_moments,
    centre_distances,
    check_state,
    crossing_times,
    density_clusters,
    diagnostic_columns,
    hull_w2,
    mass_reach,
    point_mass_radius,
    reach_candidates,
    snap_to_clusters,
    wasserstein,
    wasserstein_sphere,
)
from .analysis._clusters._state import snap_steps
from .analysis._hull import nearest_atoms
from .io import RunFolder, build_initial, build_model, dump_toml, fingerprint
from .io import progress as progress_bar
from .io._config import CLUSTER_CRITERIA, MAX_STEPS
from .mesh import SphereMesh, load_mesh, normalize, sphere_mesh
from .model import Density, Model
from .model._lora import as_real
from .parallel import Interrupted, StopSignals, on_root
from .transport import Clock, NonlocalField, PrescribedField, Transport, make_operator

__all__ = ["Result", "evolve", "run_config", "initial_cell_averages", "mesh_from_config"]


@dataclass
class Result:
    """What a run returns (arrays gathered on rank 0; ``None`` on the other ranks).

    ``times`` (nt,), ``density`` / ``density_perturbed`` (nt, ncells) in original cell order,
    ``centroids`` (ncells, d), ``areas`` (ncells,), ``diagnostics`` (nsteps+1, ncols) with
    ``columns``; ``step_times`` (nsteps+1,) are the times of the diagnostics rows;
    ``t_enter`` / ``t_exit``: the perturbed flow's measure-level δ-cluster state
    (:class:`ClusterState`; ``nan`` when it does not happen or without a perturbation).
    """

    times: np.ndarray
    step_times: np.ndarray
    columns: list[str]
    diagnostics: np.ndarray
    density: np.ndarray | None = None
    density_perturbed: np.ndarray | None = None
    centroids: np.ndarray | None = None
    areas: np.ndarray | None = None
    w2: np.ndarray | None = None
    w2_error: np.ndarray | None = None
    t_enter: float = float("nan")
    t_exit: float = float("nan")
    #: steps of each kind taken by this call (:meth:`Flows.plan`; after a resume, since it)
    step_counts: dict | None = None

    def column(self, name: str) -> np.ndarray:
        return self.diagnostics[:, self.columns.index(name)]


def initial_cell_averages(sm: SphereMesh, density: Density | Callable, degree: int = 4):
    """Cell averages of an (unnormalised) initial density, normalised to unit mass."""
    return make_operator(sm, 0).initial_state(density, degree)


def mesh_from_config(comm, m: dict) -> SphereMesh:
    if "file" in m:
        return load_mesh(comm, m["file"], project=m["project"])
    return sphere_mesh(comm, m["sphere"], refinement=m.get("refinement"), cells=m.get("cells"))


# --------------------------------------------------------------------------------------------
# the stepper


class Flows:
    """The base flow μ and, with a perturbation, the perturbed flow ν, stepped together.

    ``states[i]`` is flow ``i``'s state on this rank's owned cells (the operator's layout).
    Every step has one length for all flows, by SSP-RK3. With ``stepping = "fixed"`` it is the
    a-priori positivity bound ``cfl · min|K|/|∂K| / sup|X|`` of the whole run. With
    ``"adaptive"`` it is chosen at every step from the current velocities ``u``
    (:meth:`plan`): ``cfl`` times the positivity limit ``min_K |K| / outflow_K(u)`` of the
    cells that hold all but ``tail_mass`` of the mass (the mass moves at most ``cfl`` of a
    cell per step), at most ``max_dt``. Where that exceeds the limit of the light cells, their
    outflow is capped at their content (the operator's ``euler_step``: positive and
    conservative for any step). After clustering the velocity is small where the mass is, and
    the step grows with the slow dynamics instead of being held by nearly empty cells. DG1 and
    DG2 take adaptive steps the same way, with each cell's positivity step at its own speed
    (``DGUpwind.step_limits``) and capped stages for the light cells (``DGUpwind.euler_step``).
    """

    def __init__(self, op, fields: list, rho0: np.ndarray, *, stepping: str = "adaptive",
                 cfl: float = 0.9, dt_fixed: float | None = None, max_dt: float = 0.5,
                 tail_mass: float = 1e-9, velocity_stages: str = "each"):  # fmt: skip
        if stepping not in ("fixed", "adaptive"):
            raise ValueError(f"time.stepping must be 'fixed' or 'adaptive', got {stepping!r}")
        if not (np.isfinite(tail_mass) and 0 <= tail_mass < 1):
            raise ValueError(f"tail_mass must be in [0, 1), got {tail_mass!r}")
        #: the lightest cells, together at most this much of the (unit) mass, do not limit
        #: the step
        self.tail_mass = tail_mass
        self.op, self.fields = op, fields
        self.transports = [Transport(op, f, velocity_stages) for f in fields]
        self.states = [rho0.copy() for _ in fields]
        self.stepping, self.cfl, self.dt_fixed, self.max_dt = stepping, cfl, dt_fixed, max_dt
        #: number of steps taken of each kind (:meth:`plan`)
        self.counts = {"explicit": 0, "capped": 0}

    @property
    def two(self) -> bool:
        return len(self.fields) == 2

    def averages(self) -> list[np.ndarray]:
        return [self.op.cell_averages(s) for s in self.states]

    def plan(self, t: float, t_param: float) -> tuple[float, str, list | None]:
        """``(wanted Δt, kind of step, velocities at t)`` for the next step; the kind is
        ``"explicit"`` (SSP-RK3) or ``"capped"`` (SSP-RK3 of capped Euler stages)."""
        if self.stepping == "fixed" or not hasattr(self.op, "positivity_time_step"):
            # the a-priori step; DG0's capped stages keep it positive whatever the flux
            capped = getattr(self.op, "capped_fixed_steps", False)
            return self.dt_fixed, "capped" if capped else "explicit", None
        states = self.states
        us = [f(t_param, t, s) for f, s in zip(self.fields, states, strict=True)]
        if not hasattr(self.op, "step_limits"):
            dt = min(self.op.positivity_time_step(u) for u in us)
            return min(self.cfl * dt, self.max_dt), "explicit", us
        lims = [self.op.step_limits(u, s, self.tail_mass) for u, s in zip(us, states, strict=True)]
        dt = min(self.cfl * min(lim[1] for lim in lims), self.max_dt)
        return dt, "capped" if dt > self.cfl * min(lim[0] for lim in lims) else "explicit", us

    def step(self, t: float, dt: float, kind: str, us: list | None) -> None:
        us = us if us is not None else [None] * len(self.fields)
        self.counts[kind] += 1
        self.states = [
            tr.step(s, t, dt, u, capped=kind == "capped")
            for tr, s, u in zip(self.transports, self.states, us, strict=True)
        ]


# --------------------------------------------------------------------------------------------
# output handlers


class Diagnostics:
    """Every step: one row of ``diagnostics.csv``; stops the run on a NaN, a negative cell
    average or a lost mass (the initial state has unit mass)."""

    def __init__(self, sm: SphereMesh, two: bool, clusters: ClusterState | None = None):
        self.sm, self.two, self.clusters = sm, two, clusters
        self.columns = diagnostic_columns(sm.gdim, two)
        if clusters is not None:
            self.columns += ClusterState.columns
        self.rows: list[list[float]] = []

    def __call__(self, t: float, avgs: list[np.ndarray]) -> None:
        diags, drift = self._diagnostics(avgs)
        for i, dg in enumerate(diags):
            check_state(dg, t, 1.0, "density_perturbed" if i else "density")
        row = [t] + diags[0]
        if self.two:
            row += diags[1] + drift
        if self.clusters is not None:
            row += self.clusters(avgs)
        self.rows.append(row)

    def _diagnostics(self, avgs: list[np.ndarray]) -> tuple[list[list[float]], list[float]]:
        """:func:`solver.analysis.density_diagnostics` of each flow and, with two,
        :func:`solver.analysis.drift_diagnostics` (their numbers), with the flows' sums in one
        reduction and their extremes in another (2 collectives instead of 5)."""
        sm = self.sm
        sums, ext = [], []
        for rho in avgs:
            w = rho * sm.areas
            sums += [np.concatenate([[w.sum()], w @ sm.centroids])]
            ext += [-rho.min(initial=np.inf), rho.max(initial=-np.inf)]
        if self.two:
            sums.append([float(np.abs(avgs[0] - avgs[1]) @ sm.areas)])
        sums, ext = np.concatenate(sums), np.array(ext)
        if sm.comm.size > 1:
            sm.comm.Allreduce(MPI_IN_PLACE, sums, op=MPI_SUM)
            sm.comm.Allreduce(MPI_IN_PLACE, ext, op=MPI_MAX)
        n = 1 + sm.gdim
        diags = [[float(sums[i * n]), float(-ext[2 * i]), float(ext[2 * i + 1])]
                 + [float(v) for v in sums[i * n + 1 : (i + 1) * n]]
                 for i in range(len(avgs))]  # fmt: skip
        if not self.two:
            return diags, []
        m = np.asarray(diags[0][3:]) - np.asarray(diags[1][3:])
        return diags, [float(np.linalg.norm(m)), float(sums[-1])]



class ClusterState:
    """The measure-level δ-cluster state of the perturbed flow (two flows only), at the
    resolution of the mesh.

    At every saved time the clusters of both flows are found from the densities
    (:func:`solver.analysis.density_clusters`: modes of the density on the mesh, their basins);
    the base centres ``C`` are μ_t's. At every step each basin's centre is its current first
    moment (summed over the ranks), and the cells of the cell that holds it and of that cell's
    vertex-sharing ring (within ``R`` = :func:`solver.analysis.point_mass_radius` of its
    centroid; cells that were empty at the last save join) count at that centre
    (:func:`solver.analysis.snap_to_clusters`); ``mass_outside`` (ν) and
    ``mass_outside_base`` (μ) are the masses that are then farther than ``delta`` (chordal)
    from ``C`` (:func:`solver.analysis.cluster_mass_outside`), ``reach`` and ``reach_base``
    the distances from ``C`` within which all but ``tol`` of each flow's snapped mass lies
    (:func:`solver.analysis.cluster_reach`); ``clusters`` is the number of base centres. ν is
    in the δ-cluster state while ``mass_outside <= tol``, that is while ``reach < delta``;
    ``t_enter`` / ``t_exit`` are the crossings of ``reach`` through ``delta``, interpolated
    between steps (:func:`solver.analysis.crossing_times`). The reach follows a collapsed
    cluster's centre continuously where the mass outside jumps from 0 to 1, so the exit is
    placed within the step, not at its end.

    Why the snap: cell averages hold a collapsed cluster as a blob over a cell and its ring
    around its exact first moment, so without it a 1 % tolerance reads the edge of the blob,
    and a drifting cluster "leaves" a δ-ball once its centre has moved ``δ`` minus the blob's
    reach (on the level-4 icosphere with δ = 0.1: a third of the way, docs/experiments.md);
    with it the cluster leaves when its centre does, as the point mass of the equation does.
    Measured on S¹ (ε = 0.01): the exit time at 128, 256 and 512 cells is 24.91, 24.96, 24.97.

    Where it holds: while the blob stays in the ring, i.e. while the cluster's drift ``v`` per
    unit time is below its pull one cell away (about ``λ h``, ``λ`` its contraction rate).
    Finer than that the upwind flux drags a wake longer than the ring behind the drifting
    cluster and the state reads the wake's edge: S¹, ε = 0.0178 (``v ≈ 0.008``), exit 14.66,
    14.69, 14.72 at 128, 256, 512 cells (particles, n = 20,000: 14.53 and 14.96), but 14.00
    and 13.88 at 1,024 and 2,048 (``h = 0.006, 0.003``; docs/experiments.md). The phase
    diagram's meshes (``h ≈ 0.05``, drift at most 0.037) are inside.

    ``atoms_w2_base`` and ``atoms_w2``: each flow's Wasserstein distance to the measures on
    the base centres ``C`` (:func:`solver.analysis.atoms_distance`, ``p = 2``, cell masses at
    the centroids, no snap), ``(Σ_K m_K min_c |y_K - c|^2 / Σ_K m_K)^{1/2}``: the
    δ-cluster state ``atoms_w2 < delta`` is continuous in the data, and its entry and exit
    move monotonically under refinement (phase diagram's tiny S^1 case, ε = 0.0218: exit
    12.3514, 12.4068, 12.4390, 12.4437, 12.4464 at 128 - 2,048 cells, where the reach's is
    12.57, 12.58, 10.73, 11.81, 11.73; docs/experiments.md).

    ``atoms_w2_hull_base`` and ``atoms_w2_hull``: the same without the floor the cells put
    under a cluster's spread (:func:`solver.analysis.hull_w2`: per group of the cells nearest
    to each centre, its mean ``|x̄|`` divided by the radial function of the projected
    centroids' convex hull, :class:`solver.analysis.CentroidHull`): a point mass held by the
    cells reads its own distance to its centre, where ``atoms_w2`` reads it ``O(h)`` wider
    and a drifting cluster leaves ``s_min² / (2δv)`` early, ``O(h²)`` with a prefactor that
    depends on where the exit falls on the mesh (S², ε = 0.0464, level 5: 0.31 of exit time;
    docs/experiments.md). One more reduction of ``(1 + gdim)`` numbers per centre, fused.
    """

    columns = ["clusters", "mass_outside_base", "mass_outside", "reach_base", "reach",
               "atoms_w2_base", "atoms_w2", "atoms_w2_hull_base", "atoms_w2_hull"]  # fmt: skip
    #: the clusters are found without the lightest cells, together ``LIGHT * tol`` of the
    #: mass (``density_clusters(light=...)``): they count where they are, so the masses
    #: outside move by at most that, and the search skips the tail's thousands of modes
    LIGHT = 1e-3

    def __init__(self, sm: SphereMesh, delta: float, tol: float, snaps: Snapshots,
                 tail: float | None = None):  # fmt: skip
        self.sm, self.delta, self.tol, self.snaps = sm, delta, tol, snaps
        #: with the active set (``evolve(active=τ)``): the per-step state of the cells that
        #: hold all but ``τ`` of each flow's mass (:meth:`_heavy`)
        self.tail = tail
        mesh = sm.gather_mesh()
        self.cells = mesh[1] if mesh is not None else None
        radius = point_mass_radius(snaps.centroids, self.cells) if sm.comm.rank == 0 else None
        self.radius = sm.comm.bcast(radius, root=0)
        # every centroid on every rank, to find the cell that holds a centre
        self.tree = cKDTree(sm.comm.bcast(snaps.centroids, root=0))
        self.centres = np.zeros((0, sm.gdim))
        self.labels: list[np.ndarray] = []  # each flow's basins on the owned cells
        self.counts: list[int] = []  # and their number
        self.dist = np.zeros(0)  # owned centroids' distances to the centres
        self.unit_dist = np.zeros(0)  # the same from the centroids projected to the sphere
        self.nearest = np.zeros(0, dtype=np.int64)  # and the index of the nearest centre
        self.unit = normalize(sm.centroids)  # the owned centroids projected to the sphere
        self.hull: CentroidHull | None = None  # of the projected centroids, at the first centres

    def update(self, gathered: list[np.ndarray] | None) -> None:
        """New clusters from both flows' cell averages at a saved time (gathered on rank 0)."""
        found = None
        if self.sm.comm.rank == 0:
            w = self.snaps.areas
            found = [density_clusters(self.snaps.centroids, g * w, w, cells=self.cells,
                                      light=self.LIGHT * self.tol)
                     for g in gathered]  # fmt: skip
            found = (found[0].centres, [c.labels for c in found])
        self.centres, labels = self.sm.comm.bcast(found, root=0)
        self.labels = [self.sm.scatter(lab) for lab in labels]
        self.counts = [int(lab.max(initial=-1)) + 1 for lab in labels]
        if len(self.centres):
            self.dist = centre_distances(self.sm.centroids, self.centres)
            self.unit_dist = centre_distances(self.unit, self.centres)
            self.nearest = nearest_atoms(self.unit, self.centres)  # atom_moments' grouping
            if self.hull is None:  # every centroid is on every rank (the tree's points)
                self.hull = CentroidHull(normalize(self.tree.data))

    def _cell_of(self, centres: np.ndarray) -> np.ndarray:
        """The centroid of the cell holding each centre (the nearest one)."""
        return self.tree.data[self.tree.query(centres)[1]]

    def _heavy(self, avg: np.ndarray) -> np.ndarray | None:
        """With :attr:`tail`: this rank's cells at or above the global tail cut of the cell
        masses (:func:`solver.velocity._active.tail_cut`; the others hold together at most
        ``τ`` of the unit mass), else ``None`` (every cell). The state of the heavy cells
        alone differs from that of all cells by what ``τ`` of the mass can move:
        ``mass_outside`` by at most ``2τ``, ``atoms_w2²`` by at most ``4τ`` (distances at
        most 2), ``reach`` by the change of its quantile ``tol`` by ``2τ``; and the active
        set's light cells move differently anyway. Every rank agrees on the cut."""
        if self.tail is None or len(self.centres) == 0:
            return None
        from .velocity._active import tail_cut

        w = avg * self.sm.areas
        cut = tail_cut(w, self.tail, self.sm.comm)
        return np.flatnonzero(w >= cut) if cut > 0 else None

    def _outside(self, avg: np.ndarray, labels: np.ndarray, k: int,
                 keep: np.ndarray | None = None) -> tuple[float, float]:  # fmt: skip
        """``(mass outside, reach)`` of the snapped cell masses, over the ranks (``k`` basins;
        the moments summed over the ranks; the distances gathered for the reach); ``keep``:
        the cells counted (:meth:`_heavy`; ``None``: all)."""
        if len(self.centres) == 0:  # no clusters yet: all mass is far, at the diameter
            return 1.0, 2.0
        comm = self.sm.comm
        alone = comm.size == 1
        w, y, dist0 = avg * self.sm.areas, self.sm.centroids, self.dist
        if keep is not None:
            w = w[keep]
            if keep.size == 0:  # no heavy cell here: one cell of no weight (the snap needs one)
                keep, w = np.zeros(1, dtype=np.int64), np.zeros(1)
            y, labels, dist0 = y[keep], labels[keep], dist0[keep]
        snapped = snap_to_clusters(y, w, labels, self.radius, k=k, anchors=self._cell_of,
                                   reduce=None if alone else comm.allreduce)  # fmt: skip
        moved = np.any(snapped != y, axis=1)
        dist = dist0.copy()  # the centroids' distances to the base centres, kept
        dist[moved] = centre_distances(snapped[moved], self.centres)
        far, total = np.array([w[dist >= self.delta].sum(), w.sum()])
        if not alone:
            far, total = comm.allreduce(np.array([far, total]))
        # the reach from the farthest cells of every rank (just over tol of the mass each)
        part = reach_candidates(dist, w, self.tol, total)
        parts = [part] if alone else comm.allgather(part)
        q = mass_reach(*(np.concatenate(a) for a in zip(*parts, strict=True)), self.tol, total)
        return float(far / total), q

    def _atoms_w2(self, avg: np.ndarray, keep: np.ndarray | None = None) -> float:
        """:func:`solver.analysis.atoms_distance` (``p = 2``) of the cell masses at the
        centroids (projected to the sphere), over the ranks; the diameter 2 before any
        clusters; ``keep``: the cells counted (``None``: all)."""
        if len(self.centres) == 0:
            return 2.0
        w, d = avg * self.sm.areas, self.unit_dist
        if keep is not None:
            w, d = w[keep], d[keep]
        s = np.array([np.sum(w * d**2), np.sum(w)])
        if self.sm.comm.size > 1:
            s = self.sm.comm.allreduce(s)
        return float(np.sqrt(s[0] / s[1]))

    def __call__(self, avgs: list[np.ndarray]) -> list[float]:
        """The row of both flows: :meth:`_heavy`, :meth:`_outside` and :meth:`_atoms_w2` of
        each (their numbers), with the flows' reductions shared: one for both tail cuts, one
        for each of the snap's two moment sums, one for the masses outside and the atoms'
        sums, one gather of the reach's candidates (5 collectives instead of 12)."""
        if len(self.centres) == 0:  # no clusters yet: all mass is far, at the diameter
            return [0.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]
        comm, sm = self.sm.comm, self.sm
        alone = comm.size == 1
        ws = [a * sm.areas for a in avgs]
        keeps = [None] * len(ws)
        if self.tail is not None:
            from .velocity._active import tail_cuts

            cuts = tail_cuts(ws, self.tail, comm)
            keeps = [np.flatnonzero(w >= cut) if cut > 0 else None
                     for w, cut in zip(ws, cuts, strict=True)]  # fmt: skip
        y_all = sm.centroids
        parts = []  # each flow's (w, w of the snap, y, unit y, labels, dist0, unit distances)
        for w, keep, lab in zip(ws, keeps, self.labels, strict=True):
            y, yu, dist0, d = y_all, self.unit, self.dist, self.unit_dist
            w_snap = w
            if keep is not None:
                w, d = w[keep], d[keep]
                if keep.size == 0:  # no heavy cell here: one cell of no weight
                    keep, w_snap = np.zeros(1, dtype=np.int64), np.zeros(1)
                else:
                    w_snap = w
                y, yu, lab, dist0 = y[keep], yu[keep], lab[keep], dist0[keep]
            parts.append((w, w_snap, y, yu, lab, dist0, d))
        steps = [snap_steps(p[3], p[1], p[4], self.radius, k, self._cell_of)
                 for p, k in zip(parts, self.counts, strict=True)]  # fmt: skip
        snapped = _drive_together(steps, None if alone else comm)
        local, dists, groups = [], [], []
        k, gdim = self.centres.shape
        for (w, w_snap, y, _, _, dist0, d), ys, keep in zip(parts, snapped, keeps,
                                                            strict=True):  # fmt: skip
            moved = np.any(ys != y, axis=1)
            dist = dist0.copy()  # the centroids' distances to the base centres, kept
            dist[moved] = centre_distances(ys[moved], self.centres)
            dists.append(dist)
            local += [w_snap[dist >= self.delta].sum(), w_snap.sum(), np.sum(w * d**2),
                      np.sum(w)]  # fmt: skip
            sel = slice(None) if keep is None else keep  # the cells of w (not the snap's)
            mass, moment = atom_moments(self.unit[sel], w, self.centres, self.nearest[sel])
            groups += [mass, *moment.T]
        sums = np.concatenate([local, *groups])
        if not alone:
            comm.Allreduce(MPI_IN_PLACE, sums, op=MPI_SUM)
        moments = sums[4 * len(ws) :].reshape(len(ws), 1 + gdim, k)
        sums = sums[: 4 * len(ws)].reshape(len(ws), 4)
        w2h = [hull_w2(m[0], m[1:].T, self.centres, self.hull) for m in moments]
        cands = [reach_candidates(dist, p[1], self.tol, t[1])
                 for dist, p, t in zip(dists, parts, sums, strict=True)]  # fmt: skip
        every = [cands] if alone else comm.allgather(cands)
        far, reach, w2 = [], [], []
        for i, t in enumerate(sums):
            got = [c[i] for c in every]
            reach.append(mass_reach(*(np.concatenate(a) for a in zip(*got, strict=True)),
                                    self.tol, t[1]))  # fmt: skip
            far.append(float(t[0] / t[1]))
            w2.append(float(np.sqrt(t[2] / t[3])))
        return [float(len(self.centres)), far[0], far[1], reach[0], reach[1], *w2, *w2h]


def _drive_together(steps: list, comm) -> list:
    """Run generators of :func:`solver.analysis.snap_steps` side by side, each yield's arrays
    of all of them added up over ``comm`` in one reduction (``None``: one rank, as they are);
    their results in order. Every rank's generators yield the same number of times."""
    results = [None] * len(steps)
    live = {}
    for i, g in enumerate(steps):
        try:
            live[i] = next(g)
        except StopIteration as done:
            results[i] = done.value
    while live:
        keys = list(live)
        flat = np.concatenate([np.ravel(live[i]) for i in keys])
        if comm is not None:
            comm.Allreduce(MPI_IN_PLACE, flat, op=MPI_SUM)
        at = 0
        for i in keys:
            n = live[i].size
            got = flat[at : at + n].reshape(live[i].shape)
            at += n
            try:
                live[i] = steps[i].send(got)
            except StopIteration as done:
                results[i] = done.value
                del live[i]
    return results


class Snapshots:
    """Every saved time: the densities in original cell order on rank 0, and, with two flows,
    ``W2(μ_t, ν_t)`` (geodesic cost, :func:`solver.wasserstein`) computed at once."""

    def __init__(self, sm: SphereMesh, op, nflows: int, w2: bool):
        self.sm, self.op = sm, op
        self.fields: list[list[np.ndarray]] = [[] for _ in range(nflows)]
        self.w2: list[float] = []
        self.w2_error: list[float] = []
        self.want_w2 = w2 and nflows == 2
        self.centroids, self.areas = sm.gather(sm.centroids), sm.gather(sm.areas)

    def __call__(self, states: list[np.ndarray]) -> list[np.ndarray] | None:
        """Gather and keep; returns the gathered states (rank 0) for the checkpoint."""
        gathered = [self.sm.gather(s) for s in states]
        if self.sm.comm.rank == 0:
            avgs = [self.op.cell_averages(g) for g in gathered]
            for keep, a in zip(self.fields, avgs, strict=True):
                keep.append(a)
            if self.want_w2:
                value, err = self._w2(*avgs)
                self.w2.append(value)
                self.w2_error.append(err)
        return gathered

    #: on S^2 each measure is merged to at most this many atoms before the exact transport
    #: problem (``wasserstein_sphere(method="auto")``, after its cells lighter than 1e-12 are
    #: merged; the rigorous error bound is in ``w2_error``): up to about a second per saved
    #: time for a spread density, milliseconds for a clustered one
    W2_MAX_ATOMS = 1500

    def _w2(self, a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
        c, w = self.centroids, self.areas
        if c.shape[1] == 2:  # exact on the circle, O(n log n)
            return float(wasserstein(c, a * w, c, b * w, 2)), 0.0
        r = wasserstein_sphere(c, a * w, c, b * w, 2, max_atoms=self.W2_MAX_ATOMS)
        return float(r.value), float(r.error)


class Checkpoint:
    """Every saved time: the states, the diagnostics rows and the number of
    saves in ``checkpoint.npz`` (rewritten: its size does not grow with the saves), and the new
    snapshot in ``snapshots/NNNNNN.npz`` (appended: the I/O is linear in the output)."""

    def __init__(self, folder: RunFolder, fields: list):
        self.folder, self.fields = folder, fields  # the fingerprint is the folder's

    def __call__(self, t: float, gathered, rows, snaps: Snapshots) -> None:
        i = len(snaps.fields[0]) - 1  # rank 0 holds the saved data; the writes happen there
        fields, extra = [], {}
        if i >= 0:
            fields = [f[i] for f in snaps.fields]
            if snaps.want_w2:
                extra = {"w2": np.array([snaps.w2[i], snaps.w2_error[i]])}
        self.folder.write_snapshot(i, fields, **extra)
        self.state(t, gathered, rows, i + 1)

    def state(self, t: float, gathered, rows, saves: int) -> None:
        """``checkpoint.npz`` alone: the states at ``t`` (any step, e.g. where a signal
        stopped the run) after ``saves`` saved times (rank 0's count)."""
        self.folder.write_checkpoint(
            t=t, saves=saves, diagnostics=np.array(rows), fingerprint=self.folder.fp,
            velocity_state=np.array(json.dumps([f.get_state() for f in self.fields])),
            ranks=np.array(self.folder.comm.size),
            **{f"state{j}": g for j, g in enumerate(gathered)},
        )  # fmt: skip

    def restore(self, sm: SphereMesh, snaps: Snapshots, diag: Diagnostics, nflows: int):
        """The states from the checkpoint (snapshots and rows restored in place)."""
        z = self.folder.read_checkpoint(self.folder.fp)
        ranks = int(z["ranks"]) if "ranks" in z else None
        if ranks is not None and ranks != sm.comm.size and sm.comm.rank == 0:
            warnings.warn(
                f"resuming on {sm.comm.size} rank(s) a checkpoint written on {ranks}: the "
                "results agree with an uninterrupted run to round-off (sums over the ranks "
                "are taken in another order), not bit for bit",
                RuntimeWarning, stacklevel=3,
            )  # fmt: skip
        diag.rows = z["diagnostics"].tolist()
        for f, st in zip(self.fields, json.loads(str(z["velocity_state"])), strict=True):
            f.set_state(st)  # the fast method's degrees: the velocity as before, bit for bit
        if sm.comm.rank == 0:
            for i in range(int(z["saves"])):
                s = self.folder.read_snapshot(i)
                for j in range(nflows):
                    snaps.fields[j].append(s[f"field{j}"])
                if snaps.want_w2:
                    snaps.w2.append(float(s["w2"][0]))
                    snaps.w2_error.append(float(s["w2"][1]))
        return [sm.scatter(z[f"state{j}"]) for j in range(nflows)]


# --------------------------------------------------------------------------------------------
# the driver


def evolve(
    sm: SphereMesh,
    model: Model | None,
    initial: Density | Callable | np.ndarray,
    T: float,
    *,
    perturbed: Model | None = None,
    cfl: float = 0.9,
    save_every: float | None = None,
    velocity: Callable[[np.ndarray, float], np.ndarray] | None = None,
    speed: float | None = None,
    method: str = "auto",
    tolerance: float = 1e-10,
    output: str | Path | None = None,
    vtx: bool = True,
    w2: bool = True,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    config: dict | None = None,
    degree: int = 0,
    stepping: str = "adaptive",
    max_dt: float = 0.5,
    tail_mass: float = 1e-9,
    cluster_delta: float | None = 0.1,
    cluster_tol: float = 1e-2,
    stop_after_exit: bool = False,
    active: float | None = None,
    cluster_criterion: str = "reach",
    velocity_stages: str = "each",
) -> Result:
    """Evolve the density by upwind DG + SSP-RK3 from ``initial`` to time ``T``.

    Parameters
    ----------
    sm : SphereMesh
        From :func:`solver.sphere_mesh` or :func:`solver.load_mesh`.
    model : Model or None
        Attention weights of the base flow μ (``None`` with a prescribed ``velocity``).
    initial : Density, callable or array
        Density family / function of points (normalised here), or owned cell averages.
    perturbed : Model, optional
        Perturbed weights: the flow ν is evolved alongside μ and drift is recorded.
    velocity, speed : callable, float, optional
        A prescribed velocity ``u(x, t)`` (for verification) and a bound of ``|u|``.
    cfl : float
        Fraction (at most 1) of the positivity limit: fixed steps take
        ``cfl · min |K|/|∂K| / sup|X|``, adaptive steps ``cfl`` times the limit of the cells
        that hold the mass (:class:`Flows`). SSP-RK3 keeps positivity up to 1; the default 0.9
        ends the forgetting benchmark (scripts/bench_forgetting.py, level 3, T = 400) within
        2e-7 of 0.5 in W2 and in the cluster's position, with 1.8 times fewer steps.
    save_every : float, optional
        Interval between saved densities (default: only 0 and T).
    method, tolerance : str, float
        Nonlocal velocity evaluation (see :class:`solver.NonlocalVelocity`); ``"auto"`` (the
        default, as on the command line) uses the fast expansion where it meets ``tolerance``
        and pays off.
    output : path, optional
        Folder for ``result.npz``, ``diagnostics.csv``, ``w2.csv``, the VTX series, the
        checkpoint and ``manifest.json`` (written last: the set is complete).
    w2 : bool
        With a perturbation: ``W2(μ_t, ν_t)`` (geodesic cost, :func:`solver.wasserstein`) at
        every saved time, in ``Result.w2``, ``result.npz`` and ``w2.csv``.
    resume : bool
        Continue from ``output/checkpoint.npz``; refused, naming what differs, when the
        checkpoint belongs to a run with other settings (any setting that changes an output:
        mesh, initial state, models, time grid, ``cfl``, stepping, velocity method and
        tolerance, cluster state, ``w2``, ``vtx``). A checkpoint written on another number of
        ranks is taken with a warning (round-off differences, not bit for bit).
    overwrite : bool
        Replace a different run found in ``output`` (otherwise that is an error); only the
        files its ``manifest.json`` lists are deleted, and a folder holding a file of a run's
        name that no manifest lists (the user's ``config.toml``) is refused.

    SIGINT and SIGTERM during the run stop every rank after the same step (one ``allreduce``
    per step, :class:`solver.parallel.StopSignals`); with ``output`` the state of that step
    is checkpointed (``resume=True`` continues bit for bit), and
    :class:`solver.parallel.Interrupted` (a ``KeyboardInterrupt``) is raised with the time
    reached. A second signal raises at once.
    degree : int
        0: DG0 (finite volumes); 1, 2: DG on curved cells.
    stepping, max_dt, tail_mass : str, float, float
        ``"adaptive"`` (steps from the current velocities of the cells that hold all but
        ``tail_mass`` of the mass, at most ``max_dt``) or ``"fixed"`` (the a-priori bound of
        the whole run): see :class:`Flows`. A larger ``tail_mass`` lets the steps grow sooner
        after clustering; the capped light cells then lag, which moves at most that much mass
        (``W2`` by up to ``π sqrt(tail_mass)``, a cluster-state mass outside by up to
        ``tail_mass``).
    cluster_delta, cluster_tol : float
        With a perturbation: the measure-level δ-cluster state of ν against the clusters of μ
        (:class:`ClusterState`: diagnostics columns ``clusters``, ``mass_outside_base``,
        ``mass_outside``, ``reach_base``, ``reach``, ``atoms_w2_base``, ``atoms_w2``;
        ``Result.t_enter``, ``Result.t_exit``).
        ``None``: not computed.
    stop_after_exit : bool
        End the run at the first saved time after ν has left the δ-cluster state (its
        forgetting time is then known and what follows is forgetting): ``Result.times`` and
        the densities end there. Needs ``cluster_delta`` and a perturbation.
    cluster_criterion : str
        Which crossing of ``cluster_delta`` gives ``Result.t_enter`` / ``t_exit`` (and ends a
        ``stop_after_exit`` run): ``"reach"`` (the snapped reach, default), ``"atoms_w2"``
        (the Wasserstein distance to the measures on the base centres; continuous in the
        data, converging under refinement) or ``"atoms_w2_hull"`` (the same without the
        floor the cells put under a cluster's spread: :class:`ClusterState`).
    velocity_stages : str
        ``"each"`` (default): the velocity of every SSP-RK3 stage's density (three
        evaluations per step and flow). ``"frozen"`` (with ``active``): in the spread phase,
        while every target is active (the cells that hold all but ``τ`` and their ring are
        the whole mesh), the velocity of the step's start for its three stages (one
        evaluation; :class:`solver.transport.Transport`): 3x fewer velocity evaluations
        there, first order in time in the velocity's dependence on the density; afterwards
        as ``"each"``. Error against ``"each"`` measured in docs/benchmarks/spread_phase.md
        (forgetting run, W2 at t = 50: 0.2 of the spatial difference between levels 3 and 4,
        halving with the level). ``"frozen_always"``: on every step (a reference: its error
        after clustering is not small).
    active : float, optional
        The mass tail ``τ`` of the active set (``None``, the default: the full evaluation).
        The velocity is evaluated at the nodes of the cells that hold all but ``τ`` of the
        mass and of their facet neighbours only, from the sources that hold all but an
        error-controlled tail (its bound kept within ``tolerance``): after clustering a few
        cells (:class:`solver.transport.NonlocalField`, :mod:`solver.transport._active`);
        DG0 also computes its stages on the cells that the velocity reaches only
        (:class:`solver.transport._active.ActiveDG0`: the same fluxes, without the zero ones),
        DG1 and DG2 assemble the flux form over those cells and facets only
        (:class:`solver.transport._active_dg.ActiveDG`).
        The light cells, together at most ``τ`` of the mass at every stage, do not move as in
        the full run; mass and positivity are kept exactly as before. The per-step cluster
        state is taken on the cells that hold all but ``τ`` of each flow's mass
        (:meth:`ClusterState._heavy`: the masses outside within ``2τ``).

    Examples
    --------
    >>> from mpi4py import MPI
    >>> import numpy as np, solver
    >>> sm = solver.sphere_mesh(MPI.COMM_WORLD, sphere=1, cells=64)
    >>> base = solver.Model(np.eye(2), np.eye(2), np.eye(2))
    >>> res = solver.evolve(sm, base, solver.VonMisesFisher((1, 0), 2.0), T=1.0,
    ...                     progress=False)  # doctest: +SKIP
    >>> float(res.column("mass")[-1])  # doctest: +SKIP
    1.0
    """
    _check_evolve_arguments(sm, model, perturbed, T, cfl, save_every, method, tolerance,
                            degree, stepping, max_dt, tail_mass, cluster_delta, cluster_tol,
                            output)  # fmt: skip
    comm = sm.comm
    op = make_operator(sm, degree)
    sm = op.sm  # DG1/DG2 work on the curved (P2) version of the mesh: same cells, same keys
    if velocity_stages == "frozen" and active is None:
        raise ValueError("velocity_stages='frozen' needs active (it freezes the velocity while "
                         "every target of the active set is active)")  # fmt: skip
    if active is not None:
        as_real("active", active, nonneg=True, below=1.0)
        if degree == 0 and velocity is None:  # the stages on the cells the velocity reaches
            from .transport._active import ActiveDG0

            op = ActiveDG0(op)
        elif velocity is None:  # DG1, DG2: the flux form on those cells and facets
            from .transport._active_dg import ActiveDG

            op = ActiveDG(op)
    if velocity is not None:
        if speed is None:
            raise ValueError("a prescribed velocity needs `speed`, a bound of |u| (for the CFL)")
        fields = [PrescribedField(op, velocity, speed)]
    else:
        if model is None:
            raise ValueError("give a model (attention weights) or a prescribed velocity")
        fields = [NonlocalField(op, m, method=method, tolerance=tolerance, active=active)
                  for m in (model, perturbed) if m is not None]  # fmt: skip

    if isinstance(initial, np.ndarray):
        if initial.dtype.kind not in "iuf":
            raise TypeError(f"initial must be an array of real numbers, got {initial.dtype}")
        rho0 = np.asarray(initial, dtype=float)
        if rho0.shape[:1] != (sm.num_owned,):
            raise ValueError(f"initial state must have {sm.num_owned} rows (owned cells)")
        avg = op.cell_averages(rho0)
        bad = comm.allreduce(int(not np.all(np.isfinite(rho0))) + 2 * int(np.any(avg < 0)),
                             op=MPI_MAX)  # fmt: skip
        if bad & 1:
            raise ValueError("initial contains NaN or infinite entries")
        if bad & 2:  # never flipped or clipped: a negative density is the caller's mistake
            raise ValueError("initial has negative cell averages: a density must be >= 0")
        mass = sm.integrate(avg)
        if not mass > 0:
            raise ValueError("initial has zero mass: a density must be positive somewhere")
        rho0 = rho0 / mass
    else:
        rho0 = op.initial_state(initial)
    speed_max = max(f.speed(T) for f in fields)
    jumps = [m.breakpoints(T) for m in (model, perturbed) if m is not None]
    clock = Clock(T, save_every, np.concatenate([np.zeros(0), *jumps]))
    dt_fixed = op.max_time_step(speed_max, cfl)
    if stepping == "fixed" and T / dt_fixed > MAX_STEPS:
        raise ValueError(f"T = {T:g} takes {T / dt_fixed:.3g} fixed steps of {dt_fixed:.3g} "
                         f"(limit {MAX_STEPS:.0e}; the speed bound {speed_max:.3g} of the "
                         "model's V): lower T or the speed, or coarsen the mesh")  # fmt: skip
    flows = Flows(op, fields, rho0, stepping=stepping, cfl=cfl, max_dt=max_dt,
                  tail_mass=tail_mass, dt_fixed=dt_fixed,
                  velocity_stages=velocity_stages)  # fmt: skip

    if cluster_criterion not in CLUSTER_CRITERIA:
        raise ValueError(f"cluster_criterion must be one of {CLUSTER_CRITERIA}, got "
                         f"{cluster_criterion!r}")  # fmt: skip
    if stop_after_exit and (cluster_delta is None or not flows.two):
        raise ValueError("stop_after_exit needs a perturbed model and cluster_delta")
    snaps = Snapshots(sm, op, len(fields), w2)
    clusters = (ClusterState(sm, cluster_delta, cluster_tol, snaps, tail=active)
                if flows.two and cluster_delta is not None else None)  # fmt: skip
    diag = Diagnostics(sm, flows.two, clusters)
    folder = ckpt = writer = None
    start = False
    if output is not None:
        fp = fingerprint(
            sm, op, rho0, (model, perturbed), T=T, times=clock.events,
            velocity=velocity, method=method, tolerance=tolerance, degree=degree, active=active,
            stepping=f"{stepping} max_dt={max_dt!r} tail_mass={tail_mass!r}"
            + ("" if velocity_stages == "each" else f" velocity_stages={velocity_stages}"),
            settings={  # every other setting that changes an output file
                "cfl": repr(cfl),
                "clusters": ("off" if clusters is None else
                             f"delta={cluster_delta!r} tol={cluster_tol!r}"
                             + ("" if cluster_criterion == "reach" else
                                f" criterion={cluster_criterion}")),
                "w2": snaps.want_w2, "vtx": bool(vtx), "stop_after_exit": stop_after_exit,
            },
        )  # fmt: skip
        folder = RunFolder(comm, output)
        folder.prepare(fp, resume=resume, overwrite=overwrite)
        ckpt = Checkpoint(folder, fields)
        if resume and folder.has_checkpoint():
            flows.states = ckpt.restore(sm, snaps, diag, len(fields))
            start = True
        if config is not None:
            folder.write_text("config.toml", dump_toml(config))
        folder.write_versions()
        if vtx:
            writer = folder.field_writer(sm, ["density", "density_perturbed"][: len(fields)])
            if start:  # the series restarts with its file: rewrite the times saved so far
                for i in range(comm.bcast(len(snaps.fields[0]) if comm.rank == 0 else 0)):
                    arrays = comm.bcast([f[i] for f in snaps.fields] if comm.rank == 0 else 0)
                    writer.write(float(clock.saves[i]), [sm.scatter(a) for a in arrays])

    def save(t: float) -> None:  # after the diagnostics row of t
        if writer is not None:
            writer.write(t, flows.averages())
        if ckpt is not None:
            ckpt(t, gathered, diag.rows, snaps)

    def record(t: float) -> None:
        nonlocal gathered
        if clock.is_save(t):
            gathered = snaps(flows.states)
            if clusters is not None:  # the base clusters of μ_t, before the row of t
                clusters.update([f[-1] for f in snaps.fields] if comm.rank == 0 else None)
        diag(t, flows.averages())
        if clock.is_save(t):
            save(t)

    # SIGINT / SIGTERM from here on: every rank stops after the same step (StopSignals)
    with StopSignals(comm) as stop:
        gathered = None
        if not start:
            record(0.0)
        elif clusters is not None:
            clusters.update([f[-1] for f in snaps.fields] if comm.rank == 0 else None)
        t = diag.rows[-1][0]
        bar = progress_bar(
            T, initial=t, disable=(not progress) or comm.rank != 0, delay=2.0,
            unit="t", desc="evolve", dynamic_ncols=True,
            bar_format="{l_bar}{bar}| t = {n:.4g}/{total:.4g} [{elapsed}<{remaining}]",
        )  # fmt: skip
        while t < T:
            wanted, kind, us = flows.plan(t, 0.5 * (t + clock.next_event(t)))
            dt, t_next = clock.land(t, wanted)
            flows.step(t, dt, kind, us)
            t = t_next
            record(t)
            bar.update(dt)
            if stop_after_exit and clock.is_save(t):
                if np.isfinite(_cluster_times(diag, cluster_delta, cluster_criterion)[1]):
                    break
            if signum := stop.requested():
                if ckpt is not None and not clock.is_save(t):  # a saved time has its own
                    ckpt.state(t, [sm.gather(s) for s in flows.states], diag.rows,
                               len(snaps.fields[0]))  # fmt: skip
                bar.close()
                if writer is not None:
                    writer.close()
                raise Interrupted(signum, t, checkpoint=ckpt is not None)
    bar.close()
    if writer is not None:
        writer.close()

    step_times = np.array([r[0] for r in diag.rows])
    res = Result(times=clock.saves[clock.saves <= t], step_times=step_times, columns=diag.columns,
                 diagnostics=np.array(diag.rows), step_counts=dict(flows.counts))  # fmt: skip
    if clusters is not None:
        res.t_enter, res.t_exit = _cluster_times(diag, cluster_delta, cluster_criterion)
    mesh_arrays = sm.gather_mesh()
    if comm.rank == 0:
        res.density = np.array(snaps.fields[0])
        res.density_perturbed = np.array(snaps.fields[1]) if flows.two else None
        res.centroids, res.areas = snaps.centroids, snaps.areas
        res.w2 = np.array(snaps.w2) if snaps.want_w2 else None
        res.w2_error = np.array(snaps.w2_error) if snaps.want_w2 else None
    if folder is not None:
        on_root(comm, _write_results, folder, res, mesh_arrays)
    return res


def _check_evolve_arguments(sm, model, perturbed, T, cfl, save_every, method, tolerance,
                            degree, stepping, max_dt, tail_mass, cluster_delta, cluster_tol,
                            output) -> None:  # fmt: skip
    """:func:`evolve`'s arguments, at the call: types (``TypeError``), ranges and the number
    of steps and saves (``ValueError``, at most ``MAX_STEPS`` of each), each naming the
    argument; nothing coerced."""
    if not isinstance(sm, SphereMesh):
        raise TypeError(f"sm must be a SphereMesh (solver.sphere_mesh, solver.load_mesh), got "
                        f"{type(sm).__name__}")  # fmt: skip
    for name, m in (("model", model), ("perturbed", perturbed)):
        if m is not None and not isinstance(m, Model):
            raise TypeError(f"{name} must be a solver.Model, got {type(m).__name__}")
    T = as_real("T", T, positive=True)
    if as_real("cfl", cfl, positive=True) > 1:
        raise ValueError(f"cfl must be in (0, 1] (positivity of SSP-RK3), got {cfl!r}")
    if save_every is not None and T / as_real("save_every", save_every, positive=True) > MAX_STEPS:
        raise ValueError(f"save_every = {save_every!r} makes {T / save_every:.3g} saves (limit "
                         f"{MAX_STEPS:.0e}): raise it")  # fmt: skip
    if method not in ("auto", "direct", "fast"):
        raise ValueError(f"method must be 'auto', 'direct' or 'fast', got {method!r}")
    as_real("tolerance", tolerance, positive=True, below=1.0)
    if isinstance(degree, bool) or degree not in (0, 1, 2):
        raise ValueError(f"degree must be 0, 1 or 2, got {degree!r}")
    if stepping not in ("adaptive", "fixed"):
        raise ValueError(f"stepping must be 'adaptive' or 'fixed', got {stepping!r}")
    if T / as_real("max_dt", max_dt, positive=True) > MAX_STEPS and stepping == "adaptive":
        raise ValueError(f"max_dt = {max_dt!r} makes at least {T / max_dt:.3g} steps (limit "
                         f"{MAX_STEPS:.0e}): raise it")  # fmt: skip
    as_real("tail_mass", tail_mass, nonneg=True, below=1.0)
    if cluster_delta is not None:
        as_real("cluster_delta", cluster_delta, positive=True)
    as_real("cluster_tol", cluster_tol, nonneg=True, below=1.0)
    if output is not None and not isinstance(output, str | Path):
        raise TypeError(f"output must be a path (str or Path), got {type(output).__name__}")


def _cluster_times(diag: Diagnostics, delta: float, criterion: str) -> tuple[float, float]:
    """ν's entry and exit of the δ-cluster state so far (``reach < delta``, or
    ``atoms_w2 < delta``: the ``criterion`` column; interpolated)."""
    col = diag.columns.index(criterion)
    rows = np.array([(r[0], r[col]) for r in diag.rows])
    return crossing_times(rows[:, 0], rows[:, 1], delta, strict=True)


def _write_results(folder: RunFolder, res: Result, mesh_arrays) -> None:
    """``result.npz``, ``diagnostics.csv``, ``w2.csv``, then ``manifest.json`` (rank 0)."""
    points, cells = mesh_arrays
    arrays = dict(times=res.times, centroids=res.centroids, areas=res.areas,
                  density=res.density, points=points, cells=cells)  # fmt: skip
    if res.density_perturbed is not None:
        arrays["density_perturbed"] = res.density_perturbed
    if "mass_outside" in res.columns:
        arrays["t_enter_exit"] = np.array([res.t_enter, res.t_exit])
    if res.w2 is not None:
        arrays["w2"], arrays["w2_error"] = res.w2, res.w2_error
        folder.write_csv_local("w2.csv", ["t", "w2", "w2_error"],
                               np.column_stack([res.times, res.w2, res.w2_error]))  # fmt: skip
    folder.write_npz_local("result.npz", arrays)
    folder.write_csv_local("diagnostics.csv", res.columns, res.diagnostics)
    folder.write_manifest_local()


def run_config(comm, cfg: dict, output: str | Path | None, *, resume=False, overwrite=False,
               progress=True):  # fmt: skip
    """Run a resolved config (see :func:`solver.load_config`)."""
    sm = mesh_from_config(comm, cfg["mesh"])
    base, pert = build_model(cfg)
    if base.d != sm.gdim:
        raise ValueError(
            f"model matrices are {base.d} x {base.d} but the mesh lives in R^{sm.gdim}: "
            f"give {sm.gdim} x {sm.gdim} Q, K, V"
        )
    t = cfg["time"]
    return evolve(
        sm, base, build_initial(cfg["initial"]), t["T"], perturbed=pert, cfl=t["cfl"],
        stepping=t["stepping"], max_dt=t["max_dt"], tail_mass=t["tail_mass"],
        cluster_delta=cfg["clusters"]["delta"],
        cluster_tol=cfg["clusters"]["tol"], cluster_criterion=cfg["clusters"]["criterion"],
        save_every=t["save_every"], method=cfg["velocity"]["method"],
        tolerance=cfg["velocity"]["tolerance"], output=output, vtx=cfg["output"]["vtx"],
        active=None if cfg["velocity"]["active"] is False else cfg["velocity"]["active"],
        velocity_stages=cfg["velocity"]["stages"],
        w2=cfg["output"]["w2"], resume=resume, overwrite=overwrite, progress=progress,
        config=cfg, degree=cfg["scheme"]["degree"],
    )  # fmt: skip
