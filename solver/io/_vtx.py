"""Time series of cell-wise fields for ParaView and PyVista (DOLFINx's VTX or XDMF writers)."""

from __future__ import annotations

import ctypes
import re
from pathlib import Path

try:  # the PyPI DOLFINx wheel loads MPI through mpi4py: this import must come first
    import dolfinx_solver  # noqa: F401
except ImportError:  # pragma: no cover - conda / system DOLFINx
    pass

import numpy as np
from dolfinx import fem, io

from ..mesh import SphereMesh

__all__ = ["FieldWriter"]

_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # ADIOS2 colours its messages


class FieldWriter:
    """Time series of cell-wise fields in ADIOS2 VTX format (``.bp``; ParaView, PyVista).

    Falls back to XDMF (cell data) where DOLFINx was built without ADIOS2.
    """

    def __init__(self, sm: SphereMesh, path: Path, names: list[str]):
        self.sm = sm
        self.functions = [fem.Function(sm.V0, name=n) for n in names]
        if io.has_adios2:
            self.path = Path(path).with_suffix(".bp")
            self._w = io.VTXWriter(sm.comm, str(self.path), self.functions, engine="BP4")
            self._xdmf = False
        else:  # pragma: no cover - depends on the DOLFINx build
            self.path = Path(path).with_suffix(".xdmf")
            self._w = io.XDMFFile(sm.comm, str(self.path), "w")
            self._w.write_mesh(sm.mesh)
            self._xdmf = True

    def write(self, t: float, fields: list[np.ndarray]) -> None:
        """Append the fields at time ``t``. A failed write (a full disk: ADIOS2 raises) closes
        the writer at once and raises ``OSError`` naming the file, without ANSI colours:
        left open, the writer would throw again from its destructor at exit, which ends the
        process with ``std::terminate`` (SIGABRT, exit 134) instead of the documented 1."""
        if self._w is None:
            raise OSError(f"the VTX series {self.path} was closed after a failed write")
        for f, v in zip(self.functions, fields, strict=True):
            f.x.array[: self.sm.num_owned] = v
            f.x.scatter_forward()
            if self._xdmf:  # pragma: no cover
                self._w.write_function(f, t)
        if not self._xdmf:
            try:
                self._w.write(t)
            except RuntimeError as e:
                self._abandon()
                msg = " ".join(_ANSI.sub("", str(e)).split())
                raise OSError(f"cannot write the VTX series {self.path}: {msg}") from None

    def _abandon(self) -> None:
        w, self._w = self._w, None
        try:
            w.close()  # flushes again and fails again: here, where it can be caught
        except RuntimeError:
            # the C++ destructor would flush a third time and throw where nothing can catch
            # it (std::terminate): the writer is never destroyed (one reference kept for
            # good; the process is about to report the error and exit)
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(getattr(w, "_cpp_object", w)))

    def close(self) -> None:
        if self._w is not None:
            w, self._w = self._w, None
            w.close()
