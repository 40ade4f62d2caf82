"""Benchmark of the DG1 stages on the active cells (issue 26): per-step cost on a clustered
state, full evaluation against the active set with and without :class:`ActiveDG`.

Exact command (from the repository root)::

    .venv/bin/python scripts/bench_active_dg.py --levels 3 4 \\
        --write-table docs/benchmarks/active_dg.md

Expected cost on the 2-core machine loaded by other sessions (load average 9-10, measured
2026-12-08): about 75 s (levels 3 and 4, mostly the full evaluation's steps).

On the icosphere of each level, DG1 (curved cells, cluster zones), the forgetting model
``A = V = I`` and the *clustered* density of ``scripts/bench_active.py velocity`` (two von
Mises-Fisher bumps of ``κ = 3000``, narrower than a level-5 cell, with their Gaussian tails;
``--kappa 6``: the smooth initial density of the forgetting run), the same ``--steps``
adaptive SSP-RK3 steps (``solver.run.Flows``: plan and step, the velocity at every stage)
are timed three ways, each from the same initial state, best of ``--repeat``:

* *full*: every velocity node from every source, the flux form over the whole mesh;
* *velocity only*: the active set (``active = 1e-12``) for the velocity
  (:class:`~solver.transport._active.ActiveTargets`: zero outside the nodes of the cells
  that hold all but 1e-12 of the mass and their ring), the operator's stages on every cell
  (what ``evolve(active=...)`` did for DG1 before :class:`ActiveDG`);
* *active stages*: the same velocity, and the stages of
  :class:`~solver.transport._active_dg.ActiveDG` (the form over the moving cells and the
  facets they touch; what ``evolve(active=...)`` does now).

The ratios are against the active stages, measured in the same run. ``difference``: the
largest cell-mass difference after the steps, active stages against full (the tail's effect)
and against velocity only (the stages' own: round-off). The load is the 1-minute load
average at the end of each level.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from mpi4py import MPI

import solver

try:
    from bench_table import command_line, write_table
except ImportError:  # run from elsewhere
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_table import command_line, write_table

TAIL = 1e-12
CENTRES = ((1.0, 0.0, 0.2), (-0.3, 1.0, 0.0))


def per_step(flows, state0, steps: int, repeat: int) -> tuple[float, np.ndarray, int]:
    """Best wall time per step over ``repeat`` runs of ``steps`` steps from ``state0``; the
    state after them and the steps' kinds."""
    comm = flows.op.sm.comm
    best = np.inf
    for _ in range(repeat):
        flows.states = [state0.copy()]
        t = 0.0
        comm.barrier()
        t0 = time.perf_counter()
        for _ in range(steps):
            dt, kind, us = flows.plan(t, t)
            flows.step(t, dt, kind, us)
            t += dt
        comm.barrier()
        best = min(best, (time.perf_counter() - t0) / steps)
    return best, flows.states[0], t


def level_row(level: int, steps: int, repeat: int, tol: float, kappa: float) -> dict:
    from solver.run import Flows
    from solver.transport import NonlocalField, make_operator
    from solver.transport._active_dg import ActiveDG

    comm = MPI.COMM_WORLD
    sm = solver.sphere_mesh(comm, 2, refinement=level)
    op = make_operator(sm, 1)
    act = ActiveDG(op)
    eye = np.eye(3)
    model = solver.Model(eye, eye, eye)
    init = solver.Mixture([solver.VonMisesFisher(c, kappa) for c in CENTRES], [0.5, 0.5])
    state0 = op.initial_state(init)
    out = {"cells": sm.num_cells}
    for name, o, active in (("full", op, None), ("velocity only", op, TAIL),
                            ("active stages", act, TAIL)):  # fmt: skip
        fl = Flows(o, [NonlocalField(o, model, method="auto", tolerance=tol, active=active)],
                   state0)  # fmt: skip
        per_step(fl, state0, 2, 1)  # compiled, the fast degree chosen
        out[name] = per_step(fl, state0, steps, repeat)
    out["region"] = tuple(comm.allreduce(x) for x in act.last)
    m = {k: out[k][1][:, 0] * op.sm.areas for k in ("full", "velocity only", "active stages")}
    out["vs full"] = comm.allreduce(float(np.abs(m["active stages"] - m["full"]).max()),
                                    op=MPI.MAX)  # fmt: skip
    out["vs velocity"] = comm.allreduce(
        float(np.abs(m["active stages"] - m["velocity only"]).max()), op=MPI.MAX
    )
    out["T"] = out["full"][2]
    out["load"] = os.getloadavg()[0]
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--levels", type=int, nargs="+", default=[3, 4])
    ap.add_argument("--steps", type=int, default=20, help="steps timed per run")
    ap.add_argument("--repeat", type=int, default=3, help="runs timed (best taken)")
    ap.add_argument("--tolerance", type=float, default=1e-10)
    ap.add_argument(
        "--kappa",
        type=float,
        default=3000.0,
        help="concentration of the two bumps (6: the smooth forgetting density)",
    )
    ap.add_argument("--write-table", metavar="PATH", help="write the table as Markdown")
    a = ap.parse_args(argv)
    comm = MPI.COMM_WORLD
    rows = []
    for level in a.levels:
        r = level_row(level, a.steps, a.repeat, a.tolerance, a.kappa)
        f, v, s = (1e3 * r[k][0] for k in ("full", "velocity only", "active stages"))
        row = [level, f"{r['cells']:,}", f"{r['T']:.3g}", f"{f:.1f} ms", f"{v:.1f} ms",
               f"{s:.1f} ms", f"{f / s:.1f}×", f"{v / s:.1f}×",
               f"{r['region'][0]:,} / {r['region'][1]:,} / {r['region'][2]:,}",
               f"{r['vs full']:.1e}", f"{r['vs velocity']:.1e}", f"{r['load']:.1f}"]  # fmt: skip
        rows.append(row)
        if comm.rank == 0:
            print(" | ".join(str(c) for c in row), flush=True)
    header = ["level", "cells", "time reached", "full", "velocity only", "active stages",
              "full / active", "velocity only / active", "cells / facets / cells read",
              "difference vs full", "difference vs velocity only", "load"]  # fmt: skip
    state = "a clustered state" if a.kappa == 3000.0 else f"two bumps of κ = {a.kappa:g}"
    title = f"DG1 steps on {state}: full, active velocity, active velocity and stages"
    notes = [f"ranks = {comm.size}; `A = V = I`, velocity tolerance {a.tolerance:g}, active "
             f"tail {TAIL:g}; wall time per adaptive SSP-RK3 step (plan and step), best of "
             f"{a.repeat} runs of {a.steps} steps from the same state.",
             "cells / facets / cells read: what the last stage of ActiveDG integrated (all "
             "ranks).",
             "difference: the largest cell-mass difference after the steps (active stages "
             "against the full run, and against the operator's stages with the same "
             "velocity).",
             "load: the 1-minute load average after the level (a shared machine)."]  # fmt: skip
    if comm.rank == 0 and a.write_table:
        write_table(a.write_table, title, command_line(argv, comm.size), header, rows, notes)


if __name__ == "__main__":
    solver.parallel.abort_on_error()
    main()
