"""The MPI layout: threads per rank, and reductions over ranks.

Threads per rank: the cores of a node are shared among the ranks running on it.

Under ``mpiexec -n P`` with ``P`` ranks on a node of ``c`` cores, every threaded library in a
rank (OpenBLAS behind NumPy, numba's pool) starts ``c`` threads by default, whose idle workers
spin after every call. With one rank per core that oversubscribes the node: measured on a
2-core machine at icosphere level 7 (2 ranks), a DG0 step took 0.66 s with the default
threads and 0.33 s with one thread per rank. :func:`share_cores` caps the BLAS threads of
this process at ``max(1, c // ranks_on_node)`` (threadpoolctl), unless the user chose a count
in the environment (``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``, ...). The ranks on a
node are those of the job (the launcher's count), also when a rank computes on
``COMM_SELF``: two serial PDE runs side by side under ``mpiexec -n 2`` (the experiments'
``"cases"`` sweeps) took 100 s each with two numba threads apiece and 28 s with one (S²,
level 4; 23 s alone).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import numpy as np
from mpi4py import MPI

__all__ = [
    "threads_per_rank",
    "share_cores",
    "normalised_errors",
    "gather_ordered",
    "allgather_rows",
    "on_root",
    "RootError",
    "all_failed",
    "abort_on_error",
    "Interrupted",
    "StopSignals",
]

_USER_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")
_LIMITED: list = []  # the threadpoolctl limiter, kept alive (set once per process)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


#: what MPI launchers (MPICH's hydra, Open MPI) tell each process of the job's ranks on its node
_LAUNCHER_LOCAL_SIZE = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE")


def _node_ranks(comm) -> int:
    """The processes of this job on this node: the ranks of ``comm`` here (collective over
    ``comm``), or the launcher's count where it is larger (``comm`` may be ``COMM_SELF`` in a
    sweep whose ranks run their cases side by side: they share the cores all the same)."""
    from mpi4py import MPI

    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    n = local.size
    local.Free()
    for var in _LAUNCHER_LOCAL_SIZE:
        value = os.environ.get(var, "")
        if value.isdigit():
            n = max(n, int(value))
    return n


def threads_per_rank(comm) -> int:
    """``max(1, cores // processes of the job on this node)`` (collective over ``comm``)."""
    return max(1, _cores() // _node_ranks(comm))


def share_cores(comm) -> int:
    """Cap the BLAS threads of this rank at :func:`threads_per_rank` (collective); returns it.

    Nothing is changed for a job of one process on the node, when the user set a thread count
    in the environment, or when threadpoolctl is not installed.
    """
    n = threads_per_rank(comm)
    if n < _cores() and not _LIMITED and not any(v in os.environ for v in _USER_VARS):
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # pragma: no cover - dependency of the package
            return n
        _LIMITED.append(threadpool_limits(limits=n, user_api="blas"))
    return n


# --------------------------------------------------------------------------------------------
# reductions over ranks


def normalised_errors(comm, values: np.ndarray, exact: np.ndarray, weights: np.ndarray) -> dict:
    """``l1, l2, linf`` of Williamson et al. (1992): ``I|q - q_T| / I|q_T|``,
    ``sqrt(I(q - q_T)^2 / I q_T^2)``, ``max|q - q_T| / max|q_T|``.

    ``values``, ``exact`` and ``weights`` are arrays of the same shape (points of this rank's
    cells); ``I`` is the weighted sum over all ranks.
    """
    e = np.asarray(values, float) - np.asarray(exact, float)
    ex, w = np.asarray(exact, float), np.asarray(weights, float)
    loc = np.array([np.sum(w * np.abs(e)), np.sum(w * np.abs(ex)), np.sum(w * e * e),
                    np.sum(w * ex * ex)])  # fmt: skip
    glob = np.empty_like(loc)
    comm.Allreduce(loc, glob, op=MPI.SUM)
    emax = comm.allreduce(float(np.abs(e).max(initial=0.0)), op=MPI.MAX)
    xmax = comm.allreduce(float(np.abs(ex).max(initial=0.0)), op=MPI.MAX)
    return {
        "l1": glob[0] / glob[1],
        "l2": float(np.sqrt(glob[2] / glob[3])),
        "linf": emax / xmax,
        "L1": float(glob[0]),
        "L2": float(np.sqrt(glob[2])),
    }


def gather_ordered(comm, keys: np.ndarray, values: np.ndarray, n: int, root: int = 0):
    """Owned rows ``values`` of every rank on ``root``, placed at their global ``keys``
    (``n`` rows in all); ``None`` on the other ranks."""
    keys = comm.gather(np.asarray(keys), root=root)
    vals = comm.gather(np.ascontiguousarray(values), root=root)
    if comm.rank != root:
        return None
    out = np.empty((n,) + values.shape[1:], dtype=values.dtype)
    out[np.concatenate(keys)] = np.concatenate(vals)
    return out


def allgather_rows(comm, local: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The rows of every rank, rank by rank, on every rank (``counts[r]`` rows on rank ``r``;
    one ``Allgatherv``). A copy on one rank."""
    local = np.ascontiguousarray(local)
    if comm is None or comm.size == 1:
        return local.copy()
    counts = np.asarray(counts)
    out = np.empty((int(counts.sum()),) + local.shape[1:], dtype=local.dtype)
    row = int(np.prod(local.shape[1:], dtype=int))
    comm.Allgatherv(local, [out, counts * row])
    return out


# --------------------------------------------------------------------------------------------
# errors that every rank must see


class RootError(OSError):
    """An error raised on the root rank alone (file I/O), re-raised on every rank."""


def on_root(comm, fn, *args, root: int = 0, **kwargs):
    """``fn(*args, **kwargs)`` on ``root`` only; its result, or its error, on every rank.

    File I/O happens on one rank while the others wait for it at the next collective call: an
    error there (unwritable folder, full disk) would leave them waiting forever. Here the
    outcome is broadcast, so every rank raises the same :class:`RootError` (``ValueError``
    keeps its type: it is bad input).
    """
    out, err = None, None
    if comm.rank == root:
        try:
            out = fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - re-raised on every rank below
            err = (type(e) is ValueError, f"{e}" if isinstance(e, ValueError) else
                   f"{type(e).__name__}: {e}")  # fmt: skip
    if comm.size > 1:
        out, err = comm.bcast((out, err), root=root)
    if err is not None:
        raise (ValueError if err[0] else RootError)(err[1])
    return out


#: Seconds :func:`all_failed` waits by default for the other ranks to fail too (a test that
#: makes one rank fail alone lowers it: the outcome is the same, the wait is not paid).
FAIL_WAIT = 10.0


def all_failed(comm, timeout: float | None = None) -> bool:
    """Called by a rank that failed: ``True`` when every rank of ``comm`` fails too.

    A non-blocking barrier on ``comm`` (give a communicator used for nothing else, e.g. a
    ``Dup`` made at start-up, so that it matches only other failing ranks) completes when all
    ranks have entered it; after ``timeout`` seconds (default :data:`FAIL_WAIT`) without that,
    some rank is still working or waiting elsewhere, and the caller should ``Abort`` (an error
    on one rank must end every rank, never hang the job).
    """
    if comm.size == 1:
        return True
    req = comm.Ibarrier()
    end = time.monotonic() + (FAIL_WAIT if timeout is None else timeout)
    while not req.Test():
        if time.monotonic() > end:
            return False
        time.sleep(0.005)
    return True


def abort_on_error(comm=None) -> None:
    """Make an uncaught exception on any rank end every rank, for scripts run under
    ``mpiexec``: the rank that met it prints its traceback (prefixed by its rank) and calls
    ``MPI_Abort``, instead of leaving the other ranks waiting in a collective for ever (an
    error on one rank must end every rank, never hang the job). Nothing changes on one rank.
    Call it first thing in a script's ``if __name__ == "__main__":`` block.
    """
    comm = MPI.COMM_WORLD if comm is None else comm
    if comm.size == 1:
        return
    previous = sys.excepthook

    def hook(kind, value, tb):
        sys.stderr.write(f"[rank {comm.rank}] uncaught {kind.__name__}: ending every rank\n")
        previous(kind, value, tb)
        sys.stderr.flush()
        comm.Abort(1)

    sys.excepthook = hook


# --------------------------------------------------------------------------------------------
# SIGINT / SIGTERM: stop every rank at the same step


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped the work: ``signum``, the time ``t`` reached (``None`` when
    it came before the time loop) and whether a checkpoint of ``t`` was written
    (``checkpoint``). The exit status of a process it ends is ``128 + signum`` (130, 143)."""

    def __init__(self, signum: int, t: float | None = None, checkpoint: bool = False):
        self.signum, self.t, self.checkpoint = int(signum), t, checkpoint
        where = "" if t is None else f" at t = {t:.6g}"
        super().__init__(f"stopped by {signal.Signals(self.signum).name}{where}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopSignals:
    """While active (``with StopSignals(comm) as stop:``), SIGINT and SIGTERM ask for a stop
    instead of raising wherever the rank happens to be; :meth:`requested` (collective: one
    ``allreduce`` of an int, none on one rank) returns the signal number on every rank as
    soon as any rank got one, so that all ranks stop after the same step and none is left
    waiting in a collective call (``mpiexec`` forwards both signals to every rank).

    A second signal raises :class:`Interrupted` at once (the stop did not come soon enough).
    Outside the main thread nothing is installed and :meth:`requested` only agrees on 0.
    The previous handlers are put back on exit (SIG_DFL where the handler was not Python's,
    e.g. PETSc's SIGTERM handler, whose banner and ``MPI_Abort(59)`` are not wanted).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, comm):
        self.comm = comm
        self.signum = 0
        self._old: dict = {}

    def _handler(self, signum, frame) -> None:
        if self.signum:
            raise Interrupted(signum)
        self.signum = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, signal.SIG_DFL if h is None else h)
        self._old = {}

    def requested(self) -> int:
        """The signal number that asked for a stop on any rank, else 0 (collective)."""
        if self.comm is None or self.comm.size == 1:
            return self.signum
        return int(self.comm.allreduce(self.signum, op=MPI.MAX))
