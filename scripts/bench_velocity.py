"""Benchmark of the nonlocal attention velocity: direct sum vs fast expansion vs dense kernel.

Exact command (from the repository root; it launches the MPI runs itself)::

    .venv/bin/python scripts/bench_velocity.py --levels 3 4 5 6 7 --ranks 1 2

(``--write-table docs/benchmarks/velocity.md`` also writes the table, with the command, date
and machine, as the Markdown file the README links to; the committed one comes from the cheap
``--levels 3 4 --ranks 1 2``),

which runs, for each rank count ``P``,
``.venv/bin/mpiexec -n P .venv/bin/python scripts/bench_velocity.py --worker ...`` with one
BLAS/OpenMP thread per rank (pure MPI: the 1-vs-2-rank ratios are strong scaling on the
2 cores), and prints one table with the ratios measured in that run. A single MPI run::

    .venv/bin/mpiexec -n 2 .venv/bin/python scripts/bench_velocity.py --worker --levels 5

Expected cost on an idle 2-core machine: about 2 minutes for levels 3-7 with 1 and 2 ranks
(3-4 minutes when other jobs load the machine). The direct sum at level 6 takes ~35 s on
1 rank; at level 7 it would take ~9 minutes per evaluation, so it is skipped there (its time
is estimated from the measured pairs/s) and the error at level 7 is measured against the
direct sum on 256 sampled targets. The dense kernel matrix is only formed where it fits in
``--dense-mem`` (level <= 5). Peak memory ~2 GB.

Timings: best of ``--evals`` evaluations (wall), and the process CPU time (maximum over the
ranks), about what an idle machine would give when other jobs share the cores (MPI ranks
spin while they wait, so it is an upper bound). Options:
``--norm`` (``‖A‖₂``, default 10), ``--tol`` (default 1e-8), ``--levels``, ``--ranks``.

Points: the mesh module (DOLFINx) is not needed here; the script builds the icosphere of
the given level itself in NumPy (``10·4^l + 2`` vertices = targets, ``20·4^l`` triangle
centroids projected to the sphere = sources, flat triangle areas times a smooth positive
density = weights), the same layout as the PDE's DG0 discretisation.

Methods:

* ``direct``: :class:`solver.NonlocalVelocity` with ``method="direct"`` (blocked NumPy
  direct sum, the reference);
* ``fast``: ``method="fast"`` (spherical-harmonic expansion, :mod:`solver.velocity`),
  setup (first call for a new ``A``) timed separately from the evaluations; the weights
  change between evaluations as in the RK3 stages;
* ``dense``: the whole scaled kernel matrix ``e^{yᵀAx - |Ax|}`` materialised once per ``A``
  (where it fits in ``--dense-mem``), then one dense matrix product per evaluation.

Errors are relative, max norm over all targets: ``max_i |X_i - X_i^direct| / max_i |X_i^direct|``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- icosphere


def icosphere(level: int):
    """Vertices (unit) and triangles of the icosphere of the given level (NumPy only)."""
    import numpy as np

    t = (1 + 5**0.5) / 2
    v = np.array(
        [
            [-1, t, 0],
            [1, t, 0],
            [-1, -t, 0],
            [1, -t, 0],
            [0, -1, t],
            [0, 1, t],
            [0, -1, -t],
            [0, 1, -t],
            [t, 0, -1],
            [t, 0, 1],
            [-t, 0, -1],
            [-t, 0, 1],
        ],
        dtype=float,
    )
    f = np.array(
        [
            [0, 11, 5],
            [0, 5, 1],
            [0, 1, 7],
            [0, 7, 10],
            [0, 10, 11],
            [1, 5, 9],
            [5, 11, 4],
            [11, 10, 2],
            [10, 7, 6],
            [7, 1, 8],
            [3, 9, 4],
            [3, 4, 2],
            [3, 2, 6],
            [3, 6, 8],
            [3, 8, 9],
            [4, 9, 5],
            [2, 4, 11],
            [6, 2, 10],
            [8, 6, 7],
            [9, 8, 1],
        ]
    )
    v /= np.linalg.norm(v, axis=1)[:, None]
    for _ in range(level):
        e = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
        uniq, inv = np.unique(e, axis=0, return_inverse=True)
        mid = v[uniq[:, 0]] + v[uniq[:, 1]]
        mid /= np.linalg.norm(mid, axis=1)[:, None]
        ids = len(v) + inv.reshape(3, -1)
        v = np.concatenate([v, mid])
        ab, bc, ca = ids
        a, b, c = f.T
        f = np.concatenate(
            [np.c_[a, ab, ca], np.c_[b, bc, ab], np.c_[c, ca, bc], np.c_[ab, bc, ca]]
        )
    return v, f


def problem(level: int, norm_A: float, seed: int = 0):
    import numpy as np

    v, f = icosphere(level)
    tri = v[f]
    cen = tri.mean(axis=1)
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    cen /= np.linalg.norm(cen, axis=1)[:, None]
    rho = 1.0 + 0.6 * np.sin(3 * cen[:, 0] + 1) * np.cos(2 * cen[:, 1]) + 0.3 * cen[:, 2]
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(3, 3))  # non-symmetric
    A *= norm_A / np.linalg.norm(A, 2)
    V = rng.normal(size=(3, 3))
    V /= np.linalg.norm(V, 2)
    return v, cen, rho * area, A, V


# ----------------------------------------------------------------------------- worker


def dense_kernel(x, y, A):
    """Scaled kernel matrix ``K_ji = e^{y_jᵀ A x_i - |A x_i|}`` (sources x targets)."""
    import numpy as np

    u = x @ A.T
    K = y @ u.T
    K -= np.linalg.norm(u, axis=1)
    np.exp(K, out=K)
    return K


def dense_eval(K, x, y, w, V):
    """Velocity from the materialised kernel: one dense product per evaluation."""
    import numpy as np

    W = np.c_[w, w[:, None] * (y @ V.T)]
    out = W.T @ K  # (1 + d, targets)
    num = (out[1:] / out[0]).T
    return num - np.einsum("ij,ij->i", x, num)[:, None] * x


def worker(args) -> None:
    import warnings

    import numpy as np
    from mpi4py import MPI

    from solver.velocity import NonlocalVelocity, attention_velocity

    comm = MPI.COMM_WORLD
    P, p = comm.size, comm.rank
    results = []
    pairs_per_s_direct = args.direct_rate or None
    cpu_rate = args.direct_cpu_rate or None

    def timed(fn, *a):
        """Result, wall time and process CPU time (each the maximum over the ranks)."""
        comm.Barrier()
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn(*a)
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        return out, comm.allreduce(dt, op=MPI.MAX), comm.allreduce(dc, op=MPI.MAX)

    def gather_rows(X, rows, n):
        parts = comm.gather((rows, X), root=0)
        if p:
            return None
        full = np.empty((n, X.shape[1]))
        for r, Xp in parts:
            full[r] = Xp
        return full

    for level in args.levels:
        v, cen, w0, A, V = problem(level, args.norm)
        N, M = len(v), len(cen)
        trows = np.arange(p * N // P, (p + 1) * N // P)
        srows = np.arange(p * M // P, (p + 1) * M // P)
        x, y = v[trows], cen[srows]
        pairs = N * M
        weights = [w0 * (1 + 0.05 * k * np.sin(2 * cen[:, 2] + k)) for k in range(args.evals)]
        rec = {"level": level, "N": N, "M": M, "ranks": P, "norm_A": args.norm}

        # --- fast
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fast = NonlocalVelocity(comm, x, y, srows, method="fast", tolerance=args.tol)
            _, t_setup, _ = timed(fast, w0[srows], A, V)
            ts, cs = [], []
            for wk in weights:
                Xf, dt, dc = timed(fast, wk[srows], A, V)
                ts.append(dt)
                cs.append(dc)
        rep = dict(fast.report)
        rec["fast"] = {
            "setup_s": t_setup,
            "eval_s": float(np.min(ts)),
            "eval_median_s": float(np.median(ts)),
            "cpu_s": float(np.min(cs)),
            "report": {k: rep[k] for k in rep if k != "reason"},
            "warnings": [str(c.message) for c in caught],
        }
        Xf_full = gather_rows(Xf, trows, N)
        if p == 0 and args.save:
            np.save(Path(args.save) / f"fast_l{level}_P{P}.npy", Xf_full)

        # --- direct (the reference)
        if pairs_per_s_direct is None:  # probe on a few targets per rank
            k = min(len(x), 128)
            _, dt, dc = timed(attention_velocity, x[:k], cen, weights[-1], A, V)
            npairs = comm.allreduce(k, op=MPI.MAX) * M * P
            pairs_per_s_direct, cpu_rate = npairs / dt, npairs / dc
        est = pairs / pairs_per_s_direct
        if est > args.direct_budget:
            rec["direct"] = {"skipped": True, "eval_s_est": est, "cpu_s_est": pairs / cpu_rate}
            # error against the direct sum on sampled targets
            rng = np.random.default_rng(1)
            sample = np.sort(rng.choice(N, size=min(N, args.sample), replace=False))
            if p == 0:
                Xs = attention_velocity(v[sample], cen, weights[-1], A, V)
                err = np.abs(Xf_full[sample] - Xs).max() / np.linalg.norm(Xs, axis=1).max()
                rec["fast"]["error"] = float(err)
                rec["fast"]["error_on"] = f"{len(sample)} sampled targets"
        else:
            direct = NonlocalVelocity(comm, x, y, srows, method="direct")
            Xd, t_dir, c_dir = timed(direct, weights[-1][srows], A, V)
            for _ in range(2 if t_dir < 5 else 0):  # best of 3 where cheap
                _, dt, dc = timed(direct, weights[-1][srows], A, V)
                t_dir, c_dir = min(t_dir, dt), min(c_dir, dc)
            pairs_per_s_direct, cpu_rate = pairs / t_dir, pairs / c_dir
            rec["direct"] = {
                "eval_s": t_dir,
                "cpu_s": c_dir,
                "pairs_per_s": pairs_per_s_direct,
                "pairs_per_cpu_s": cpu_rate,
            }
            Xd_full = gather_rows(Xd, trows, N)
            if p == 0:
                scale = np.linalg.norm(Xd_full, axis=1).max()
                rec["fast"]["error"] = float(np.abs(Xf_full - Xd_full).max() / scale)
                rec["fast"]["error_on"] = "all targets"

        # --- dense kernel matrix, materialised once per A
        need = 8 * len(x) * M
        if comm.allreduce(need, op=MPI.MAX) <= args.dense_mem:
            K, t_build, _ = timed(dense_kernel, x, cen, A)
            ts, cs, Xn = [], [], None
            for wk in weights:
                Xn, dt, dc = timed(dense_eval, K, x, cen, wk, V)
                ts.append(dt)
                cs.append(dc)
            del K
            rec["dense"] = {
                "setup_s": t_build,
                "eval_s": float(np.min(ts)),
                "cpu_s": float(np.min(cs)),
            }
            Xn_full = gather_rows(Xn, trows, N)
            if p == 0 and "eval_s" in rec["direct"]:
                scale = np.linalg.norm(Xd_full, axis=1).max()
                rec["dense"]["error"] = float(np.abs(Xn_full - Xd_full).max() / scale)
        else:
            rec["dense"] = {"skipped": True, "bytes": need * P}
        if p == 0:
            results.append(rec)
            print(f"[P={P}] level {level} done", file=sys.stderr, flush=True)
    if p == 0:
        Path(args.out).write_text(json.dumps(results))


# ----------------------------------------------------------------------------- driver


def fmt_t(t):
    return f"{t * 1e3:.1f} ms" if t < 10 else f"{t:.1f} s "


def driver(args) -> None:
    mpiexec = Path(sys.executable).parent / "mpiexec"
    mpiexec = str(mpiexec) if mpiexec.exists() else "mpiexec"
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        NUMBA_NUM_THREADS="1",
    )
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    runs = {P: {} for P in args.ranks}
    rate = {P: 0.0 for P in args.ranks}
    crate = {P: 0.0 for P in args.ranks}
    loads = []
    with tempfile.TemporaryDirectory() as tmp:
        # levels outer, rank counts inner: the runs compared in a ratio are close in time
        for level in args.levels:
            for P in args.ranks:
                out = Path(tmp) / f"P{P}_l{level}.json"
                cmd = [
                    mpiexec,
                    "-n",
                    str(P),
                    sys.executable,
                    __file__,
                    "--worker",
                    "--out",
                    str(out),
                    "--save",
                    tmp,
                    "--levels",
                    str(level),
                    "--norm",
                    str(args.norm),
                    "--tol",
                    str(args.tol),
                    "--evals",
                    str(args.evals),
                    "--direct-budget",
                    str(args.direct_budget),
                    "--direct-rate",
                    str(rate[P]),
                    "--direct-cpu-rate",
                    str(crate[P]),
                    "--dense-mem",
                    str(args.dense_mem),
                    "--sample",
                    str(args.sample),
                ]
                print("$", " ".join(cmd), flush=True)
                loads.append(os.getloadavg()[0])
                subprocess.run(cmd, env=env, check=True)
                rec = json.loads(out.read_text())[0]
                runs[P][level] = rec
                rate[P] = rec["direct"].get("pairs_per_s", rate[P])
                crate[P] = rec["direct"].get("pairs_per_cpu_s", crate[P])
        # rank independence of the fast path
        import numpy as np

        indep = {}
        if len(args.ranks) > 1:
            for level in args.levels:
                files = [Path(tmp) / f"fast_l{level}_P{P}.npy" for P in args.ranks]
                if all(f.exists() for f in files):
                    a = [np.load(f) for f in files]
                    scale = np.linalg.norm(a[0], axis=1).max()
                    indep[level] = max(np.abs(b - a[0]).max() / scale for b in a[1:])

    load = f"1-min load average before the runs: {min(loads):.1f} to {max(loads):.1f}"
    print(
        f"\nS^2 icosphere, ‖A‖₂ = {args.norm:g} (non-symmetric), ‖V‖₂ = 1, "
        f"tolerance {args.tol:g}, 1 thread per rank, best of the timed evaluations; {load}."
    )
    print(
        "wall: elapsed time per evaluation; cpu: process CPU time per evaluation (maximum "
        "over the ranks), the wall time an idle machine would give; ratios on both."
    )
    head = (
        f"{'lvl':>3} {'N':>7} {'M':>7} {'P':>2} {'method':>7} {'setup':>10} "
        f"{'wall/eval':>10} {'cpu/eval':>10} {'pairs/s':>8} {'error':>8} "
        f"{'vs direct':>11} {'vs dense':>11} {'P2/P1':>10}  notes"
    )
    print(head)
    print("-" * len(head))
    base = args.ranks[0]

    def t_of(m, key):
        return m.get(key, m.get(key + "_est"))

    def pair(a, b, w=11):
        return f"{a:5.1f}/{b:<5.1f}".rjust(w) if a and b else " " * w

    for level in args.levels:
        for P in args.ranks:
            r = runs[P][level]
            N, M = r["N"], r["M"]
            dw, dc = t_of(r["direct"], "eval_s"), t_of(r["direct"], "cpu_s")
            nw, nc = r["dense"].get("eval_s"), r["dense"].get("cpu_s")
            for name in ("direct", "dense", "fast"):
                m = r[name]
                if m.get("skipped") and name == "dense":
                    print(
                        f"{level:>3} {N:>7} {M:>7} {P:>2} {name:>7} {'':>10} {'skipped':>10}"
                        f"{'':>64}  kernel matrix {m['bytes'] / 2**30:.1f} GiB"
                    )
                    continue
                tw, tc = t_of(m, "eval_s"), t_of(m, "cpu_s")
                setup = fmt_t(m["setup_s"]) if "setup_s" in m else ""
                err = m.get("error")
                ref = "ref" if name == "direct" else ""
                err_s = f"{err:8.1e}" if err is not None else f"{ref:>8}"
                vs_d = pair(dw / tw, dc / tc) if name != "direct" else f"{'1':>11}"
                vs_n = pair(nw / tw, nc / tc) if nw and name == "fast" else " " * 11
                sc = " " * 10
                if P != base:
                    mb = runs[base][level][name]
                    if t_of(mb, "eval_s"):
                        sc = pair(t_of(mb, "eval_s") / tw, t_of(mb, "cpu_s") / tc, 10)
                notes = []
                if m.get("skipped"):
                    notes.append("skipped: time estimated from the measured pairs/s")
                if name == "fast":
                    rep = m["report"]
                    if rep.get("method") == "fast":
                        notes.append(
                            f"degree {rep['degree']} ({rep['terms']} terms), bound "
                            f"{rep['bound']:.1e}, sampled error "
                            f"{rep['sampled_error']:.1e}, {rep['direct_targets']} "
                            "targets direct"
                        )
                    else:
                        notes.append("fell back to direct")
                    if m.get("error_on", "all targets") != "all targets":
                        notes.append(f"error on {m['error_on']}")
                print(
                    f"{level:>3} {N:>7} {M:>7} {P:>2} {name:>7} {setup:>10} {fmt_t(tw):>10} "
                    f"{fmt_t(tc):>10} {N * M / tw:8.1e} {err_s} {vs_d} {vs_n} {sc}  "
                    f"{'; '.join(notes)}"
                )
        print()
    print("ratios are wall/cpu; P2/P1 = time on 1 rank / time on 2 ranks")
    for level, e in indep.items():
        print(
            f"rank independence (fast), level {level}: max relative difference "
            f"{args.ranks[0]} vs other rank counts = {e:.1e}"
        )
    if args.write_table:
        write_velocity_table(args, runs, indep, load)
    last = max(args.levels)
    for P in args.ranks:
        r = runs[P][last]["fast"]
        print(
            f"level {last}, {P} rank(s): 1000 SSP-RK3 steps = 3000 fast evaluations "
            f"= {3000 * r['eval_s']:.0f} s wall, {3000 * r['cpu_s']:.0f} s cpu "
            f"(+ setup {r['setup_s']:.1f} s per A)"
        )


def write_velocity_table(args, runs, indep, load) -> None:
    """The measured table as Markdown (``--write-table``): one row per level and rank count;
    a direct sum that was not run is shown with its estimated time, labelled so."""
    from bench_table import command_line, write_table

    def ms(t):
        return f"{t * 1e3:.1f} ms" if t < 1 else f"{t:.2f} s"

    rows = []
    for level in args.levels:
        for P in args.ranks:
            r = runs[P][level]
            d, n, f = r["direct"], r["dense"], r["fast"]
            if d.get("skipped"):
                direct = f"not run (estimated {ms(d['eval_s_est'])})"
                ratio = f"~{d['eval_s_est'] / f['eval_s']:,.0f}× (estimated)"
            else:
                direct = ms(d["eval_s"])
                ratio = f"{d['eval_s'] / f['eval_s']:,.0f}×"
            dense = (f"not formed ({n['bytes'] / 2**30:.1f} GiB)" if n.get("skipped")
                     else ms(n["eval_s"]))  # fmt: skip
            err = f.get("error")
            err_s = "–" if err is None else f"{err:.1e}"
            if err is not None and f.get("error_on", "all targets") != "all targets":
                err_s += f" ({f['error_on']})"
            rep = f["report"]
            how = (
                f"degree {rep['degree']}, {rep['direct_targets']} targets direct"
                if rep.get("method") == "fast"
                else "fell back to the direct sum"
            )
            scale = "–"
            if P != args.ranks[0]:
                scale = f"{runs[args.ranks[0]][level]['fast']['eval_s'] / f['eval_s']:.1f}×"
            rows.append([level, f"{r['N']:,} / {r['M']:,}", P, direct, dense,
                         f"{ms(f['eval_s'])} (set-up {ms(f['setup_s'])})", ratio, err_s,
                         scale, how])  # fmt: skip
    notes = [
        f"S^2 icosphere points (targets: vertices, sources: cell centroids), ‖A‖₂ = "
        f"{args.norm:g} (non-symmetric), ‖V‖₂ = 1, fast-method tolerance {args.tol:g}; "
        "1 thread per rank; wall time per evaluation, best of the timed evaluations; "
        f"{load}.",
        "error: max-norm relative error of the fast method against the direct sum "
        "(`max_i |X_i − X_i^direct| / max_i |X_i^direct|`).",
        "A direct sum above `--direct-budget` seconds is not run: its time is estimated from "
        "the pairs per second measured at the smaller levels, and so is its ratio.",
    ]
    for level, e in indep.items():
        notes.append(f"level {level}: the fast velocity on {' vs '.join(map(str, args.ranks))} "
                     f"ranks differs by {e:.1e} (relative, max norm).")  # fmt: skip
    header = [
        "icosphere level",
        "targets / sources",
        "ranks",
        "direct",
        "dense kernel",
        "fast",
        "fast vs direct",
        "error",
        f"fast, vs {args.ranks[0]} rank(s)",
        "fast method",
    ]
    write_table(args.write_table, "Nonlocal velocity: direct sum, dense kernel, fast expansion",
                command_line(), header, rows, notes)  # fmt: skip
    print(f"wrote {args.write_table}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--levels", type=int, nargs="+", default=[3, 4, 5, 6, 7])
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--norm", type=float, default=10.0, help="‖A‖₂")
    ap.add_argument("--tol", type=float, default=1e-8, help="fast-method tolerance")
    ap.add_argument("--evals", type=int, default=5, help="timed fast/dense evaluations")
    ap.add_argument(
        "--direct-budget",
        type=float,
        default=120.0,
        help="skip the direct sum when its estimated time exceeds this (s)",
    )
    ap.add_argument(
        "--dense-mem",
        type=float,
        default=3 * 2**30,
        help="largest per-rank kernel matrix materialised (bytes)",
    )
    ap.add_argument(
        "--direct-rate",
        type=float,
        default=0.0,
        help="pairs/s of the direct sum, to skip it at large sizes (internal)",
    )
    ap.add_argument("--direct-cpu-rate", type=float, default=0.0, help=argparse.SUPPRESS)
    ap.add_argument(
        "--sample",
        type=int,
        default=256,
        help="targets checked against the direct sum where it is skipped",
    )
    ap.add_argument(
        "--write-table",
        metavar="PATH",
        default="",
        help="also write the table as Markdown (e.g. docs/benchmarks/velocity.md)",
    )
    ap.add_argument("--worker", action="store_true", help="run under mpiexec (internal)")
    ap.add_argument("--out", default="bench_velocity.json")
    ap.add_argument("--save", default="")
    args = ap.parse_args(argv)
    if args.worker:
        try:
            worker(args)
        except BaseException:
            import traceback

            from mpi4py import MPI

            traceback.print_exc()
            MPI.COMM_WORLD.Abort(1)  # do not leave the other ranks waiting
    else:
        driver(args)


if __name__ == "__main__":
    main()
