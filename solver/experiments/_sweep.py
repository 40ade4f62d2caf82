"""Resumable parameter sweeps: finished cases are kept, a restart computes only the rest.

A sweep is a list of *cases* (dicts) and a function ``compute(case) -> list of row dicts``.
Each case is identified by the values of its ``key`` fields, written as a stable string
(``"eps=0.01;seed=3"``: floats as Python's shortest round-trip ``repr``). The results live in
one CSV whose columns are the key fields followed by the row columns; rank 0 rewrites it
atomically (temporary file + rename) whenever it has new rows, in the order of the case
list, so

* a killed sweep leaves a complete CSV of the cases it finished and nothing half-written;
* a restart reads that CSV, skips every case whose key is in it and computes the others;
* with deterministic cases (seeds in the case, not in a global state) the CSV of a
  restarted sweep is byte for byte the one of an uninterrupted sweep, and it does not
  depend on the number of MPI ranks either.

Two ways to use MPI, both with every rank building the same case list:

``mode="cases"``
    each case is computed by one rank alone, exactly as in a serial run; a rank takes the
    next case as soon as it is free (rank 0 deals them from a thread, costliest first by
    the caller's ``cost`` estimate: :func:`by_cost`), and its rows go to rank 0 with its
    next ask; rank 0 computes cases too and writes the CSV between them. For many small
    runs (particles, or serial PDE runs side by side): no rank waits for another's case.
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
    "by_cost",
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


def by_cost(costs: Sequence[float]) -> list[int]:
    """Positions of ``costs`` in the order the ranks take them: decreasing cost, ties in list
    order (longest first: with each rank taking the next case as soon as it is free, the
    last cases to start are the short ones)."""
    costs = [float(c) for c in costs]
    if not all(math.isfinite(c) and c >= 0 for c in costs):
        raise ValueError(f"costs must be finite and non-negative, got {costs}")
    return sorted(range(len(costs)), key=lambda i: -costs[i])


_ASK, _GIVE = 11, 12


class _Dealer:
    """Rank 0's dealer of case positions: it answers the other ranks' asks (each ask carries
    the result of the asker's previous case) with the next position of ``order``, or ``None``
    when there is none left or a case has failed; rank 0's own loop takes positions from the
    same list (:meth:`next`) and collects every result with :meth:`collect`.

    With ``MPI_THREAD_MULTIPLE`` (mpi4py's default) a thread answers at once, polling (a
    blocked receive would spin the core that rank 0 computes on); otherwise rank 0 answers
    between its own cases (:meth:`poll`), and the other ranks wait for it meanwhile."""

    def __init__(self, comm, order: list[int]):
        import threading

        from mpi4py import MPI

        self.comm, self.order, self.pos = comm, order, 0
        self.lock = threading.Lock()
        self.inbox: list = []
        self.failed = False
        self.waiting = comm.size - 1  # ranks not yet told "no more"
        self.thread = None
        if MPI.Query_thread() >= MPI.THREAD_MULTIPLE:
            self.thread = threading.Thread(target=self._serve, daemon=True, name="sweep-dealer")
            self.thread.start()

    def next(self) -> int | None:
        with self.lock:
            if self.failed or self.pos == len(self.order):
                return None
            self.pos += 1
            return self.order[self.pos - 1]

    def put(self, msg) -> None:
        if msg is not None:
            with self.lock:
                self.inbox.append(msg)
                self.failed |= msg[0] == "error"

    def collect(self) -> list:
        with self.lock:
            out, self.inbox = self.inbox, []
        return out

    def poll(self, block: bool = False) -> None:
        """Answer the asks that have come in (``block``: wait for one first)."""
        from mpi4py import MPI

        status = MPI.Status()
        while self.waiting and (block or self.comm.iprobe(source=MPI.ANY_SOURCE, tag=_ASK,
                                                          status=status)):  # fmt: skip
            if block:
                self.comm.probe(source=MPI.ANY_SOURCE, tag=_ASK, status=status)
                block = False
            src = status.Get_source()
            self.put(self.comm.recv(source=src, tag=_ASK))
            i = self.next()
            self.comm.send(i, dest=src, tag=_GIVE)
            self.waiting -= i is None

    def _serve(self) -> None:
        import time

        try:
            while self.waiting:
                self.poll()
                time.sleep(0.002)
        except BaseException as e:  # the other ranks would wait for ever: end them all
            import sys

            from mpi4py import MPI

            print(f"solver: the sweep's dealer failed: {e!r}", file=sys.stderr, flush=True)
            MPI.COMM_WORLD.Abort(1)

    def finish(self) -> None:
        """Answer until every other rank has been told "no more"."""
        if self.thread is not None:
            self.thread.join()
        while self.waiting:
            self.poll(block=True)


def _import_dolfinx() -> None:
    """Import DOLFINx (if installed) on every rank before the ranks part ways: its first
    import initialises PETSc, which is collective over ``COMM_WORLD``, so a rank that builds
    the first mesh of a sweep alone would wait there for ranks that never build one (a
    depth sweep with one PDE case on two ranks hung)."""
    try:
        import dolfinx  # noqa: F401
    except ImportError:  # pragma: no cover - particles-only installs
        pass


def _run_dealt(order, cases, keys, compute, format_rows, take, comm):
    """Compute the positions ``order`` of ``cases``, each on whichever rank is free first.

    Every rank asks rank 0 for its next case when it is done with one (the ask carries the
    result) and runs it alone; rank 0 computes cases too, and between them writes what has
    come in (``take(i, lines)``). A failing case stops the dealing: the cases running
    elsewhere finish, no new one starts. Returns ``(exception of this rank or None, messages
    of every failed case)`` on every rank: all ranks leave together, none waits for ever."""
    size = 1 if comm is None else comm.size
    rank = 0 if comm is None else comm.rank
    if size > 1:
        _import_dolfinx()
    comm = comm.Dup() if size > 1 else None  # its own message space, freed below
    failure, errors = None, []

    def run(i):
        nonlocal failure
        try:
            return ("ok", i, format_rows(i, compute(cases[i])))
        except Exception as e:  # reported on every rank below
            failure = e
            return ("error", i, f"case {keys[i]} failed on rank {rank}: {e!r}")

    def handle(msgs):
        for msg in msgs:
            if msg[0] == "ok":
                take(msg[1], msg[2])
            else:
                errors.append(msg[2])

    try:
        if rank > 0:
            msg = None
            while (i := comm.sendrecv(msg, dest=0, sendtag=_ASK, source=0,
                                      recvtag=_GIVE)) is not None:  # fmt: skip
                msg = run(i)
        elif size == 1:
            for i in order:
                handle([run(i)])
                if errors:
                    break
        else:
            dealer = _Dealer(comm, order)
            while (i := dealer.next()) is not None:
                dealer.put(run(i))
                if dealer.thread is None:
                    dealer.poll()
                handle(dealer.collect())
            dealer.finish()
            handle(dealer.collect())
        if size > 1:
            errors = comm.bcast(errors, root=0)
        return failure, errors
    finally:
        if comm is not None:
            comm.Free()


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
    cost: Callable[[dict], float] | None = None,
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
    desc : str, optional
        The progress bar's label.
    cost : callable, optional
        ``cost(case)``: an estimate of the case's run time in any unit; ``"cases"`` mode
        hands the cases out in order of decreasing cost (:func:`by_cost`), so that the last
        to start are short; list order without it.
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
    try:
        if mode == "cases":
            batch = todo[: budget.allow(len(todo))]
            if cost is not None:
                batch = [batch[j] for j in by_cost([cost(cases[i]) for i in batch])]

            def format_rows(i, rows):
                return _format_rows(cases[i], key, columns, rows)

            def take(i, lines):
                done[keys[i]] = lines
                write()
                bar.update(1)

            failure, msgs = _run_dealt(batch, cases, keys, compute, format_rows, take, comm)
            if failure is not None:
                raise failure
            if msgs:
                raise SweepError("; ".join(msgs))
            pos = computed = len(batch)
            budget.spend(computed)
        else:
            computed, pos = 0, 0
            while pos < len(todo) and budget.allow(1):
                i = todo[pos]
                rows = compute(cases[i])
                if rank == 0:
                    done[keys[i]] = _format_rows(cases[i], key, columns, rows)
                    write()
                pos += 1
                computed += 1
                budget.spend(1)
                bar.update(1)
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
