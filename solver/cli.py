"""Command line: ``python -m solver {run,validate,config,adapter,plot} ...`` (``--help``).

Every rank runs the same command; only rank 0 prints. Invalid input exits with status 2 and
a message naming the field to fix; a run that breaks down (NaN, negative density, lost mass)
or cannot write its output exits 1. Under ``mpiexec`` an error on some ranks only (a file
error on rank 0, say) is printed by the rank that met it and ends every rank (``MPI_Abort``
with the same status) within seconds instead of leaving the others waiting.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import signal
import sys
import threading
import traceback
import warnings
from pathlib import Path

__all__ = ["main", "build_parser"]


def _folder(text: str) -> Path:
    """An output folder: not empty (``--output ''`` would be the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must name a folder, got an empty string")
    return Path(text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m solver",
        description="Mean-field self-attention dynamics on meshed spheres (DOLFINx + MPI): "
        "evolve the token density under base and LoRA-perturbed weights and measure the drift.",
        epilog="Run in parallel with: mpiexec -n 2 python -m solver run CONFIG.toml --output DIR",
    )
    from . import __version__

    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    r = sub.add_parser("run", help="evolve the base and perturbed flows of a TOML config")
    r.add_argument("config", nargs="?", type=Path, help="TOML config (default: embedded default)")
    r.add_argument("--output", "-o", type=_folder, required=True, help="output folder")
    r.add_argument("--resume", action="store_true", help="continue from output/checkpoint.npz")
    r.add_argument("--overwrite", action="store_true",
                   help="replace a different run found in the output folder")  # fmt: skip
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    v = sub.add_parser("validate", help="PDE vs particles (W2), Prop 3.1 bound, Prop 3.3 criterion")
    v.add_argument("config", nargs="?", type=Path, help="TOML config (default: embedded default)")
    v.add_argument("--output", "-o", type=_folder, required=True, help="report folder")
    v.add_argument("--no-progress", action="store_true", help="no progress bar")
    c = sub.add_parser("config", help="print the embedded default config (TOML)")
    c.add_argument("--check", type=Path, metavar="CONFIG", help="validate a config and exit")
    a = sub.add_parser("adapter", help="one head of a Hugging Face model + PEFT LoRA adapter "
                       "as [model] and [perturbation] TOML (stdout)")  # fmt: skip
    a.add_argument("--base", type=Path, required=True, help="model folder (config.json, "
                   "model.safetensors)")  # fmt: skip
    a.add_argument("--adapter", type=Path, required=True, help="adapter folder "
                   "(adapter_config.json, adapter_model.safetensors)")  # fmt: skip
    a.add_argument("--layer", type=int, required=True, help="layer index (from 0)")
    a.add_argument("--head", type=int, required=True, help="query head index (from 0)")
    a.add_argument("--dim", type=int, help="project onto the top-k left singular subspace of "
                   "V (k = 2, 3 for the PDE); the relative errors go to stderr")  # fmt: skip
    from .viz import add_plot_parser

    add_plot_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    errcomm = comm.Dup()  # used only to find out whether every rank failed (all_failed)
    with _plain_signals_and_warnings(comm):
        try:
            return _main(args, comm, errcomm)
        except KeyboardInterrupt as e:  # a signal held while starting up (_release)
            signum = getattr(e, "signum", signal.SIGINT)
            return _fail(comm, errcomm, 128 + signum, _stopped_outside(signum))
        finally:
            errcomm.Free()


def _stopped_outside(signum: int = signal.SIGINT) -> str:
    return (f"stopped by {signal.Signals(signum).name} outside the time loop; a checkpoint "
            "already written resumes with --resume")  # fmt: skip


@contextlib.contextmanager
def _plain_signals_and_warnings(comm):
    """SIGINT and SIGTERM are held (:mod:`solver._startup`) until :func:`_release`, once the
    command's modules are imported: a KeyboardInterrupt inside an import left DOLFINx's C++
    module half made (segmentation fault) or mpiexec reporting a killed process. Then SIGTERM
    raises :class:`~solver.parallel.Interrupted` (not PETSc's banner and ``MPI_Abort(59)``)
    and SIGINT ``KeyboardInterrupt``; the time loop installs its own handlers, see
    :class:`~solver.parallel.StopSignals`. Warnings print as one line ``warning: ...`` on
    the rank that met them. All put back on return (``main`` is also called in-process)."""
    from . import _startup

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"warning: {message}", file=sys.stderr, flush=True)

    main_thread = threading.current_thread() is threading.main_thread()
    old = _startup.record_signals() if main_thread else {}
    old_show, warnings.showwarning = warnings.showwarning, show
    try:
        yield
    finally:
        warnings.showwarning = old_show
        _startup.clear()
        for s, h in old.items():
            signal.signal(s, signal.SIG_DFL if h is None else h)


def _import_for(args) -> None:
    """Import the modules of the command (DOLFINx and its C++ module included)."""
    import importlib

    names = {"plot": ["solver.viz._plots"], "adapter": ["solver.nn._hf"],
             "run": ["dolfinx", "solver.run"], "validate": ["dolfinx", "solver.validate"],
             "config": ["dolfinx"] if getattr(args, "check", None) else []}  # fmt: skip
    for name in names.get(args.command, []):
        importlib.import_module(name)


def _release() -> None:
    """End the hold of :func:`_plain_signals_and_warnings`: a signal held is raised now (every
    rank got it from mpiexec: they all stop here), later ones raise where they come."""
    from . import _startup
    from .parallel import Interrupted

    if threading.current_thread() is not threading.main_thread():
        return

    def term(signum, frame):
        raise Interrupted(signum)

    signal.signal(signal.SIGTERM, term)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if signum := _startup.pending():
        _startup.clear()
        raise Interrupted(signum)


def _fail(comm, errcomm, code: int, msg: str) -> int:
    """Every rank failed alike: rank 0 says so and all return ``code``. Some rank is still
    running (the error happened on this rank only): say it from here and end every rank."""
    from .parallel import all_failed

    if all_failed(errcomm):
        if comm.rank == 0:
            print(msg, file=sys.stderr, flush=True)
        return code
    print(f"[rank {comm.rank}] {msg}", file=sys.stderr, flush=True)
    comm.Abort(code)
    return code  # pragma: no cover - Abort does not return


def _main(args, comm, errcomm) -> int:
    from .io import ConfigError, check_config, default_config_text, load_config
    from .parallel import Interrupted, RootError

    say = print if comm.rank == 0 else (lambda *a, **k: None)
    try:
        _import_for(args)  # with the signals held (a KeyboardInterrupt in an import crashes)
        _release()
        if args.command == "plot":
            from .viz import plot_main

            return plot_main(args)
        if args.command == "adapter":
            from .nn._hf import adapter_toml, project_head, read_head

            hm = read_head(args.base, args.adapter, args.layer, args.head)
            if args.dim is not None:
                hm = project_head(hm, args.dim)
                if comm.rank == 0:
                    errs = ", ".join(f"{k} {v:.3e}" for k, v in hm.errors.items())
                    print(f"projection onto {args.dim} dimensions, relative Frobenius error: "
                          f"{errs}", file=sys.stderr)  # fmt: skip
            say(adapter_toml(hm), end="")
            return 0
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
        check_config(cfg, comm)  # the checks of `config --check`, before any output is made
        if args.command == "validate":
            from .validate import validate

            validate(comm, cfg, args.output, progress=not args.no_progress)
            say(f"validation report: {args.output}/report.md")
            return 0
        from .run import run_config

        res = run_config(comm, cfg, args.output, resume=args.resume, overwrite=args.overwrite,
                         progress=not args.no_progress)  # fmt: skip
        last = dict(zip(res.columns, res.diagnostics[-1], strict=True))
        msg = f"done: t = {last['t']:.6g}, mass = {last['mass']:.15g}, min = {last['min']:.3e}"
        if "moment_drift" in last:
            msg += f", moment drift = {last['moment_drift']:.6e}"
        say(msg)
        if comm.rank == 0:
            files = json.loads((args.output / "manifest.json").read_text())["files"]
            say(f"results in {args.output}/: {', '.join(files)}")
        return 0
    except Interrupted as e:
        if e.t is None:  # before or after the time loop, maybe on some ranks only
            return _fail(comm, errcomm, e.exit_code, f"{e} (at once: outside the time loop, or "
                         "a second signal); a checkpoint already written resumes with "
                         "--resume")  # fmt: skip
        resume = ("resume with --resume" if e.checkpoint and args.command == "run"
                  else "nothing saved")  # fmt: skip
        if comm.rank == 0:  # every rank stopped after the same step (StopSignals)
            print(f"stopped at t = {e.t:.6g}; {resume}", file=sys.stderr, flush=True)
        return e.exit_code
    except KeyboardInterrupt:
        return _fail(comm, errcomm, 130, _stopped_outside())
    except (ConfigError, ValueError) as e:
        return _fail(comm, errcomm, 2, f"error: {e}")
    except FloatingPointError as e:
        return _fail(comm, errcomm, 1, f"run stopped: {e}")
    except MemoryError as e:
        return _fail(comm, errcomm, 1, f"out of memory{f' ({e})' if str(e) else ''}: "
                     "`config --check` prints the saved data's size; lower mesh.refinement, "
                     "raise time.save_every, or run on more ranks")  # fmt: skip
    except (RootError, OSError) as e:
        return _fail(comm, errcomm, 1, f"error writing the output: {e}")
    except Exception:  # a bug: the traceback, without the colour codes of C++ messages
        tb = re.sub(r"\x1b\[[0-9;]*m", "", traceback.format_exc())
        return _fail(comm, errcomm, 1, f"internal error:\n{tb}")
