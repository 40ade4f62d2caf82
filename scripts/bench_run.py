"""Benchmark of a whole run: N DG0 steps of the default job on a fine icosphere, under MPI.

Exact command (from the repository root), the figure quoted in the README::

    .venv/bin/mpiexec -n 2 .venv/bin/python scripts/bench_run.py --level 7 --steps 1000

Expected cost on an idle 2-core machine: about 8 minutes (level 7: 327,680 cells; the base
and the perturbed flow of ``solver/io/default.toml`` are both evolved, so each step is 6 nonlocal
velocity evaluations and 6 flux evaluations). ``--steps 50`` gives the rate in a minute.

The run is :func:`solver.evolve` exactly as ``python -m solver run`` calls it (default config,
``mesh.refinement`` and ``velocity.tolerance`` from the options), with fixed steps
(``stepping="fixed"``: this measures the cost of a step) and ``T`` chosen so that the CFL step
gives exactly ``--steps`` steps. ``scripts/bench_forgetting.py`` measures whole runs with the
default adaptive steps. No output folder is written (``--output`` to keep
one); progress is shown on rank 0.

Printed, all measured in this run (rank 0), and with ``--write-table PATH`` also written as
Markdown with the command, date and machine (``docs/benchmarks/run.md``):

* set-up time (mesh, operator, velocity set-up) and time per step of the evolution, the total
  against the goal (``--goal`` seconds, default 600);
* per evaluation, the two parts of a stage and what they replace: the fast velocity against
  the direct sum (timed on ``--sample`` targets per rank and scaled to all targets), and the
  facet evaluation of the DG0 flux against DOLFINx's assembly of the same form.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from mpi4py import MPI

import solver
from solver.io import build_initial, build_model, load_config
from solver.run import make_operator
from solver.transport import NonlocalField
from solver.velocity import attention_velocity

ROOT = Path(__file__).resolve().parents[1]


def _best(fn, repeat: int = 3) -> float:
    comm = MPI.COMM_WORLD
    best = np.inf
    for _ in range(repeat):
        comm.barrier()
        t0 = time.perf_counter()
        fn()
        comm.barrier()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--level", type=int, default=7, help="icosphere level (default 7)")
    ap.add_argument("--steps", type=int, default=1000, help="time steps (default 1000)")
    ap.add_argument("--tol", type=float, default=1e-8, help="velocity tolerance (default 1e-8)")
    ap.add_argument("--config", default=str(ROOT / "solver" / "io" / "default.toml"))
    ap.add_argument("--sample", type=int, default=256, help="targets per rank for direct")
    ap.add_argument("--goal", type=float, default=600.0, help="goal for the run, seconds")
    ap.add_argument("--output", default=None, help="keep the run's output folder here")
    ap.add_argument(
        "--write-table",
        metavar="PATH",
        default="",
        help="also write the figures as Markdown (e.g. docs/benchmarks/run.md)",
    )
    a = ap.parse_args()
    if a.steps < 1 or not 0 <= a.level <= 7:
        ap.error("--steps must be >= 1 and --level in 0..7")
    comm = MPI.COMM_WORLD
    rank0 = comm.rank == 0
    cfg = load_config(a.config)
    cfg["mesh"]["refinement"] = a.level
    cfg["velocity"]["tolerance"] = a.tol
    cfg["output"]["w2"] = cfg["output"]["vtx"] = False

    t0 = time.perf_counter()
    sm = solver.sphere_mesh(comm, 2, refinement=a.level)
    base, pert = build_model(cfg)
    op = make_operator(sm, 0)
    cfl = cfg["time"]["cfl"]

    def step(T):  # what evolve uses: the CFL step for the speed bound up to T
        return op.max_time_step(max(m.speed_bound(T) for m in (base, pert) if m is not None), cfl)

    T = a.steps * step(1.0)
    T = a.steps * step(T)  # bounds that grow with T (random adapters): settle T
    t_mesh = time.perf_counter() - t0

    # the parts of one stage, against what they replace
    field = NonlocalField(op, base, method="fast", tolerance=a.tol)
    rho = op.initial_state(build_initial(cfg["initial"]))
    A, V = base.parameters(0.0)
    w = op.source_weights(rho)
    t_setup = _best(lambda: field.eval(w, A, V), 1)  # first call: set-up of A and the degree
    X = field.eval(w, A, V)
    rep = dict(field.eval.report)
    t_fast = _best(lambda: field.eval(w * (1 + 1e-3 * np.random.default_rng(0).random()), A, V))
    k = min(a.sample, len(op.targets))
    wg = field.eval.gather(w)
    xs = op.targets[np.linspace(0, len(op.targets) - 1, k).astype(int)] if k else op.targets[:0]
    t_dir = _best(lambda: attention_velocity(xs, field.eval.sources, wg, A, V), 1)
    per_target = comm.allreduce(t_dir, op=MPI.MAX) / max(k, 1)
    t_direct = per_target * comm.allreduce(len(op.targets), op=MPI.MAX)
    t_facet = _best(lambda: op.rhs(X, rho))
    t_asm = _best(lambda: op.assemble_rhs(X, rho))

    t1 = time.perf_counter()
    res = solver.evolve(
        sm, base, build_initial(cfg["initial"]), T, perturbed=pert, cfl=cfl,
        method="fast", tolerance=a.tol, output=a.output, vtx=False, w2=False,
        progress=True, config=cfg, stepping="fixed", cluster_delta=None,
    )  # fmt: skip
    t_run = time.perf_counter() - t1
    nsteps = len(res.step_times) - 1
    if rank0:
        cells = sm.num_cells
        err = rep.get("sampled_error", float("nan"))
        print(f"\nlevel {a.level} ({cells:,} cells), {comm.size} rank(s), {nsteps} steps to "
              f"T = {T:.4g}, velocity {rep.get('method')} degree {rep.get('degree')} "
              f"(tolerance {a.tol:g}, sampled error {err:.1e})")  # fmt: skip
        print(
            f"  one stage: velocity fast {1e3 * t_fast:8.1f} ms   direct (est.) "
            f"{t_direct:8.1f} s    ratio {t_direct / t_fast:,.0f}x"
        )
        print(
            f"             DG0 flux facet {1e3 * t_facet:6.1f} ms   DOLFINx assembly "
            f"{1e3 * t_asm:6.1f} ms ratio {t_asm / t_facet:.1f}x"
        )
        print(
            f"  set-up: mesh + operator {t_mesh:.1f} s, first velocity (degree choice) "
            f"{t_setup:.1f} s"
        )
        total = t_mesh + t_setup + t_run
        print(
            f"  evolution: {t_run:.1f} s = {t_run / nsteps:.3f} s/step "
            f"(2 flows x 3 stages); {nsteps} steps + set-up = {total:.0f} s "
            f"= {total / a.goal:.2f} x the goal of {a.goal:.0f} s"
        )
        if a.write_table:
            import sys

            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from bench_table import command_line, write_table

            rows = [
                ["mesh", f"icosphere level {a.level} ({cells:,} cells)"],
                ["ranks", comm.size],
                ["time steps (base and perturbed flow, SSP-RK3)", f"{nsteps:,} to T = {T:.4g}"],
                ["velocity", f"{rep.get('method')}, degree {rep.get('degree')}, tolerance "
                             f"{a.tol:g}, sampled error {err:.1e}"],
                ["set-up (mesh, operator, first velocity)", f"{t_mesh + t_setup:.1f} s"],
                ["evolution", f"{t_run:.1f} s ({t_run / nsteps:.3f} s per step)"],
                ["total", f"{total:.0f} s ({total / a.goal:.2f} × the goal of {a.goal:.0f} s)"],
                ["one velocity evaluation: fast", f"{1e3 * t_fast:.1f} ms"],
                ["one velocity evaluation: direct sum (estimated from "
                 f"{a.sample} targets per rank)", f"{t_direct:.2f} s (estimated)"],
                ["fast vs direct sum, per evaluation",
                 f"~{t_direct / t_fast:,.0f}× (estimated)"],
                ["one DG0 flux evaluation: facets / DOLFINx assembly",
                 f"{1e3 * t_facet:.1f} ms / {1e3 * t_asm:.1f} ms"],
            ]  # fmt: skip
            write_table(a.write_table, "A whole run: DG0 steps of the default job",
                        command_line(ranks=comm.size), ["", "measured"], rows)  # fmt: skip
            print(f"wrote {a.write_table}")


if __name__ == "__main__":
    solver.parallel.abort_on_error()
    main()
