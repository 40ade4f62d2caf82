"""One description of an experiment (:class:`Experiment`) and the one runner of all of them
(:func:`run_experiment`).

An experiment is a chain of resumable sweeps (:class:`Sweep`: one CSV each), then a summary
(fits and the printed report) and figures. The runner does, for every experiment:

1. ``check(params)`` (a :class:`~solver.ConfigError` naming the key; nothing written);
2. the output folder and its ``params.toml`` (:func:`prepare_output`);
3. every sweep in order (:func:`run_sweep`, one shared case :class:`Budget`); ``None`` as
   soon as one is stopped by the budget;
4. ``summarize(params, rows)`` (``rows``: the rows of every sweep, by CSV stem);
5. ``plot(params, rows, summary, out)`` on rank 0, ``summary["timing"]`` holding the measured
   cost of every sweep (:func:`sweep_timing`; not written to ``summary.json``, which stays the
   same for a resumed run);
6. ``summary.json``; returns the summary.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from ..io import atomic_write_text
from ._params import prepare_output, write_summary
from ._sweep import Budget, run_sweep

__all__ = ["Experiment", "Run", "Sweep", "run_experiment", "sweep_timing"]

TIMING = "timing.json"


def sweep_timing(out, csv: str, seconds: float, cases: int, comm=None) -> dict:
    """Add ``seconds`` of wall time and ``cases`` computed cases to the record of sweep ``csv``
    in ``out/timing.json`` (rank 0; summed over resumed runs) and return the whole record,
    ``{csv: {"wall_s": ..., "cases": ...}}``, on every rank."""
    rec = None
    if comm is None or comm.rank == 0:
        path = Path(out) / TIMING
        rec = json.loads(path.read_text()) if path.is_file() else {}
        r = rec.setdefault(csv, {"wall_s": 0.0, "cases": 0})
        r["wall_s"] += float(seconds)
        r["cases"] += int(cases)
        atomic_write_text(path, json.dumps(rec, indent=2) + "\n")
    return comm.bcast(rec, root=0) if comm is not None and comm.size > 1 else rec


@dataclass(frozen=True)
class Sweep:
    """One resumable sweep: ``csv`` (in the output folder) gets the rows of ``case`` for
    every dict of ``cases(params)``, ``key`` fields first, then ``columns``.

    ``case`` names a function of the experiment's module, looked up when the sweep runs (so
    that a patched module attribute is the one called): ``f(params, case)``, or
    ``f(params, case, run)`` with ``needs_run`` (``run``: a :class:`Run`; in ``"cases"`` mode
    its communicator holds the calling rank alone, and it shows no progress bars).
    """

    csv: str
    cases: Callable[[dict], list[dict]]
    case: str
    key: tuple[str, ...]
    columns: tuple[str, ...]
    desc: str | None = None
    progress: bool = True  # show progress bars when the run does
    mode: str = "cases"  # see :func:`run_sweep`
    needs_run: bool = False
    cost: Callable[[dict, dict], float] | None = None  # cost(params, case): see run_sweep


@dataclass(frozen=True)
class Experiment:
    """An experiment: its ``name`` (output ``params.toml``, ``scripts/exp_<name>.py``), its
    ``presets`` (``tiny``, ``small``, ``paper``), ``check(params)``, its ``sweeps``,
    ``summarize(params, rows) -> summary`` (with a ``"report"`` list of lines) and
    ``plot(params, rows, summary, out)``. ``module`` holds the case functions;
    ``needs_comm``: runs on ``COMM_WORLD`` when no communicator is given (the PDE)."""

    name: str
    module: str
    presets: dict
    check: Callable[[dict], None]
    sweeps: tuple[Sweep, ...]
    summarize: Callable[[dict, dict], dict]
    plot: Callable[[dict, dict, dict, Path], object]
    needs_comm: bool = False


@dataclass(frozen=True)
class Run:
    """What a ``needs_run`` case function sees besides its case: the output folder, the
    communicator, whether to show progress, and the rows of the sweeps done before."""

    out: Path
    comm: object
    progress: bool
    rows: dict


def run_experiment(
    exp: Experiment,
    params: dict,
    out,
    *,
    comm=None,
    progress: bool = True,
    budget: Budget | None = None,
) -> dict | None:
    """Run ``exp`` with ``params`` into ``out`` (resumable; see the module doc). Returns the
    summary, or ``None`` when ``budget`` stopped a sweep (run again to go on)."""
    exp.check(params)
    out = Path(out)
    if comm is None and exp.needs_comm:
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
    prepare_output(out, exp.name, params, comm)
    budget = budget if budget is not None else Budget()
    module = sys.modules[exp.module]
    rows: dict[str, list[dict]] = {}
    for sw in exp.sweeps:
        fn = getattr(module, sw.case)
        if sw.needs_run:
            # "cases": each case is one rank's own serial run (many small PDE runs gain more
            # from running side by side than from sharing their cells between the ranks)
            alone = sw.mode == "cases" and comm is not None
            run = Run(out, _self_comm() if alone else comm, progress and not alone, dict(rows))

            def compute(case, fn=fn, run=run):
                return fn(params, case, run)
        else:

            def compute(case, fn=fn):
                return fn(params, case)

        t0 = time.perf_counter()
        res = run_sweep(out / sw.csv, sw.cases(params), compute, key=list(sw.key),
                        columns=list(sw.columns), comm=comm, mode=sw.mode,
                        progress=progress and sw.progress, budget=budget, desc=sw.desc,
                        cost=None if sw.cost is None else partial(sw.cost, params))  # fmt: skip
        timing = sweep_timing(out, sw.csv, time.perf_counter() - t0, res.computed, comm)
        if not res.complete:
            return None
        rows[Path(sw.csv).stem] = res.rows
    summary = exp.summarize(params, rows)
    if comm is None or comm.rank == 0:
        exp.plot(params, rows, {**summary, "timing": timing if exp.sweeps else {}}, out)
    write_summary(out, summary, comm)
    return summary


def _self_comm():
    from mpi4py import MPI

    return MPI.COMM_SELF
