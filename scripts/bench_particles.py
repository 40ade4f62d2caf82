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
    a = ap.parse_args(argv)
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
