"""``python -m solver``: see :mod:`solver.cli`."""

import os
import sys

from .cli import main

if __name__ == "__main__":
    code = main()
    if code in (130, 143):
        # Stopped by SIGINT/SIGTERM, the one line printed. Exit now, after MPI_Finalize: a
        # KeyboardInterrupt that ended code run by exec() (SciPy's and NumPy's imports do)
        # makes CPython end a `python -m` process by SIGINT on the way out (exit_sigint),
        # whatever status we return, and mpiexec then reports a killed process
        sys.stdout.flush()
        sys.stderr.flush()
        from mpi4py import MPI

        if MPI.Is_initialized() and not MPI.Is_finalized():
            MPI.Finalize()
        os._exit(code)
    sys.exit(code)
