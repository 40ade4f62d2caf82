"""Command line: ``python -m solver {run,config} ...`` (see ``python -m solver --help``).

Every rank runs the same command; only rank 0 prints. Invalid input exits with status 2 and
a message naming the field to fix; a run that breaks down (NaN, negative density) exits 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m solver",
        description="Mean-field self-attention dynamics on meshed spheres (DOLFINx + MPI): "
        "evolve the token density under base and LoRA-perturbed weights and measure the drift.",
        epilog="Run in parallel with: mpiexec -n 2 python -m solver run CONFIG.toml --output DIR",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    r = sub.add_parser("run", help="evolve the base and perturbed flows of a TOML config")
    r.add_argument("config", nargs="?", type=Path, help="TOML config (default: embedded default)")
    r.add_argument("--output", "-o", type=Path, required=True, help="output folder")
    r.add_argument("--resume", action="store_true", help="continue from output/checkpoint.npz")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    v = sub.add_parser("validate", help="PDE vs particles (W2), Prop 3.1 bound, Prop 3.3 criterion")
    v.add_argument("config", nargs="?", type=Path, help="TOML config (default: embedded default)")
    v.add_argument("--output", "-o", type=Path, required=True, help="report folder")
    v.add_argument("--no-progress", action="store_true", help="no progress bar")
    c = sub.add_parser("config", help="print the embedded default config (TOML)")
    c.add_argument("--check", type=Path, metavar="CONFIG", help="validate a config and exit")
    from .viz import add_plot_parser

    add_plot_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from mpi4py import MPI

    from .io import ConfigError, check_config, default_config_text, load_config

    comm = MPI.COMM_WORLD
    say = print if comm.rank == 0 else (lambda *a, **k: None)
    try:
        if args.command == "plot":
            from .viz import plot_main

            return plot_main(args)
        if args.command == "config":
            if args.check is not None:
                est = check_config(load_config(args.check), comm)
                size = (
                    ""
                    if est["snapshot_bytes"] is None
                    else (f", saved densities {est['snapshot_bytes'] / 1e6:.3g} MB")
                )
                say(f"{args.check}: valid ({est['cells'] or 'file'} cells, at least "
                    f"{est['steps']} time steps, {est['saves']} saves{size})")  # fmt: skip
            else:
                say(default_config_text(), end="")
            return 0
        cfg = load_config(args.config)
        if args.command == "validate":
            from .validate import validate

            validate(comm, cfg, args.output, progress=not args.no_progress)
            say(f"validation report: {args.output}/report.md")
            return 0
        from .run import run_config

        res = run_config(comm, cfg, args.output, resume=args.resume,
                         progress=not args.no_progress)  # fmt: skip
        last = dict(zip(res.columns, res.diagnostics[-1], strict=True))
        msg = f"done: t = {last['t']:.6g}, mass = {last['mass']:.15g}, min = {last['min']:.3e}"
        if "moment_drift" in last:
            msg += f", moment drift = {last['moment_drift']:.6e}"
        say(msg)
        say(f"results in {args.output}/ (result.npz, diagnostics.csv, density.bp)")
        return 0
    except (ConfigError, ValueError) as e:
        say(f"error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:
        say(f"run stopped: {e}", file=sys.stderr)
        return 1
