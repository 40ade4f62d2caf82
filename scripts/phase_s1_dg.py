"""The phase diagram's tiny S^1 case (ε = 0.0218, W₂ to the base atoms, T = 13) at a DG degree
and a list of meshes: ν's entry and exit and μ's entry (``phase_pde_case``), or with
``--lag`` the collapse lag of tests/test_collapse.py (ν's cluster angle at t = 12 minus that
of n = 2,000 particles at the quantiles of ρ0) and the cluster's spread.

``--zone`` runs DG1/DG2 with an experimental cluster-zone criterion patched into
:meth:`solver.transport.DGUpwind.cluster_cells` (not in the solver; docs/experiments.md, the
S^1 W₂-to-atoms subsection): ``galilean`` reads the SINK condition on the velocity relative
to the cell's centroid velocity; ``hysteresis`` adds that a cell inside the zone of the last
six calls (both flows share the operator) stays a core with the SHARP and SINK thresholds
relaxed to 1.25. One process, rank 0 prints; CPU (``time.process_time``) beside wall time.

    .venv/bin/python scripts/phase_s1_dg.py --degree 1 --cells 64 128 256 512
    .venv/bin/python scripts/phase_s1_dg.py --degree 1 --cells 1024 --lag --zone hysteresis
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from mpi4py import MPI

import solver
from solver.experiments._common import e2_perturbation, identity_model
from solver.experiments._experiment import Run
from solver.experiments._params import load_presets
from solver.experiments.phase_diagram import (
    phase_eps,
    phase_pde_case,
    phase_pde_initial,
    quantile_circle,
)
from solver.transport import _dg

#: relaxed thresholds for a cell that stays in a zone (``--zone hysteresis``)
STAY = (1.2, 1.25)


def patch_zone(kind: str) -> None:
    """Replace ``DGUpwind.cluster_cells`` by the experimental criterion ``kind``."""

    def ramp(x, y, lo, hi):
        return np.clip((x - lo * y) / np.maximum((hi - lo) * y, 1e-300), 0.0, 1.0)

    def cluster_cells(self, averages):
        r = self.rbar.x
        r.array[: self._nown] = averages
        r.scatter_forward()
        nbr = self._stencil["nbr"]
        nb = r.array[nbr]
        gdim = self.sm.gdim
        un = self.u.x.array.reshape(-1, gdim)[self._udofs[: self._nown]]
        un = un - np.einsum("n,cng->cg", self._cw, un)[:, None, :]  # relative to the centroid's
        radial = np.einsum("cng,cng->cn", un, self._out)
        inflow = np.maximum(-radial, 0.0).sum(axis=1)
        outflow = np.maximum(radial, 0.0).sum(axis=1)
        peak = ramp(averages, nb.max(axis=1), *_dg.PEAK)
        core = np.minimum(np.minimum(peak, ramp(averages, nb.min(axis=1), *_dg.SHARP)),
                          ramp(inflow, outflow, *_dg.SINK))  # fmt: skip
        mem = getattr(self, "_zone_memory", [])
        if kind == "hysteresis" and mem and len(mem[0]) == len(core):
            stay = np.minimum(np.minimum(peak, ramp(averages, nb.min(axis=1), *STAY)),
                              ramp(inflow, outflow, *STAY))  # fmt: skip
            core = np.maximum(core, np.minimum(stay, np.max(mem, axis=0)))
        t = self.tau.x
        zone = core
        for _ in range(self.CLUSTER_RINGS):
            t.array[: self._nown] = zone
            t.scatter_forward()
            zone = np.maximum(zone, t.array[nbr].max(axis=1))
        t.array[: self._nown] = zone
        t.scatter_forward()
        self._zone_memory = (mem + [zone.copy()])[-6:]
        return zone

    _dg.DGUpwind.cluster_cells = cluster_cells


def phase_times(degree: int, cells: list[int]) -> None:
    p = load_presets("phase_diagram")["tiny"]
    eps = phase_eps(p)[2]
    p.update(pde_criterion="atoms_w2", pde_T=13.0, pde_degree=degree)
    run = Run(Path("."), MPI.COMM_SELF, False, {})
    for c in cells:
        t0, c0 = time.time(), time.process_time()
        r = phase_pde_case({**p, "pde_cells": c}, {"sphere": 1, "eps": eps}, run)
        row = {k: r[k] for k in ("t_enter", "t_exit", "t_base_enter")}
        print(json.dumps({"degree": degree, "cells": c, **row, "wall_s": time.time() - t0,
                          "cpu_s": time.process_time() - c0}), flush=True)  # fmt: skip


def collapse_lag(degree: int, cells: list[int], eps: float = 0.0218, T: float = 12.0) -> None:
    def ang(m):
        return float(np.arctan2(m[1], m[0]) % (2 * np.pi))

    def wrap(a):
        return (a + np.pi) % (2 * np.pi) - np.pi

    p = load_presets("phase_diagram")["tiny"]
    init = phase_pde_initial(p, 2)
    model = identity_model(2).perturbed(e2_perturbation(2, eps))
    x = solver.simulate_particles(model, quantile_circle(init, 2000), T, dt=0.05).positions[-1]
    th = np.arctan2(x[:, 1], x[:, 0]) % (2 * np.pi)
    hist, edges = np.histogram(th, 720)
    mode = 0.5 * (edges[hist.argmax()] + edges[hist.argmax() + 1])
    part = ang(x[np.abs(wrap(th - mode)) < 0.3].mean(axis=0))
    for n in cells:
        t0, c0 = time.time(), time.process_time()
        sm = solver.sphere_mesh(MPI.COMM_SELF, 1, cells=n)
        r = solver.evolve(sm, model, init, T, w2=False, progress=False, cluster_delta=None,
                          save_every=T, degree=degree)  # fmt: skip
        c = r.centroids
        sel = np.abs(wrap(np.arctan2(c[:, 1], c[:, 0]) - mode)) < 0.3
        w = np.asarray(r.density[-1])[sel] * r.areas[sel]
        a = ang(w @ c[sel])
        d = wrap(np.arctan2(c[sel, 1], c[sel, 0]) - a)
        print(json.dumps({"degree": degree, "cells": n, "lag_rad": a - part,
                          "spread_rad": float(np.sqrt((w * d * d).sum() / w.sum())),
                          "wall_s": time.time() - t0, "cpu_s": time.process_time() - c0}),
              flush=True)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--degree", type=int, default=1, choices=(0, 1, 2))
    ap.add_argument("--cells", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--lag", action="store_true", help="the collapse lag instead of the times")
    ap.add_argument("--zone", choices=("default", "galilean", "hysteresis"), default="default")
    a = ap.parse_args()
    if a.zone != "default":
        if a.degree == 0:
            ap.error("--zone is DG1/DG2's cluster-zone criterion: needs --degree 1 or 2")
        patch_zone(a.zone)
    (collapse_lag if a.lag else phase_times)(a.degree, a.cells)


if __name__ == "__main__":
    main()
