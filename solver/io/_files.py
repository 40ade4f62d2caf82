"""Result files, written atomically (a temporary file renamed into place) by rank 0.

Output folder of a run (documented in README, "Output files"):

``result.npz``
    ``times`` (nt,), ``centroids`` (ncells, d) cell centroids projected onto the sphere,
    ``areas`` (ncells,) cell measures, ``density`` (nt, ncells) cell averages of the base flow,
    ``density_perturbed`` (nt, ncells) when a perturbation is configured, ``points`` (np, d)
    and ``cells`` (ncells, d) the mesh (vertex indices per cell). Cells are in the original
    (input) mesh order, the same for any number of ranks.
``diagnostics.csv``
    one row per time step, columns from :func:`solver.diagnostic_columns`.
``config.toml``, ``versions.json``
    the resolved configuration and the versions of the software used.
``density.bp``
    ADIOS2 VTX time series of the density fields (ParaView, PyVista).
``checkpoint.npz``
    the state at the last saved time, for ``--resume``.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import zipfile
from pathlib import Path

import numpy as np

__all__ = [
    "atomic_write",
    "atomic_write_text",
    "atomic_savez",
    "write_csv",
    "read_csv",
    "versions",
    "write_versions",
    "load_result",
]


def atomic_write(path: Path, write) -> None:
    """Write ``path`` through ``write(binary file)`` into a temporary file that replaces it
    only when complete (``os.replace``): a reader never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual file mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    atomic_write(path, lambda f: f.write(text.encode()))


def atomic_savez(path: Path, **arrays) -> None:
    """``numpy.savez_compressed`` to ``path`` atomically."""
    atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


def write_csv(path: Path, columns: list[str], rows: np.ndarray) -> None:
    """CSV with a header line and full-precision numbers (``%.17g``)."""
    lines = [",".join(columns)]
    lines += [",".join(f"{v:.17g}" for v in row) for row in np.atleast_2d(rows)]
    atomic_write_text(path, "\n".join(lines) + "\n")


def read_csv(path: Path) -> dict[str, np.ndarray]:
    """Columns of a CSV written by :func:`write_csv`."""
    with open(path) as f:
        cols = f.readline().strip().split(",")
    data = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    return {c: data[:, i] for i, c in enumerate(cols)}


def versions() -> dict[str, str]:
    """Versions of Python and the numerical stack."""
    import importlib.metadata as md

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in (
        "meanfield-lora-solver",
        "numpy",
        "scipy",
        "mpi4py",
        "fenics-dolfinx",
        "dolfinx-solver-real",
        "fenics-basix",
        "fenics-ffcx",
        "fenics-ufl",
        "pot",
    ):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    try:
        import dolfinx

        out["dolfinx"] = dolfinx.__version__
    except ImportError:  # pragma: no cover
        pass
    return out


def write_versions(path: Path) -> None:
    atomic_write_text(path, json.dumps(versions(), indent=2) + "\n")


def load_result(folder: str | os.PathLike) -> dict[str, np.ndarray]:
    """Arrays of ``result.npz`` in a run's output folder (no DOLFINx needed)."""
    p = Path(folder) / "result.npz"
    if not p.is_file():
        raise FileNotFoundError(f"{p} not found: is {folder} the output folder of a run?")
    try:  # never with allow_pickle: a result holds plain arrays only
        with np.load(p) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise ValueError(
            f"{p} is not a readable result file ({type(e).__name__}); it may "
            "be truncated or overwritten: rerun the run into a new folder"
        ) from None
