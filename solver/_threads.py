"""Threads per MPI rank: the cores of a node shared among the ranks running on it.

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

__all__ = ["threads_per_rank", "share_cores"]

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
