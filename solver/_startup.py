"""Ctrl-C (SIGINT) or SIGTERM while ``python -m solver`` is still starting up.

Between the interpreter's start and :func:`solver.cli.main` taking over the signals (imports of
the package, of MPI and DOLFINx: about a second), Python's own handling would print a
traceback from inside whatever import was running (under ``mpiexec`` one per rank, a
segmentation fault when it lands in the MPI bootstrap or in the start of DOLFINx's C++
module, and a rank that leaves while another waits in ``MPI_Init`` hangs the job).
:func:`record_signals` holds the signal instead: ``main`` stops once its command's imports are
done (:func:`pending`), every rank alike, with one line and exit status ``128 + signal``
(130, 143); a second signal ends the process at once. Installed by
``solver/__init__.py`` only when the command line is ``python -m solver`` (``sys.orig_argv``),
never for a library user's ``import solver``.

Out of reach: a signal in the interpreter's own start, before this module is imported (the
first 0.1-0.2 s; measured 2026-12-07 on the loaded 2-core machine). A rank ends there with
Python's traceback, and under ``mpiexec`` a rank already in ``MPI_Init`` can wait for it until
a second Ctrl-C (mpiexec then aborts the job).
"""

from __future__ import annotations

import os
import signal
import sys

__all__ = ["is_solver_command", "record_signals", "pending", "clear", "STARTUP_SIGNALS"]

STARTUP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_pending = 0


def is_solver_command() -> bool:
    """Whether this interpreter runs ``python [options] -m solver ...``."""
    argv = getattr(sys, "orig_argv", [])
    return any(a == "-m" and argv[i + 1 : i + 2] == ["solver"] for i, a in enumerate(argv))


def _record(signum: int, frame) -> None:
    global _pending
    if _pending:  # a second signal: the user insists
        os._exit(128 + signum)
    _pending = signum


def record_signals() -> dict:
    """Hold SIGINT and SIGTERM (main thread only); returns the previous handlers.
    :func:`solver.cli.main` holds them on until its command's imports are done, then asks
    :func:`pending` and installs handlers that raise."""
    return {s: signal.signal(s, _record) for s in STARTUP_SIGNALS}


def pending() -> int:
    """The signal that came while held (0: none)."""
    return _pending


def clear() -> None:
    global _pending
    _pending = 0
