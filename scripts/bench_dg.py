"""Accuracy versus cost: upwind DG0 (flat cells) versus DG1 (curved P2 cells, Zhang-Shu limiter).

Command (from the repository root)::

    .venv/bin/python scripts/bench_dg.py             # default: about 7 minutes (1 core)
    .venv/bin/python scripts/bench_dg.py --quick     # about 1 minute (coarser meshes)
    .venv/bin/python scripts/bench_dg.py --full      # about 30 minutes (the finest meshes:
                                                     # icosphere level 6 for DG0, 5 for DG1)
    .venv/bin/python scripts/bench_dg.py --cases nl w1 --dg2   # DG2 as well (+10%)
    .venv/bin/python scripts/bench_dg.py --quick --write-table docs/benchmarks/dg.md

``--write-table PATH`` also writes every run's row, with the command, date and machine, as the
Markdown file the README links to (the committed one comes from ``--quick``).

It also runs under ``.venv/bin/mpiexec -n 2`` (same numbers, wall times of the 2 ranks).

Cases (all with SSP-RK3 at ``cfl = 0.9`` of each scheme's own stable, positivity-preserving
time step; the DG1 limiter is on everywhere):

``s1-exact``
    The nonlocal problem on S^1 with uniform attention (Q = K = 0, V = I) from the
    Poisson kernel ``r0 = 0.5`` to ``T = 2``: exact solution (model.md).
``s1-nonlocal``
    The nonlocal problem on S^1 with ``A = KᵀQ = 2 I``, ``V = I`` (clustering), from
    ``ρ0 ∝ exp(1.5 cos(θ - 0.3) + 0.8 cos 3θ)`` to ``T = 2``; the velocity is the direct sum
    over all quadrature points (O(n²) per stage, as in production). The reference is a
    Lagrangian (characteristics) solution: 512 weighted particles on a uniform grid in
    the initial angle (a spectrally accurate quadrature of μ), RK4, and the Jacobian of the
    flow map integrated alongside, so ``ρ_T(Φ(θ)) = ρ0(θ) / Φ'(θ)``, interpolated by a
    periodic cubic spline; its difference to 256 particles is printed (~1e-6: far below the
    errors measured).
``s2-nonlocal``
    The nonlocal problem on S^2 (``A = KᵀQ = 2 I``, ``V = I``: clustering) from two von
    Mises-Fisher bumps (κ = 4) to ``T = 1``; fast velocity (``auto``, tolerance 1e-10). No
    exact solution: the reference is DG1 two levels above the finest DG1 run (level 6 by
    default), and the errors are those of the cell averages against the reference's mass
    in each coarse cell (icosphere cells are nested: the level-``k`` ancestor of cell ``j``
    is ``j mod 20·4^k``), ``l1 = Σ_K |m_K − m_K^ref|`` (``m``: cell masses, total 1) and
    ``l2``, ``linf`` of the cell averages ``m_K / |K|``. The difference between the DG1 runs
    one and two levels above the finest compared one is printed: the reference's own error.
``nl``
    Nair & Lauritzen (2010) deformational flow with translation, Gaussian hills, T = 5,
    κ = 10/T (the standard case 4 of Lauritzen et al. 2012).
``w1``
    Williamson et al. (1992) test 1: cosine bell, one revolution at α = π/2 - 0.05
    (``--full`` adds α = 0, 0.05, π/2 on the default meshes).

Errors are the normalised ``l1 = I|q - q_T| / I|q_T|``, ``l2``, ``linf`` of Williamson et al.
of the discrete density as a function (DG0: piecewise constant; DG1: piecewise linear on the
curved cells), by quadrature, and ``l1avg``: the same ``l1`` of the cell averages against
exact cell averages (the finite-volume way, favourable to DG0). ``rate`` is the observed
order of ``l2`` between successive meshes. Cost is the CPU time of the run (setup and
time stepping; max over ranks; BLAS single-threaded), which the other loads of a shared
machine disturb less than wall time (also printed). The summary gives, for each DG1 run,
the CPU time DG0 needs for the same ``l1`` (and the same ``l1avg``), interpolated log-log
between DG0 runs; ``>t`` when even the finest DG0 run does not reach it (a hard lower bound;
no extrapolation).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")  # one core per rank: CPU time is then the cost

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import solver  # noqa: E402, I001  (imports DOLFINx's MPI first)
from mpi4py import MPI  # noqa: E402
from scipy.interpolate import CubicSpline  # noqa: E402
from solver.analysis import poisson_kernel, poisson_radius  # noqa: E402
from solver.transport import DG0Upwind  # noqa: E402
from solver.analysis import nair_lauritzen, normalised_errors, williamson1  # noqa: E402
from solver.mesh import CurvedSphereMesh, curve, curved_sphere_mesh  # noqa: E402
from solver.transport import DGUpwind, advance  # noqa: E402
from solver.transport import NonlocalField, PrescribedField  # noqa: E402

COMM = MPI.COMM_WORLD
CFL = 0.9


def say(*a):
    if COMM.rank == 0:
        print(*a, flush=True)


# --------------------------------------------------------------------------------------------
# problems


def angle(x):
    return np.arctan2(x[:, 1], x[:, 0])


BETA, T_NONLOCAL = 2.0, 2.0
T_S2 = 1.0


def rho0_nonlocal(x):
    th = angle(x)
    return np.exp(1.5 * np.cos(th - 0.3) + 0.8 * np.cos(3 * th))


def lagrangian_reference(n: int, T: float, dt: float = 0.01):
    """``ρ_T`` of the S^1 nonlocal problem by characteristics (see module doc)."""
    A, V = BETA * np.eye(2), np.eye(2)
    th = 2 * np.pi * np.arange(n) / n
    x0 = np.column_stack([np.cos(th), np.sin(th)])
    r0 = rho0_nonlocal(x0)
    Z = r0.sum() * 2 * np.pi / n
    logw = np.log(r0 * 2 * np.pi / n / Z)

    def rate(phi, jac):
        x = np.column_stack([np.cos(phi), np.sin(phi)])
        t = np.column_stack([-x[:, 1], x[:, 0]])
        logits = (x @ A.T) @ x.T + logw  # y_jᵀ A x_i + log w_j
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        vy = x @ V.T
        m = p @ vy  # softmax mean of V y
        s = p * ((t @ A.T) @ x.T)  # p_ij y_jᵀ A t_i
        dm = s @ vy - m * s.sum(axis=1, keepdims=True)  # d m / dθ
        xt = np.sum(t * m, axis=1)  # θ' = t · m
        dxt = np.sum(-x * m, axis=1) + np.sum(t * dm, axis=1)
        return xt, dxt * jac

    phi, jac = th.copy(), np.ones(n)
    for _ in range(int(round(T / dt))):
        a1, b1 = rate(phi, jac)
        a2, b2 = rate(phi + dt / 2 * a1, jac + dt / 2 * b1)
        a3, b3 = rate(phi + dt / 2 * a2, jac + dt / 2 * b2)
        a4, b4 = rate(phi + dt * a3, jac + dt * b3)
        phi = phi + dt / 6 * (a1 + 2 * a2 + 2 * a3 + a4)
        jac = jac + dt / 6 * (b1 + 2 * b2 + 2 * b3 + b4)
    rho = r0 / Z / jac
    spline = CubicSpline(np.append(phi, phi[0] + 2 * np.pi), np.append(rho, rho[0]),
                         bc_type="periodic")  # fmt: skip

    def f(x):
        return spline(phi[0] + np.mod(angle(x) - phi[0], 2 * np.pi))

    return f


# --------------------------------------------------------------------------------------------
# runs


def dg0_errors(op: DG0Upwind, rho: np.ndarray, exact, degree: int = 8) -> dict:
    """Errors of the piecewise-constant DG0 density (flat cells, points projected)."""
    sm = op.sm
    p, w = sm.quadrature(degree)
    ex = np.asarray(exact(p.reshape(-1, sm.gdim)), float).reshape(p.shape[:2])
    wk = sm.areas[:, None] * w[None, :]
    out = normalised_errors(sm.comm, np.broadcast_to(rho[:, None], ex.shape), ex, wk)
    avg = normalised_errors(sm.comm, rho, ex @ w, sm.areas)
    out["l1_avg"] = avg["l1"]
    return out


def run(scheme: int, sphere: int, size: int, make_field, initial, exact, T: float,
        exact_scale=None) -> dict:  # fmt: skip
    """One run; ``exact_scale(sm) -> c``: the exact solution is ``exact / c``."""
    COMM.barrier()
    t0, c0 = time.perf_counter(), time.process_time()
    kw = {"cells": size} if sphere == 1 else {"refinement": size}
    if scheme == 0:
        op = DG0Upwind(solver.sphere_mesh(COMM, sphere, **kw))
    else:
        op = DGUpwind(curved_sphere_mesh(COMM, sphere, **kw), scheme)
    state = op.initial_state(initial)
    t1 = time.perf_counter()
    state, info = advance(op, make_field(op), state, T, CFL)
    t2, c2 = time.perf_counter(), time.process_time()
    scale = 1.0 if exact_scale is None else exact_scale(op.sm)

    def ex(x):
        return exact(x) / scale

    e = dg0_errors(op, state, ex) if scheme == 0 else op.errors(state, ex)
    wall = COMM.allreduce(t2 - t0, op=MPI.MAX)
    cpu = COMM.allreduce(c2 - c0, op=MPI.MAX)
    dofs = op.sm.num_cells * (1 if scheme == 0 else op.ndofs)
    return dict(scheme=scheme, sphere=sphere, size=size, dofs=dofs, steps=info["steps"],
                wall=wall, cpu=cpu, step_wall=COMM.allreduce(t2 - t1, op=MPI.MAX),
                mass=info["mass_drift"], low=info["min_average"], **e)  # fmt: skip


def s2_nonlocal_setup():
    """Model and initial density of the ``s2-nonlocal`` case."""
    Q = np.sqrt(2.0) * np.eye(3)
    model = solver.Model(Q, Q, np.eye(3))
    init = solver.Mixture(
        [solver.VonMisesFisher((1.0, 0.0, 0.2), 4.0), solver.VonMisesFisher((-0.3, 1.0, 0.0), 4.0)],
        [0.5, 0.5],
    )
    return model, init


def run_masses(scheme: int, level: int, T: float) -> dict:
    """One ``s2-nonlocal`` run: cost and the final cell masses in icosphere order (rank 0)."""
    model, init = s2_nonlocal_setup()
    COMM.barrier()
    t0, c0 = time.perf_counter(), time.process_time()
    sm = solver.sphere_mesh(COMM, 2, refinement=level)
    op = DG0Upwind(sm) if scheme == 0 else DGUpwind(curve(sm), scheme)
    field = NonlocalField(op, model, method="auto", tolerance=1e-10)
    state, info = advance(op, field, op.initial_state(init), T, CFL)
    wall = COMM.allreduce(time.perf_counter() - t0, op=MPI.MAX)
    cpu = COMM.allreduce(time.process_time() - c0, op=MPI.MAX)
    masses = op.sm.gather(op.cell_averages(state) * op.sm.areas)
    areas = op.sm.gather(op.sm.areas)
    dofs = op.sm.num_cells * (1 if scheme == 0 else op.ndofs)
    return dict(scheme=scheme, sphere=2, size=level, dofs=dofs, steps=info["steps"], wall=wall,
                cpu=cpu, mass=info["mass_drift"], low=info["min_average"], masses=masses,
                areas=areas)  # fmt: skip


def restricted_errors(r: dict, ref_masses: np.ndarray) -> dict:
    """Errors of a run's cell averages against the reference's mass per (coarse) cell."""
    n = len(r["masses"])
    mref = ref_masses.reshape(-1, n).sum(axis=0)  # children j = i + b n of coarse cell i
    a = r["areas"]
    rho, rho_ref = r["masses"] / a, mref / a
    l1 = np.abs(r["masses"] - mref).sum() / mref.sum()
    l2 = np.sqrt(((rho - rho_ref) ** 2 * a).sum() / (rho_ref**2 * a).sum())
    linf = np.abs(rho - rho_ref).max() / np.abs(rho_ref).max()
    return dict(l1=l1, l1_avg=l1, l2=l2, linf=linf)


def mass_scale(initial):
    """States have unit mass: the exact solution is divided by the discrete initial mass."""

    def f(sm):  # the quadrature degrees of DGUpwind / DG0Upwind.initial_state
        degree = 10 if isinstance(sm, CurvedSphereMesh) else 4
        return sm.integrate(sm.cell_averages(initial, degree))

    return f


#: Rows of the Markdown table (``--write-table``), one per run, in the order printed.
TABLE: list[list] = []


def print_rows(title: str, rows: list[dict]) -> None:
    say(f"\n== {title}")
    say(f"{'scheme':>6} {'mesh':>6} {'dofs':>7} {'steps':>6} {'cpu s':>8} {'wall s':>8} "
        f"{'l1':>10} {'l2':>10} {'linf':>10} {'l1avg':>10} {'rate':>5} {'mass err':>8} "
        f"{'min avg':>9}")  # fmt: skip
    prev = {}
    for r in rows:
        p = prev.get(r["scheme"])
        rate = ""
        if p is not None:
            ratio = np.sqrt(r["dofs"] / p["dofs"]) if r["sphere"] == 2 else r["dofs"] / p["dofs"]
            rate = f"{np.log(p['l2'] / r['l2']) / np.log(ratio):5.2f}"
        TABLE.append([title, f"DG{r['scheme']}", r["size"], f"{r['dofs']:,}", r["steps"],
                      f"{r['cpu']:.2f}", f"{r['l1']:.2e}", f"{r['l2']:.2e}", f"{r['linf']:.2e}",
                      f"{r['l1_avg']:.2e}", rate.strip() or "–", f"{r['mass']:.1e}",
                      f"{r['low']:.1e}"])  # fmt: skip
        say(f"{'DG' + str(r['scheme']):>6} {r['size']:>6} {r['dofs']:>7} {r['steps']:>6} "
            f"{r['cpu']:8.2f} {r['wall']:8.2f} {r['l1']:10.3e} {r['l2']:10.3e} "
            f"{r['linf']:10.3e} {r['l1_avg']:10.3e} {rate:>5} {r['mass']:8.1e} "
            f"{r['low']:9.2e}")  # fmt: skip
        prev[r["scheme"]] = r


def dg0_cost_for(rows0: list[dict], err: float, key: str) -> str:
    """CPU time DG0 needs for error ``err``: interpolated log-log between DG0 runs; below the
    finest DG0 error, the finest run's time as a hard lower bound ``>t``."""
    pts = sorted(((r[key], r["cpu"]) for r in rows0), reverse=True)  # coarse to fine
    e, t = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    le = np.log(err)
    if le > e[0]:
        return f"<{np.exp(t[0]):.3g}"
    for i in range(len(e) - 1):
        if e[i + 1] <= le <= e[i]:
            s = (le - e[i]) / (e[i + 1] - e[i]) if e[i + 1] != e[i] else 0.0
            return f"{np.exp(t[i] + s * (t[i + 1] - t[i])):.3g}"
    return f">{np.exp(t[-1]):.3g}"


def summary(title: str, rows: list[dict]) -> list[str]:
    rows0 = [r for r in rows if r["scheme"] == 0]
    lines = []
    for r in rows:
        if r["scheme"] == 0:
            continue
        lines.append(
            f"{title:<14} DG{r['scheme']} {r['size']:>5}: l1 {r['l1']:.2e} l1avg "
            f"{r['l1_avg']:.2e} in {r['cpu']:.3g} s | DG0 for the same l1: "
            f"{dg0_cost_for(rows0, r['l1'], 'l1')} s, same l1avg: "
            f"{dg0_cost_for(rows0, r['l1_avg'], 'l1_avg')} s"
        )
    return lines


def s2_nonlocal(schemes, T: float) -> list[str]:
    """The ``s2-nonlocal`` case: runs, reference, table and summary lines."""
    top = max(s[1][-1] for s in schemes if s[0] == 1)
    refs = {lev: run_masses(1, lev, T) for lev in (top + 1, top + 2)}
    rows = []
    for scheme, sz in schemes:
        for level in sz:
            rows.append(run_masses(scheme, level, T))
            say(f"  S^2 nonlocal: DG{scheme} {level}: {rows[-1]['wall']:.1f} s")
    title = f"S^2 nonlocal (A = 2I, V = I), T = {T:g}"
    if COMM.rank == 0:
        ref = refs[top + 2]["masses"]
        for r in rows:
            r.update(restricted_errors(r, ref))
        own = restricted_errors(refs[top + 1], ref)
        say(f"\nreference: DG1 level {top + 2} ({refs[top + 2]['cpu']:.0f} s); DG1 level "
            f"{top + 1} against it: l1 {own['l1']:.2e}, l2 {own['l2']:.2e}")  # fmt: skip
        print_rows(title, rows)
        return summary("S^2 nonlocal", rows)
    return []


# --------------------------------------------------------------------------------------------


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="coarser meshes (~1 min)")
    g.add_argument("--full", action="store_true", help="finest meshes too (~30 min)")
    cases = ["s1-exact", "s1-nonlocal", "s2-nonlocal", "nl", "w1"]
    ap.add_argument("--cases", nargs="+", default=cases, choices=cases)
    ap.add_argument("--dg2", action="store_true", help="add DG2 runs")
    ap.add_argument(
        "--write-table",
        metavar="PATH",
        default="",
        help="also write the table as Markdown (e.g. docs/benchmarks/dg.md)",
    )
    args = ap.parse_args(argv)
    mode = "quick" if args.quick else ("full" if args.full else "default")
    sizes = {  # (DG0 sizes, DG1 sizes, DG2 sizes) per mode
        "s1-exact": {
            "quick": ((128, 256, 512, 1024), (32, 64, 128, 256), (32, 64, 128)),
            "default": ((128, 256, 512, 1024, 2048, 4096), (32, 64, 128, 256, 512),
                        (32, 64, 128, 256)),
            "full": ((128, 256, 512, 1024, 2048, 4096, 8192), (32, 64, 128, 256, 512, 1024),
                     (32, 64, 128, 256, 512)),
        },
        "s1-nonlocal": {
            "quick": ((128, 256, 512), (32, 64, 128), (32, 64)),
            "default": ((128, 256, 512, 1024), (32, 64, 128, 256), (32, 64, 128)),
            "full": ((128, 256, 512, 1024, 2048), (32, 64, 128, 256, 512), (32, 64, 128, 256)),
        },
        "s2-nonlocal": {"quick": ((3, 4), (2, 3), (2,)), "default": ((3, 4, 5), (2, 3, 4), (2, 3)),
                        "full": ((3, 4, 5), (2, 3, 4), (2, 3))},  # reference: DG1, +2 levels
        "nl": {"quick": ((2, 3, 4), (2, 3), (2,)), "default": ((3, 4, 5), (2, 3, 4), (2, 3)),
               "full": ((3, 4, 5, 6), (2, 3, 4, 5), (2, 3, 4))},
        "w1": {"quick": ((2, 3, 4), (2, 3), (2,)), "default": ((3, 4, 5), (2, 3, 4), (2, 3)),
               "full": ((3, 4, 5, 6), (2, 3, 4, 5), (2, 3, 4))},
    }  # fmt: skip
    say(f"bench_dg: mode {mode}, {COMM.size} rank(s), cfl {CFL}, DOLFINx "
        f"{solver.dolfinx_version()}")  # fmt: skip
    report: list[str] = []
    for case in args.cases:
        s0, s1, s2 = sizes[case][mode]
        schemes = [(0, s0), (1, s1)] + ([(2, s2)] if args.dg2 else [])
        if case == "s2-nonlocal":
            report += s2_nonlocal(schemes, T_S2)
            continue
        if case == "s1-exact":
            r0, T = 0.5, 2.0
            model = solver.Model(np.zeros((2, 2)), np.zeros((2, 2)), np.eye(2))
            problems = [
                (
                    "S^1 exact",
                    1,
                    lambda op, m=model: NonlocalField(op, m),
                    poisson_kernel(r0),
                    poisson_kernel(poisson_radius(r0, T)),
                    T,
                    None,
                )
            ]
        elif case == "s1-nonlocal":
            t0 = time.perf_counter()
            ref = lagrangian_reference(512, T_NONLOCAL)
            coarse = lagrangian_reference(256, T_NONLOCAL)
            th = np.linspace(0, 2 * np.pi, 20001)
            xs = np.column_stack([np.cos(th), np.sin(th)])
            diff = np.abs(ref(xs) - coarse(xs)).max()
            say(f"\nLagrangian reference (512 particles, RK4 dt 0.01): max ρ {ref(xs).max():.4f},"
                f" max |ρ_512 - ρ_256| {diff:.1e} ({time.perf_counter() - t0:.1f} s)")  # fmt: skip
            Q = np.sqrt(BETA) * np.eye(2)
            model = solver.Model(Q, Q, np.eye(2))
            problems = [
                (
                    "S^1 nonlocal",
                    1,
                    lambda op, m=model: NonlocalField(op, m),
                    rho0_nonlocal,
                    ref,
                    T_NONLOCAL,
                    None,
                )
            ]
        else:
            if case == "nl":
                cases = [nair_lauritzen(T=5.0)]
            else:
                # --full: α = π/2 - 0.05 on the finest meshes, the other angles as default
                alphas = [np.pi / 2 - 0.05] + ([0.0, 0.05, np.pi / 2] if mode == "full" else [])
                cases = [williamson1(a, T=5.0) for a in alphas]
            problems = [
                (
                    c.name,
                    2,
                    lambda op, c=c: PrescribedField(op, c.velocity, c.speed),
                    c.initial,
                    c.exact,
                    c.T,
                    mass_scale(c.initial),
                )
                for c in cases
            ]
        for i, (title, sphere, field, init, exact, T, scale) in enumerate(problems):
            rows = []
            if i > 0:  # the other Williamson angles
                d0, d1, d2 = sizes[case]["default"]
                schemes = [(0, d0), (1, d1)] + ([(2, d2)] if args.dg2 else [])
            for scheme, sz in schemes:
                for size in sz:
                    rows.append(run(scheme, sphere, size, field, init, exact, T, scale))
                    r = rows[-1]
                    say(f"  {title}: DG{scheme} {size}: {r['wall']:.1f} s, l1 {r['l1']:.3e}")
            print_rows(f"{title}, T = {T:g}", rows)
            report += summary(title[:14], rows)
    say("\n== CPU seconds DG0 needs for the error of each DG1 run")
    for line in report:
        say(line)
    if args.write_table and COMM.rank == 0:
        from bench_table import command_line, write_table

        header = [
            "test",
            "scheme",
            "mesh",
            "dofs",
            "steps",
            "CPU s",
            "l1",
            "l2",
            "linf",
            "l1 of cell averages",
            "rate (l2)",
            "mass error",
            "min cell average",
        ]
        notes = [
            f"mode {mode}, {COMM.size} rank(s), SSP-RK3 at cfl {CFL} of each scheme's stable "
            "step, Zhang–Shu limiter on for DG1; mesh: icosphere level (S^2) or number of "
            "cells (S^1); errors are the normalised l1, l2, linf of Williamson et al. (1992) "
            "(S^2 nonlocal: against DG1 two levels finer, see the script's docstring); rate: "
            "observed order of l2 between successive meshes of the same scheme.",
            "CPU seconds DG0 needs for the error of each DG1 run (interpolated log-log between "
            "DG0 runs; `>t`: not reached by the finest DG0 run, a lower bound):",
        ] + [f"`{line}`" for line in report]
        write_table(args.write_table, "Upwind DG0 against DG1: accuracy and cost",
                    command_line(ranks=COMM.size), header, TABLE, notes)  # fmt: skip
        say(f"wrote {args.write_table}")


if __name__ == "__main__":
    from solver.parallel import abort_on_error

    abort_on_error()
    main()
