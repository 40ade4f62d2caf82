"""Shared test helpers: DOLFINx import order, running commands under mpiexec."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:  # the PyPI DOLFINx wheel needs its MPI loaded through mpi4py first
    import dolfinx_solver  # noqa: F401
except ImportError:  # pragma: no cover
    pass

ROOT = Path(__file__).resolve().parents[1]


def mpiexec() -> str:
    """The mpiexec that belongs to this Python's mpi4py (the venv's MPICH), else PATH's."""
    here = Path(sys.executable).parent / "mpiexec"
    found = str(here) if here.exists() else shutil.which("mpiexec")
    if found is None:
        pytest.skip("no mpiexec available")
    return found


def run_python(args: list[str], nprocs: int = 1, timeout: int = 600, cwd=None):
    """Run ``python ARGS`` (under ``mpiexec -n nprocs`` when > 1); return CompletedProcess."""
    cmd = [sys.executable, *args]
    if nprocs > 1:
        cmd = [mpiexec(), "-n", str(nprocs), *cmd]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd or ROOT,
                          env=env)  # fmt: skip


@pytest.fixture
def run():
    return run_python
