"""Benchmark of the particle velocity: the O(n²) direct sum against the fast expansion.

Exact command (from the repository root), the figures of issue #12 item 7::

    .venv/bin/python scripts/bench_particles.py --write-table docs/benchmarks/particles.md

Expected cost on a 2-core machine: about 1 minute (measured 45 s on 2026-11-29: the direct
sum at n = 20,000 takes 5 s per evaluation on one thread and is timed on ``--direct-evals``
- 1 = 2 evaluations; the fast runs to ``--run-T`` = 5 take 4-5 s each).

The model of the experiments, ``Q = K = √β I``, ``V = I`` (``A = β I``, default ``β = 1``), on
``S^1`` (``d = 2``) and ``S^2`` (``d = 3``), from ``n`` uniform particles (seed 0). For each
``d`` and ``n``, the time of one velocity evaluation as :func:`solver.simulate_particles`
does it on every Runge-Kutta stage, measured in this run: the direct sum
(:func:`solver.velocity.equal_weight_velocity`, all particles against all, in compiled loops
up to 200 particles; beside it the NumPy reference :func:`solver.attention_velocity`, the
baseline of the compiled loops) and the fast path
(:meth:`FastVelocity.set_points` at the particles, then the evaluation at tolerance ``--tol``;
the first call, which picks the degree and checks it against the direct sum on sampled
particles, is not counted), their ratio, the degree and the largest relative error bound. From
these, the wall time of a run to ``--T`` (400) at the experiments' step ``--dt`` (0.1, the
phase diagram's ``small`` preset: 4 evaluations per step) is *estimated* for both methods
(per-evaluation cost x evaluations). For the largest ``n`` the fast path is also run for real,
``simulate_particles(..., velocity="fast")`` to ``--run-T``, and its measured cost per step is
scaled to ``--T`` (estimated as well: from a uniform start, early steps).

``--scale`` (issue #26 item 4): particles at scale, ``--scale-n`` (100,000) uniform particles on
``S^2`` to ``--scale-T`` (50) at ``--dt`` with the fast velocity, run for real on the ranks of
the launch (one run, wall and CPU time, the evaluations by the expansion and by the cluster
expansion of collapsed particles, :class:`solver.velocity.ClusterVelocity`). Against the
baseline measured in the same run: ``--probe-steps`` steps from the state at ``T / 2``
(collapsed) with ``clusters=False`` (the expansion alone, as before) and with ``clusters=True``,
and from the uniform start; the baseline's wall time to ``T`` is estimated from them (the
steps the run took by the cluster expansion at the baseline's cost per step). At ``T / 2``
one evaluation of each is compared with the direct sum on sampled particles. Exact command
(the figures of docs/benchmarks/particles_scale.md; 2 ranks, or leave out ``mpiexec -n 2`` for
one)::

    .venv/bin/mpiexec -n 2 .venv/bin/python scripts/bench_particles.py --scale \
        --write-table docs/benchmarks/particles_scale.md

Expected cost on the 2-core machine (measured 2026-12-08, the run to T = 50 plus about 10 %
for the probes): 80-100 s of CPU time; 2 ranks 113 s of wall time at load 3.5-6.7 and 262 s
at load 9-12, 1 rank 264 s at load 8-12.

Printed and, with ``--write-table``, written as Markdown with the command, date and machine.
One rank, ``--threads`` threads for both methods (BLAS for the direct sum, numba for the fast
path on ``S^2``; default 1: on a machine shared with other jobs, numba's thread pool waits
for a busy core on every launch, about 20 ms, which would swamp the small sizes; ``0``: the
libraries' defaults).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
from mpi4py import MPI

import solver
from solver.velocity import FastVelocity, attention_velocity, equal_weight_velocity

try:
    from bench_table import command_line, write_table
except ImportError:  # run from elsewhere
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_table import command_line, write_table


def per_eval(f, evals: int) -> float:
    """Mean seconds per call of ``f`` over ``evals`` calls."""
    t0 = time.perf_counter()
    for _ in range(evals):
        f()
    return (time.perf_counter() - t0) / evals


def measure(d: int, n: int, beta: float, tol: float, evals: int, direct_evals: int,
            fast_options: dict) -> dict:  # fmt: skip
    """Direct and fast seconds per evaluation at ``n`` uniform particles on S^{d-1}."""
    x = solver.sample_particles(solver.Uniform(), n, d, seed=0)
    w = np.full(n, 1.0 / n)
    A, V = beta * np.eye(d), np.eye(d)
    fv = FastVelocity(MPI.COMM_SELF, x, x, tolerance=tol, **fast_options)
    fv.set_points(x, x)
    X = fv(w, A, V)  # first call: degree choice and sampled check (not timed)
    Xd = attention_velocity(x, x, w, A, V)
    err = float(np.abs(X - Xd).max() / np.linalg.norm(Xd, axis=1).max())

    def fast():
        fv.set_points(x, x)
        fv(w, A, V)

    t_fast = per_eval(fast, evals)
    equal_weight_velocity(x, x, A, V)  # compiled on the first call: not timed
    t_direct = per_eval(lambda: equal_weight_velocity(x, x, A, V), direct_evals)
    t_numpy = per_eval(lambda: attention_velocity(x, x, w, A, V), direct_evals)
    rep = fv.report
    return {"fast": t_fast, "direct": t_direct, "numpy": t_numpy, "degree": rep.get("degree", -1),
            "terms": rep.get("terms", 0), "bound": rep.get("bound", math.nan), "error": err,
            "method": rep["method"], "backend": fv.backend}  # fmt: skip


def run(d: int, n: int, beta: float, tol: float, T: float, dt: float,
        fast_options: dict) -> tuple[float, int, dict]:  # fmt: skip
    """Wall time and steps of ``simulate_particles(..., velocity="fast")`` to ``T``."""
    s = math.sqrt(beta)
    model = solver.Model(s * np.eye(d), s * np.eye(d), np.eye(d))
    x0 = solver.sample_particles(solver.Uniform(), n, d, seed=0)
    t0 = time.perf_counter()
    r = solver.simulate_particles(model, x0, T, dt=dt, save_every=T, velocity="fast",
                                  tolerance=tol, fast_options=fast_options)  # fmt: skip
    return time.perf_counter() - t0, round(T / dt), r.velocity


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 360 else f"{seconds:.0f} s"


def _timed(comm, f):
    """``(result, wall, cpu)``: wall time of ``f()`` on the slowest rank (after a barrier),
    CPU time summed over the ranks."""
    comm.Barrier()
    t0, c0 = time.perf_counter(), time.process_time()
    out = f()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return out, comm.allreduce(wall, op=MPI.MAX), comm.allreduce(cpu)


def scale(a, argv) -> None:
    """``--scale``: n particles to T on S^2, the cluster expansion against the expansion alone."""
    import os

    from solver.velocity import ClusterVelocity

    comm = MPI.COMM_WORLD
    root = comm.rank == 0
    d, n, T, dt, tol = 3, a.scale_n, a.scale_T, a.dt, a.tol
    s = math.sqrt(a.beta)
    model = solver.Model(s * np.eye(d), s * np.eye(d), np.eye(d))
    A, V = model.parameters(0.0)
    x0 = solver.sample_particles(solver.Uniform(), n, d, seed=0)
    kw = {"velocity": "fast", "tolerance": tol, "comm": comm,
          "fast_options": {"threads": a.threads} if a.threads else {}}  # fmt: skip
    # compile / load the kernels of both evaluations (not timed)
    rng = np.random.default_rng(0)
    tight = x0[0] + 1e-6 * rng.standard_normal((600, d))
    tight /= np.linalg.norm(tight, axis=1, keepdims=True)
    solver.simulate_particles(model, tight, dt, dt=dt, **kw)
    solver.simulate_particles(model, x0[:600], dt, dt=dt, **kw)
    load0 = os.getloadavg()[0]
    r, wall, cpu = _timed(comm, lambda: solver.simulate_particles(
        model, x0, T, dt=dt, save_every=T / 2, **kw))  # fmt: skip
    load1 = os.getloadavg()[0]
    info = r.velocity
    steps = round(T / dt)
    mid = r.positions[1]
    k = a.probe_steps
    probes = {}
    for name, start, cl in (("uniform start, clusters=True", x0, True),
                            (f"collapsed (t = {T / 2:g}), clusters=False (baseline)", mid, False),
                            (f"collapsed (t = {T / 2:g}), clusters=True", mid, True)):  # fmt: skip

        def probe(start=start, cl=cl):
            return solver.simulate_particles(model, start, k * dt, dt=dt, save_every=k * dt,
                                             clusters=cl, **kw)  # fmt: skip

        pr, pw, pc = _timed(comm, probe)
        probes[name] = (pw / k, pc / k, pr.velocity)
    base_w = probes[f"collapsed (t = {T / 2:g}), clusters=False (baseline)"]
    new_w = probes[f"collapsed (t = {T / 2:g}), clusters=True"]
    cs = info["cluster_steps"]
    est_wall = wall + cs * (base_w[0] - new_w[0])
    est_cpu = cpu + cs * (base_w[1] - new_w[1])
    # accuracy at T/2: one evaluation of each against the direct sum on sampled particles
    acc = []
    if root:
        w = np.full(n, 1.0 / n)
        idx = np.linspace(0, n - 1, a.samples).round().astype(int)
        Xd = attention_velocity(mid[idx], mid, w, A, V)
        q = np.linalg.norm(Xd, axis=1).max() + np.linalg.norm(V, 2)
        fv = FastVelocity(MPI.COMM_SELF, mid, mid, tolerance=tol)
        fv.set_points(mid, mid)
        Xf = fv(w, A, V)[idx]
        cv = ClusterVelocity(MPI.COMM_SELF, mid, mid, tolerance=tol, target_offset=0)
        ok = cv.partition(A)
        Xc = cv(w, A, V) if ok else None
        Xc = None if Xc is None else Xc[idx]
        for name, X, bound in (
            ("expansion", Xf, fv.report.get("bound", math.nan)),
            ("cluster expansion", Xc, cv.report.get("bound", math.nan)),
        ):
            if X is None:
                acc.append(f"{name}: not applicable at T/2 ({cv.report})")
                continue
            xs = np.linalg.norm(Xd, axis=1).max()
            scale_ = max(xs, 1e4 * np.finfo(float).eps / 2 * q / tol)
            err = np.linalg.norm(X - Xd, axis=1).max()
            acc.append(f"{name} at t = {T / 2:g}: max error on {a.samples} sampled particles "
                       f"{err:.1e} = {err / scale_:.1e} of the tolerance's scale (max |X| = "
                       f"{xs:.1e}, floor 1e4 u max|V m| / tol); its bound {bound:.1e}")  # fmt: skip
    threads = a.threads or solver.parallel.threads_per_rank(comm)  # collective
    import resource

    rss = comm.allreduce(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, op=MPI.MAX)
    if not root:
        return
    ranks = comm.size
    rows = [[f"run to T = {T:g}", f"{steps:,}", f"{wall:.1f}", f"{cpu:.1f}",
             f"{wall / steps:.3f}", f"{info['fast_calls']} expansion + "
             f"{info['cluster_calls']} cluster", "-"],
            [f"baseline to T = {T:g} (estimated)", f"{steps:,}", f"{est_wall:.1f}",
             f"{est_cpu:.1f}", f"{est_wall / steps:.3f}", "expansion only",
             f"{est_wall / wall:.2f}x"]]  # fmt: skip
    for name, (pw, pc, pv) in probes.items():
        calls = f"{pv['fast_calls']} expansion + {pv.get('cluster_calls', 0)} cluster"
        ratio = f"{base_w[0] / pw:.2f}x" if name.startswith("collapsed") else "-"
        rows.append([name, f"{k}", f"{pw * k:.2f}", f"{pc * k:.2f}", f"{pw:.3f}", calls, ratio])
    for row in rows:
        print(" | ".join(row), flush=True)
    notes = [
        f"n = {n:,} uniform particles (seed 0) on S^2, A = {a.beta:g} I, V = I, dt = {dt:g} "
        f"(RK4: 4 evaluations per step), tolerance {tol:g}; {ranks} rank(s), one BLAS thread "
        f"and {threads} numba thread(s) per rank (--threads); load average "
        f"{load0:.1f} before the run, {load1:.1f} after it "
        "(the machine is shared with other sessions: wall time is CPU time stretched by the "
        "load; CPU time summed over the ranks).",
        f"Run: {info['fast_calls']} evaluations by the expansion (degree <= "
        f"{info['max_degree']}, bound <= {info['max_bound']:.1e}), {info['cluster_calls']} by "
        f"the cluster expansion ({cs} steps, <= {info['max_clusters']} clusters, bound <= "
        f"{info['cluster_bound']:.1e}); {info['direct_targets']} targets summed directly; "
        f"peak memory {rss:.2f} GiB per rank (3 saved states of {n * d * 8 / 2**20:.1f} MiB).",
        f"Baseline (clusters=False, the expansion alone) estimated from the probes: the "
        f"{cs} steps taken by the cluster expansion at the baseline's cost per step "
        f"({base_w[0]:.3f} s wall, {base_w[1]:.3f} s CPU) instead of "
        f"{new_w[0]:.3f} s / {new_w[1]:.3f} s.",
    ] + acc
    for line in notes:
        print(line, flush=True)
    if a.write_table:
        write_table(
            a.write_table,
            f"Particles at scale: n = {n:,} on S^2 to T = {T:g} (issue #26 item 4)",
            command_line(argv, ranks),
            ["what", "steps", "wall s", "CPU s", "wall s/step", "evaluations",
             "baseline / this"],
            rows,
            notes,
        )  # fmt: skip


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+",
                    default=[20, 50, 250, 500, 1000, 2000, 20000])  # fmt: skip
    ap.add_argument("--dims", type=int, nargs="+", default=[3, 2])
    ap.add_argument("--beta", type=float, default=1.0, help="A = beta I")
    ap.add_argument("--tol", type=float, default=1e-10)
    ap.add_argument("--evals", type=int, default=10, help="fast evaluations timed per size")
    ap.add_argument(
        "--direct-evals",
        type=int,
        default=3,
        help="direct evaluations timed per size (one fewer above n = 5,000)",
    )
    ap.add_argument("--T", type=float, default=400.0, help="horizon of the estimates")
    ap.add_argument("--dt", type=float, default=0.1, help="step of the estimates and runs")
    ap.add_argument(
        "--run-T",
        type=float,
        default=5.0,
        help="horizon of the real fast run at the largest n (0: none)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="threads of both methods (0: the libraries' defaults)",
    )
    ap.add_argument("--write-table", metavar="PATH", help="write the table as Markdown")
    ap.add_argument(
        "--scale",
        action="store_true",
        help="particles at scale (issue #26): --scale-n to --scale-T, on the ranks",
    )
    ap.add_argument("--scale-n", type=int, default=100_000)
    ap.add_argument("--scale-T", type=float, default=50.0)
    ap.add_argument(
        "--probe-steps", type=int, default=10, help="--scale: steps of each per-step probe"
    )
    ap.add_argument("--samples", type=int, default=400,
                    help="--scale: particles checked against the direct sum at T / 2")  # fmt: skip
    a = ap.parse_args(argv)
    if a.scale:
        if a.scale_n < 600 or a.scale_T <= 0 or a.probe_steps < 1 or a.samples < 1:
            ap.error("--scale-n must be >= 600, --scale-T > 0, --probe-steps, --samples >= 1")
        return scale(a, argv)
    if min(a.sizes) < 2 or a.evals < 1 or a.direct_evals < 1 or not set(a.dims) <= {2, 3}:
        ap.error("--sizes must be >= 2, --evals / --direct-evals >= 1, --dims 2 and/or 3")
    if a.threads < 0:
        ap.error("--threads must be >= 0")
    opts = {"threads": a.threads} if a.threads else {}
    if a.threads:
        from threadpoolctl import threadpool_limits

        limiter = threadpool_limits(limits=a.threads, user_api="blas")  # noqa: F841 (kept)
    steps = round(a.T / a.dt)
    rows, notes = [], []
    for d in a.dims:
        crossover = None
        for n in sorted(a.sizes):
            de = a.direct_evals if n <= 5000 else max(1, a.direct_evals - 1)
            m = measure(d, n, a.beta, a.tol, a.evals, de, opts)
            ratio = m["direct"] / m["fast"]
            if crossover is None and ratio > 1:
                crossover = n
            row = [f"S^{d - 1}", f"{n:,}", f"{1e3 * m['direct']:.2f} ({de})",
                   f"{1e3 * m['numpy']:.2f} ({m['numpy'] / m['direct']:.1f}x)",
                   f"{1e3 * m['fast']:.2f} ({a.evals})", f"{ratio:.1f}x",
                   f"{m['degree']} ({m['terms']})", f"{m['bound']:.1e}", f"{m['error']:.1e}",
                   hours(4 * steps * m["direct"]) + " (estimated)",
                   hours(4 * steps * m["fast"]) + " (estimated)"]  # fmt: skip
            rows.append(row)
            print(" | ".join(row), f"[{m['method']}, {m['backend']}]", flush=True)
        line = (f"S^{d - 1}: the fast path is faster from n = {crossover:,} on (of the sizes "
                f"measured)" if crossover else f"S^{d - 1}: the fast path is not faster at "
                "the sizes measured")  # fmt: skip
        print(line, flush=True)
        notes.append(line)
        if a.run_T > 0:
            n = max(a.sizes)
            wall, nsteps, info = run(d, n, a.beta, a.tol, a.run_T, a.dt, opts)
            est = wall / nsteps * steps
            line = (f"S^{d - 1}, n = {n:,}: simulate_particles(velocity='fast') to T = "
                    f"{a.run_T:g} (dt = {a.dt:g}, {nsteps} steps) measured {wall:.1f} s = "
                    f"{wall / nsteps:.3f} s per step; to T = {a.T:g} ({steps} steps): "
                    f"{hours(est)} (estimated); {info['fast_calls']} of {info['calls']} "
                    f"evaluations fast, degree <= {info['max_degree']}, bound <= "
                    f"{info['max_bound']:.1e}")  # fmt: skip
            print(line, flush=True)
            notes.append(line)
    if a.write_table:
        write_table(
            a.write_table,
            "Particle velocity: direct sum against the fast expansion (issue #12 item 7)",
            command_line(argv),
            ["sphere", "n", "direct ms/eval (evals)", "NumPy direct ms/eval (/ direct)",
             "fast ms/eval (evals)", "ratio",
             "degree (terms)", "bound", "error", f"direct to T = {a.T:g}",
             f"fast to T = {a.T:g}"],
            rows,
            [f"A = {a.beta:g} I, V = I (the experiments' model), uniform particles, tolerance "
             f"{a.tol:g}; one rank, {a.threads or 'default'} thread(s). 'direct': the "
             "sum simulate_particles takes (equal_weight_velocity: compiled loops up to "
             "COMPILED_MAX_N = 200 particles, NumPy above), 'NumPy direct': "
             "attention_velocity, the reference, and its time over 'direct' (above 200 the "
             "same function twice: the spread is the timing noise); 'ratio': direct over "
             "fast. 'bound': the fast "
             "path's a-posteriori bound, 'error': measured against the direct sum, both "
             "relative to max |X|. Times to T: "
             f"4 evaluations per step x {steps} steps (dt = {a.dt:g}), estimated."] + notes,
        )  # fmt: skip


if __name__ == "__main__":
    solver.parallel.abort_on_error()
    main()
