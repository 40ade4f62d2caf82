"""The MPI layout: threads per rank, and reductions over ranks.

Threads per rank: the cores of a node are shared among the ranks running on it.

Under ``mpiexec -n P`` with ``P`` ranks on a node of ``c`` cores, every threaded library in a
rank (OpenBLAS behind NumPy, numba's pool) starts ``c`` threads by default, whose idle workers
spin after every call. With one rank per core that oversubscribes the node: measured on a
2-core machine at icosphere level 7 (2 ranks), a DG0 step took 0.66 s with the default
threads and 0.33 s with one thread per rank. :func:`share_cores` caps the BLAS threads of
this process at ``max(1, c // ranks_on_node)`` (threadpoolctl), unless the user chose a count
in the environment (``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``, ...).
"""

from __future__ import annotations

import os

import numpy as np
from mpi4py import MPI

__all__ = ["threads_per_rank", "share_cores", "normalised_errors"]

_USER_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")
_LIMITED: list = []  # the threadpoolctl limiter, kept alive (set once per process)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def threads_per_rank(comm) -> int:
    """``max(1, cores // ranks on this node)`` (collective over ``comm``)."""
    from mpi4py import MPI

    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    n = max(1, _cores() // local.size)
    local.Free()
    return n


def share_cores(comm) -> int:
    """Cap the BLAS threads of this rank at :func:`threads_per_rank` (collective); returns it.

    Nothing is changed on a single rank, when the user set a thread count in the environment,
    or when threadpoolctl is not installed.
    """
    n = threads_per_rank(comm)
    if comm.size > 1 and not _LIMITED and not any(v in os.environ for v in _USER_VARS):
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
