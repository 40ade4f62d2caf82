"""Time series of cell-wise fields for ParaView and PyVista (DOLFINx's VTX or XDMF writers)."""

from __future__ import annotations

from pathlib import Path

try:  # the PyPI DOLFINx wheel loads MPI through mpi4py: this import must come first
    import dolfinx_solver  # noqa: F401
except ImportError:  # pragma: no cover - conda / system DOLFINx
    pass

import numpy as np
from dolfinx import fem, io

from ..mesh import SphereMesh

__all__ = ["FieldWriter"]


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
        for f, v in zip(self.functions, fields, strict=True):
            f.x.array[: self.sm.num_owned] = v
            f.x.scatter_forward()
            if self._xdmf:  # pragma: no cover
                self._w.write_function(f, t)
        if not self._xdmf:
            self._w.write(t)

    def close(self) -> None:
        self._w.close()
