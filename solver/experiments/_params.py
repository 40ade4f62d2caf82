"""Experiment parameters: presets, coercion of overrides, the output folder, the command line.

A parameter set is a flat dict (a preset of an experiment module, e.g.
``solver.experiments.fig2.PRESETS["small"]``) whose values fix the type of each key;
:func:`resolve_params` applies TOML overrides to it, :func:`prepare_output` records it in
``params.toml`` and :func:`cli` is the command line of the ``scripts/exp_*.py`` scripts.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import math
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..io import ConfigError, atomic_write_text, toml_value
from ._sweep import Budget, SweepError

__all__ = [
    "EXPERIMENT_NAMES",
    "cli",
    "load_presets",
    "positive",
    "prepare_output",
    "require",
    "resolve_params",
    "write_summary",
]

EXPERIMENT_NAMES = ("fig2", "phase_diagram", "random_adapters", "depth", "lora_kinds",
                    "two_clusters", "spectral_gap", "linear_response", "real_models")  # fmt: skip


def load_presets(name: str) -> dict:
    """The ``PRESETS`` dict (``tiny``, ``small``, ``paper``) of the experiment module
    ``solver.experiments.<name>`` (a copy: changing it changes no other caller's)."""
    if name not in EXPERIMENT_NAMES:
        raise ValueError(f"unknown experiment {name!r}; one of {list(EXPERIMENT_NAMES)}")
    return copy.deepcopy(importlib.import_module(f"{__package__}.{name}").PRESETS)


def _coerce(name: str, ref, v):
    if isinstance(ref, bool):
        if not isinstance(v, bool):
            raise ConfigError(f"{name} must be true or false, got {v!r}")
        return v
    if isinstance(ref, int):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{name} must be an integer, got {v!r}")
        return v
    if isinstance(ref, float):
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ConfigError(f"{name} must be a finite number, got {v!r}")
        return float(v)
    if isinstance(ref, str):
        if not isinstance(v, str):
            raise ConfigError(f"{name} must be a string, got {v!r}")
        return v
    if isinstance(ref, list):
        if not isinstance(v, list) or not v:
            raise ConfigError(f"{name} must be a non-empty list, got {v!r}")
        return [_coerce(f"{name}[{i}]", ref[0], x) for i, x in enumerate(v)]
    raise TypeError(f"unsupported parameter type for {name}: {type(ref).__name__}")


def resolve_params(preset: dict, overrides: dict | None = None, source: str = "config") -> dict:
    """``preset`` with ``overrides`` applied; unknown keys and wrong types are
    :class:`~solver.ConfigError` naming the field (ints are accepted for floats)."""
    out = dict(preset)
    overrides = overrides or {}
    unknown = sorted(set(overrides) - set(preset))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown}; allowed: {sorted(preset)}")
    for k, v in overrides.items():
        out[k] = _coerce(f"{source}: {k}", preset[k], v)
    return out


def _load_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None


def require(params: dict, name: str, ok: bool, what: str) -> None:
    """:class:`~solver.ConfigError` ``"<name> must be <what>, got <value>"`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{name} must be {what}, got {params[name]!r}")


def positive(params: dict, *names: str) -> None:
    """Every named parameter (every element, for lists) is ``> 0``."""
    for n in names:
        v = params[n]
        vals = v if isinstance(v, list) else [v]
        require(params, n, all(x > 0 for x in vals), "> 0")


def params_text(name: str, params: dict) -> str:
    """The resolved parameters as TOML (written to ``params.toml``)."""
    lines = [f"# resolved parameters of the {name} experiment", f'experiment = "{name}"']
    lines += [f"{k} = {toml_value(v)}" for k, v in params.items()]
    return "\n".join(lines) + "\n"


def prepare_output(out: Path, name: str, params: dict, comm=None) -> None:
    """Create ``out`` and its ``params.toml``; refuse a folder made with other parameters
    (its finished cases would not belong to this sweep)."""
    text = params_text(name, params)
    err = None
    if comm is None or comm.rank == 0:
        p = Path(out) / "params.toml"
        if p.is_file() and p.read_text() != text:
            try:
                old = tomllib.loads(p.read_text())
            except tomllib.TOMLDecodeError:
                old = {}
            new = tomllib.loads(text)
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            err = ConfigError(f"{out} holds results of other parameters (differing: {diff}); "
                              f"use another --output folder or delete it")  # fmt: skip
        else:
            atomic_write_text(p, text)
    if comm is not None and comm.size > 1:
        err = comm.bcast(err, root=0)
    if err is not None:
        raise err


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple | np.ndarray):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, float | np.floating):
        return float(v) if math.isfinite(v) else None
    return v


def write_summary(out: Path, summary: dict, comm=None) -> None:
    """``out/summary.json`` (rank 0; NumPy values as JSON, non-finite floats as ``null``)."""
    if comm is None or comm.rank == 0:
        atomic_write_text(Path(out) / "summary.json",
                          json.dumps(_jsonable(summary), indent=2) + "\n")  # fmt: skip


def cli(argv, *, name: str, doc: str, presets: dict, run: Callable) -> int:
    """Command line shared by the ``scripts/exp_*.py`` scripts.

    ``--preset`` picks a parameter set, ``--config`` TOML keys override it, ``--output`` is
    the (resumable) output folder, ``--max-cases`` stops after that many new cases.
    Exit status: 0 done (or stopped by ``--max-cases``), 2 invalid input.
    """
    from mpi4py import MPI

    parser = argparse.ArgumentParser(
        prog=f"exp_{name}.py", description=doc.strip().splitlines()[0],
        epilog=doc, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--config", type=Path, help="TOML file: top-level keys override the preset")
    parser.add_argument("--preset", choices=sorted(presets), default="small",
                        help="parameter set (default: small)")  # fmt: skip
    parser.add_argument(
        "--output",
        "-o",
        type=Path,
        default=Path("out") / name,
        help=f"output folder (default: out/{name}); a rerun resumes it",
    )
    parser.add_argument(
        "--max-cases",
        type=int,
        default=None,
        metavar="K",
        help="compute at most K new cases, then stop (run again to go on)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    comm = MPI.COMM_WORLD
    rank0 = comm.rank == 0
    try:
        overrides = _load_toml(args.config) if args.config is not None else {}
        src = str(args.config) if args.config is not None else "config"
        params = resolve_params(presets[args.preset], overrides, src)
        if args.max_cases is not None and args.max_cases < 0:
            raise ConfigError(f"--max-cases must be >= 0, got {args.max_cases}")
        budget = Budget(args.max_cases)
        summary = run(params, args.output, comm=comm, progress=not args.no_progress,
                      budget=budget)  # fmt: skip
    except (ConfigError, SweepError) as e:
        if rank0:
            print(f"error: {e}", file=sys.stderr)
        return 2
    if rank0:
        if summary is None:
            print(
                f"stopped after {args.max_cases} new case(s) (--max-cases); run the same "
                f"command again to continue: finished cases are kept in {args.output}"
            )
        else:
            print("\n".join(summary.get("report", [])))
            print(f"results: {args.output}")
    return 0
