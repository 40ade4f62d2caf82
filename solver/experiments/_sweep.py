"""Resumable parameter sweeps: finished cases are kept, a restart computes only the rest.

A sweep is a list of *cases* (dicts) and a function ``compute(case) -> list of row dicts``.
Each case is identified by the values of its ``key`` fields, written as a stable string
(``"eps=0.01;seed=3"``: floats as Python's shortest round-trip ``repr``). The results live in
one CSV whose columns are the key fields followed by the row columns; rank 0 rewrites it
atomically (temporary file + rename) after every finished batch, in the order of the case
list, so

* a killed sweep leaves a complete CSV of the cases it finished and nothing half-written;
* a restart reads that CSV, skips every case whose key is in it and computes the others;
* with deterministic cases (seeds in the case, not in a global state) the CSV of a
  restarted sweep is byte for byte the one of an uninterrupted sweep, and it does not
  depend on the number of MPI ranks either.

Two ways to use MPI, both with every rank building the same case list:

``mode="cases"``
    cases are dealt to the ranks in batches of ``comm.size`` (each case computed by one rank
    alone, exactly as in a serial run), rows are gathered to rank 0; for cheap particle runs.
``mode="together"``
    every rank takes part in every case (``compute`` uses the communicator itself, e.g. the
    PDE solver); the rows returned on rank 0 are written.

Values in the CSV are numbers (``repr``) or plain words (no commas, quotes or newlines);
:func:`read_rows` gives them back as ``int``, ``float`` or ``str``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..io import atomic_write_text

__all__ = [
    "Budget",
    "SweepError",
    "SweepResult",
    "case_key",
    "format_value",
    "parse_value",
    "read_rows",
    "as_columns",
    "run_sweep",
]


class SweepError(RuntimeError):
    """A sweep cannot continue (an existing CSV does not belong to it, a case failed...)."""


def format_value(v) -> str:
    """The CSV text of one value: ints as ints, floats as shortest round-trip ``repr``."""
    if isinstance(v, bool | np.bool_):
        return "1" if v else "0"
    if isinstance(v, int | np.integer):
        return str(int(v))
    if isinstance(v, float | np.floating):
        return repr(float(v))
    if isinstance(v, str):
        if not v or any(c in v for c in ',"\n\r') or v != v.strip():
            raise ValueError(f"CSV words must be non-empty, without commas, quotes, newlines "
                             f"or surrounding spaces, got {v!r}")  # fmt: skip
        return v
    raise TypeError(f"cannot write {type(v).__name__} {v!r} to a sweep CSV (number or word)")


def parse_value(s: str) -> int | float | str:
    """Inverse of :func:`format_value`: integers as ``int``, other numbers as ``float``."""
    if s.lstrip("-").isdigit():
        return int(s)
    try:
        return float(s)
    except ValueError:
        return s


def case_key(case: dict, key: Sequence[str]) -> str:
    """Stable identifier of a case: ``"k1=v1;k2=v2"`` with :func:`format_value`."""
    missing = [k for k in key if k not in case]
    if missing:
        raise ValueError(f"case {case!r} lacks the key field(s) {missing}")
    return ";".join(f"{k}={format_value(case[k])}" for k in key)


def read_rows(path: str | Path) -> list[dict]:
    """Rows of a sweep CSV as dicts of ``int`` / ``float`` / ``str`` (``[]`` if absent)."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    cols = lines[0].split(",")
    return [dict(zip(cols, map(parse_value, ln.split(",")), strict=True)) for ln in lines[1:]]


def as_columns(rows: Sequence[dict]) -> dict[str, np.ndarray]:
    """Rows -> columns (float arrays for numbers, object arrays for words)."""
    if not rows:
        return {}
    out = {}
    for c in rows[0]:
        vals = [r[c] for r in rows]
        numeric = all(isinstance(v, float | int) for v in vals)
        out[c] = np.array(vals, dtype=float if numeric else object)
    return out


@dataclass
class Budget:
    """At most ``left`` new cases in all the sweeps it is given to (``None``: no limit)."""

    left: int | None = None

    def allow(self, n: int) -> int:
        return n if self.left is None else max(0, min(n, self.left))

    def spend(self, n: int) -> None:
        if self.left is not None:
            self.left -= n


@dataclass
class SweepResult:
    """``rows`` of the finished cases (in case order, on every rank), ``complete`` when all
    cases are done, ``computed`` = cases computed by this call."""

    rows: list[dict]
    complete: bool
    computed: int


def _read_existing(path: Path, header: str, nkey: int) -> dict[str, list[str]]:
    if not path.is_file():
        return {}
    lines = path.read_text().splitlines()
    if not lines or lines[0] != header:
        raise SweepError(
            f"{path} has columns {lines[0] if lines else '(none)'!r}, this sweep writes "
            f"{header!r}: it belongs to another sweep; use another output folder or delete it"
        )
    ncol = header.count(",") + 1
    done: dict[str, list[str]] = {}
    for i, line in enumerate(lines[1:], start=2):
        fields = line.split(",")
        if len(fields) != ncol:
            raise SweepError(f"{path}, line {i}: {len(fields)} values, expected {ncol}")
        names = header.split(",")[:nkey]
        k = ";".join(f"{n}={v}" for n, v in zip(names, fields[:nkey], strict=True))
        done.setdefault(k, []).append(line)
    return done


def _format_rows(case: dict, key, columns, rows) -> list[str]:
    if isinstance(rows, dict):
        rows = [rows]
    if not rows:
        raise SweepError(f"case {case_key(case, key)} produced no rows")
    out = []
    for r in rows:
        if set(r) != set(columns):
            raise SweepError(
                f"case {case_key(case, key)}: row columns {sorted(r)} differ from the sweep's "
                f"{sorted(columns)}"
            )
        out.append(",".join([format_value(case[k]) for k in key]
                            + [format_value(r[c]) for c in columns]))  # fmt: skip
    return out


def run_sweep(
    path: str | Path,
    cases: Sequence[dict],
    compute: Callable[[dict], list[dict] | dict | None],
    *,
    key: Sequence[str],
    columns: Sequence[str],
    comm=None,
    mode: str = "cases",
    progress: bool = True,
    budget: Budget | None = None,
    desc: str | None = None,
) -> SweepResult:
    """Run the cases not yet in ``path`` and keep ``path`` up to date (see module doc).

    Parameters
    ----------
    path : path
        The results CSV (created, or read and completed).
    cases : list of dict
        Every case holds the ``key`` fields (unique combinations) and whatever ``compute``
        needs; all ranks must pass the same list.
    compute : callable
        ``compute(case)`` returns the case's rows: dicts with exactly ``columns`` (the key
        fields are added). In ``"together"`` mode only rank 0's return value is used.
    key, columns : sequences of str
        Identifying fields of a case, and the columns of its rows.
    comm : MPI communicator, optional
    mode : {"cases", "together"}
    progress : bool
        A tqdm bar (rank 0) counting finished cases.
    budget : Budget, optional
        Stop after this many new cases (shared between sweeps); the CSV is complete up to
        there and a later call continues.
    """
    if mode not in ("cases", "together"):
        raise ValueError(f"mode must be 'cases' or 'together', got {mode!r}")
    key, columns = list(key), list(columns)
    if set(key) & set(columns):
        raise ValueError(f"key fields {sorted(set(key) & set(columns))} are also row columns")
    path = Path(path)
    size, rank = (1, 0) if comm is None else (comm.size, comm.rank)
    keys = [case_key(c, key) for c in cases]
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"cases are not unique: {dup[:3]}")
    header = ",".join(key + columns)
    budget = budget if budget is not None else Budget()

    done: dict[str, list[str]] = {}
    error = None
    if rank == 0:
        try:
            done = _read_existing(path, header, len(key))
            stale = sorted(set(done) - set(keys))
            if stale:
                raise SweepError(
                    f"{path} holds cases that are not in this sweep (e.g. "
                    f"{stale[0]}): use another output folder or delete it"
                )
        except SweepError as e:
            error = e
    if size > 1:
        error = comm.bcast(error, root=0)
        finished = comm.bcast(sorted(done), root=0)
    else:
        finished = sorted(done)
    if error is not None:
        raise error
    finished = set(finished)
    todo = [i for i, k in enumerate(keys) if k not in finished]

    def write() -> None:
        lines = [header] + [ln for k in keys if k in done for ln in done[k]]
        atomic_write_text(path, "\n".join(lines) + "\n")

    bar = tqdm(total=len(cases), initial=len(cases) - len(todo), desc=desc, unit="case",
               disable=(not progress) or rank != 0, dynamic_ncols=True)  # fmt: skip
    computed, pos = 0, 0
    try:
        while pos < len(todo):
            nb = budget.allow(size if mode == "cases" else 1)
            if nb == 0:
                break
            batch = todo[pos : pos + nb]
            failure = None
            if mode == "cases":
                mine = batch[rank] if rank < len(batch) else None
                result = None
                if mine is not None:
                    try:
                        result = ("ok", _format_rows(cases[mine], key, columns,
                                                     compute(cases[mine])))  # fmt: skip
                    except Exception as e:  # reported on every rank below
                        failure = e
                        result = ("error", f"case {keys[mine]} failed on rank {rank}: {e!r}")
                gathered = comm.gather(result, root=0) if size > 1 else [result]
                if rank == 0:
                    for r, i in enumerate(batch):
                        if gathered[r][0] == "ok":
                            done[keys[i]] = gathered[r][1]
                msgs = [g[1] for g in gathered if g is not None and g[0] == "error"] \
                    if rank == 0 else None  # fmt: skip
            else:
                rows = compute(cases[batch[0]])
                if rank == 0:
                    done[keys[batch[0]]] = _format_rows(cases[batch[0]], key, columns, rows)
                msgs = []
            if rank == 0:
                write()
            if size > 1:
                msgs = comm.bcast(msgs, root=0)
            if failure is not None:
                raise failure
            if msgs:
                raise SweepError("; ".join(msgs))
            pos += len(batch)
            computed += len(batch)
            budget.spend(len(batch))
            bar.update(len(batch))
    finally:
        bar.close()

    rows = None
    if rank == 0:
        names = key + columns
        rows = [dict(zip(names, map(parse_value, ln.split(",")), strict=True))
                for k in keys if k in done for ln in done[k]]  # fmt: skip
    if size > 1:
        rows = comm.bcast(rows, root=0)
    complete = pos >= len(todo)
    return SweepResult(rows=rows, complete=complete, computed=computed)


def finite(x) -> bool:
    """``True`` for a finite number."""
    return isinstance(x, float | int) and math.isfinite(x)
