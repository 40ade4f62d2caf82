"""Benchmark of the spread phase of long runs (issue 26): every cell active, per component.

Exact commands (from the repository root)::

    .venv/bin/mpiexec -n 2 .venv/bin/python scripts/bench_spread.py --levels 4 5 --T 5 2
    .venv/bin/mpiexec -n 2 .venv/bin/python scripts/bench_spread.py --accuracy \
        3:0.9:each 3:0.9:frozen 3:0.45:each 3:0.45:frozen 3:0.9:frozen_always \
        3:0.45:frozen_always 4:0.9:each 4:0.9:frozen

Expected cost on the 2-core machine (measured 2026-12-08): about 1.5 minutes at load 2-3
(windows: level 4 to t = 5 three runs of 9-14 s, level 5 to t = 2 three of 12-21 s; the
per-call timings some seconds), about 8 minutes at load 10-15. ``--accuracy``: a level-3 run
to T = 400 takes 35 s CPU (1-5 minutes of wall time with the load), a level-4 run 30 s CPU.

The forgetting run of scripts/bench_active.py (S^2, ``Q = K = V = I``, tied ``ε = 0.01``, two
von Mises-Fisher bumps ``κ = 6``, adaptive steps, ``active = 1e-12``) before the measure
clusters: every cell holds mass, so the active set is the whole mesh and each step costs six
fast velocity evaluations (SSP-RK3, two flows) and six DG0 stages on every cell.

For each level, the *old* path and the *new* one, measured in the same run (interleaved
rounds, best of ``--rounds``), CPU time (``time.process_time``, rank 0) beside wall time:

* ``velocity``: one fast evaluation at the initial density (:class:`solver.FastVelocity`,
  ``lean = False``: the step-by-step NumPy tail and three reductions per call; ``True``: one
  compiled pass and one collective);
* ``cluster weight``: the DG0 cluster weight on the local cells (NumPy vs compiled);
* ``stage``: one DG0 stage of the active operator on the whole mesh
  (:meth:`ActiveDG0.euler_step`, with the old / new cluster weight);
* ``window``: ``evolve`` from ``t = 0`` to ``--T`` (per level) with the old path (both of the
  above switched back) and the new one: steps, milliseconds per step, and the largest
  difference of the final densities (0: the same numbers bit for bit);
* ``frozen``: the same window on the new path with ``velocity_stages="frozen"`` (opt-in: the
  velocity of each step's start for its three stages, one evaluation per step and flow
  instead of three; it changes the result at first order in ``Δt``: the L1 distance of the
  final densities to the default is printed beside it).

The 1-minute load average is printed before each level (``uptime``): a load above the core
count slows every figure, wall more than CPU.

``--accuracy LEVEL:CFL:STAGES ...``: the whole forgetting run (``T = 400``, saves every 50,
``active = 1e-12``) for each ``velocity_stages`` at each level and ``cfl``, and, for every
pair of runs, the largest difference of ``W2(μ_t, ν_t)`` over the saved times and at ``T``
(the benchmark's result): the time error of ``"frozen"`` against ``"each"`` beside the
spatial difference between levels and the ``cfl``-halving of each (about 25 minutes under
load 10 for the eight runs above; docs/benchmarks/spread_phase.md).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from mpi4py import MPI

import solver
from solver.transport import DG0Upwind, _dg0
from solver.transport._active import ActiveDG0
from solver.velocity import FastVelocity, NonlocalVelocity

CENTRES = ((1.0, 0.0, 0.2), (-0.3, 1.0, 0.0))
TAIL = 1e-12
_CW = _dg0.cluster_weight


def use_old(old: bool) -> None:
    """Switch the old path (step-by-step fast evaluation, NumPy cluster weight) on or off."""
    FastVelocity.lean = not old
    _dg0.cluster_weight = _dg0.cluster_weight_numpy if old else _CW


def timed(fn, reps: int) -> tuple[float, float]:
    """``(wall, cpu)`` milliseconds per call of ``fn`` (rank 0's CPU; barriers around)."""
    comm = MPI.COMM_WORLD
    comm.barrier()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(reps):
        fn()
    comm.barrier()
    return 1e3 * (time.perf_counter() - t0) / reps, 1e3 * (time.process_time() - c0) / reps


def best_pair(fn, reps: int, rounds: int) -> dict:
    """Old and new path, interleaved rounds, best of each."""
    out = {True: [], False: []}
    for _ in range(rounds):
        for old in (True, False):
            use_old(old)
            out[old].append(timed(fn, reps))
    use_old(False)
    return {k: tuple(np.min(np.array(v), axis=0)) for k, v in out.items()}


def models(eps: float):
    eye = np.eye(3)
    base = solver.Model(eye, eye, eye)
    e2 = np.array([0.0, 1.0, 0.0])
    pert = base.perturbed(solver.TiedLoRA(dA=np.zeros((3, 3)), dV=-eps * np.outer(e2, e2)))
    init = solver.Mixture([solver.VonMisesFisher(c, 6.0) for c in CENTRES], [0.5, 0.5])
    return base, pert, init


def components(level: int, reps: int, rounds: int) -> dict:
    comm = MPI.COMM_WORLD
    sm = solver.sphere_mesh(comm, 2, refinement=level)
    op = DG0Upwind(sm)
    aop = ActiveDG0(op)
    _, _, init = models(0.01)
    rho = op.initial_state(init)
    ev = NonlocalVelocity(comm, op.targets, op.source_points, op.source_keys, method="auto",
                          tolerance=1e-10)  # fmt: skip
    w = op.source_weights(rho)
    A = V = np.eye(3)
    u = ev(w, A, V)  # the first call chooses the degree
    rl = op.rho.x.array
    nbr, scale = op._stencil["nbr"], op.cluster_scale
    return {
        "velocity": best_pair(lambda: ev(w, A, V), reps, rounds),
        "cluster weight": best_pair(lambda: _dg0.cluster_weight(rl, nbr, scale), reps, rounds),
        "stage": best_pair(lambda: aop.euler_step(u, rho, 1e-3), reps, rounds),
        "degree": ev.report.get("degree"),
    }


def window(level: int, T: float, eps: float, old: bool, stages: str = "each") -> dict:
    comm = MPI.COMM_WORLD
    sm = solver.sphere_mesh(comm, 2, refinement=level)
    base, pert, init = models(eps)
    use_old(old)
    comm.barrier()
    t0, c0 = time.perf_counter(), time.process_time()
    res = solver.evolve(sm, base, init, T, perturbed=pert, save_every=T, progress=False,
                        active=TAIL, velocity_stages=stages)  # fmt: skip
    comm.barrier()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    use_old(False)
    steps = len(res.step_times) - 1
    dens = None if comm.rank else np.concatenate([res.density[-1], res.density_perturbed[-1]])
    area = None if comm.rank else np.concatenate([res.areas, res.areas])
    return {"wall": wall, "cpu": cpu, "steps": steps, "density": dens, "area": area}


def accuracy(specs: list[str], eps: float) -> None:
    comm = MPI.COMM_WORLD
    base, pert, init = models(eps)
    out = {}
    for spec in specs:
        level, cfl, stages = spec.split(":")
        sm = solver.sphere_mesh(comm, 2, refinement=int(level))
        comm.barrier()
        t0, c0 = time.perf_counter(), time.process_time()
        res = solver.evolve(sm, base, init, 400.0, perturbed=pert, save_every=50.0,
                            progress=False, active=TAIL, cfl=float(cfl),
                            velocity_stages=stages)  # fmt: skip
        comm.barrier()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        if comm.rank == 0:
            out[spec] = res.w2
            print(f"{spec}: {len(res.step_times) - 1} steps, wall {wall:.1f} s, cpu {cpu:.1f} s "
                  f"(load {os.getloadavg()[0]:.1f}); W2(mu_t, nu_t) at t = 0, 50, ..., 400: "
                  f"{np.array2string(res.w2, precision=6)}", flush=True)  # fmt: skip
    if comm.rank == 0:
        keys = list(out)
        for i, a in enumerate(keys):
            for b in keys[i + 1 :]:
                d = np.abs(out[a] - out[b])
                print(f"{a} vs {b}: max |dW2| over the saves {d.max():.3e} (t = "
                      f"{50 * int(d.argmax())}), at T {d[-1]:.3e}")  # fmt: skip


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--levels", type=int, nargs="+", default=[4, 5])
    ap.add_argument("--T", type=float, nargs="+", default=[5.0, 2.0],
                    help="window end per level (the last one repeats)")  # fmt: skip
    ap.add_argument("--eps", type=float, default=0.01)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--accuracy", nargs="+", metavar="LEVEL:CFL:STAGES",
                    help="whole runs to T = 400 compared instead (see the module doc)")  # fmt: skip
    args = ap.parse_args(argv)
    comm = MPI.COMM_WORLD
    root = comm.rank == 0
    if args.accuracy:
        accuracy(args.accuracy, args.eps)
        return

    def say(*a):
        if root:
            print(*a, flush=True)

    say(f"bench_spread: {comm.size} ranks; times in ms, old / new (ratio old/new); CPU of rank 0")
    for i, level in enumerate(args.levels):
        T = args.T[min(i, len(args.T) - 1)]
        say(f"\nlevel {level} (load {os.getloadavg()[0]:.1f} before)")
        # warm-up: numba kernels and the mesh
        window(level, 0.05, args.eps, old=False)
        comp = components(level, args.reps, args.rounds)
        say(f"  fast degree {comp.pop('degree')}")
        for name, r in comp.items():
            (ow, oc), (nw, nc) = r[True], r[False]
            say(f"  {name:15s} wall {ow:8.3f} / {nw:8.3f} ({ow / nw:4.2f}x)   "
                f"cpu {oc:8.3f} / {nc:8.3f} ({oc / nc:4.2f}x)")  # fmt: skip
        runs = {old: window(level, T, args.eps, old) for old in (True, False)}
        o, n = runs[True], runs[False]
        f = window(level, T, args.eps, False, "frozen")
        diff = float(np.abs(o["density"] - n["density"]).max()) if root else 0.0
        l1 = float(np.abs(f["density"] - n["density"]) @ n["area"]) / 2 if root else 0.0
        for tag, r in (("old", o), ("new", n), ("frozen", f)):
            say(f"  window t = 0-{T:g} {tag}: {r['steps']} steps, wall {r['wall']:.2f} s "
                f"({1e3 * r['wall'] / r['steps']:.1f} ms/step), cpu {r['cpu']:.2f} s "
                f"({1e3 * r['cpu'] / r['steps']:.1f} ms/step)")  # fmt: skip
        say(f"  window ratio old/new: wall {o['wall'] / n['wall']:.2f}x, cpu "
            f"{o['cpu'] / n['cpu']:.2f}x; final densities differ by {diff:.3g} (max)")  # fmt: skip
        say(f"  frozen: ratio old/frozen wall {o['wall'] / f['wall']:.2f}x, cpu "
            f"{o['cpu'] / f['cpu']:.2f}x; L1 distance to the default at t = {T:g}: "
            f"{l1:.3g} per flow (mean of the two)")  # fmt: skip
        say(f"  load after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
