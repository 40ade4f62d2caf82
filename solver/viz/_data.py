"""The saved data of a run's output folder: fields, times, the mesh, the VTX series.

:class:`Run` reads ``result.npz`` (and ``config.toml``'s ``[mesh]`` section, when there is
one); nothing here renders, and DOLFINx is touched only through :mod:`solver.mesh` when a
mesh file must be read.

The mesh
--------
``result.npz`` holds cell averages in the original (input) cell order but no connectivity. The
mesh is rebuilt, in this order of preference, from ``points``/``cells`` arrays in
``result.npz`` (if a run saved them), from ``config.toml``'s ``[mesh]`` section, or, for a
library run without a config, from the number of cells (S^1: ``n`` equal segments; S^2: the
icosphere with ``20·4^level`` cells), by the generators of :mod:`solver.mesh`; a mesh file is
read by :func:`solver.mesh.load_mesh` (DOLFINx) and converted by
:meth:`~solver.mesh.SphereMesh.vtk_arrays` (DOLFINx's cell order; the fields are permuted with
``original_cell_index``). Either way the rebuilt cells' centroids are checked against the
saved ``centroids``, so a picture never shows a field on the wrong cells.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from ..io import load_result
from ..mesh import circle_mesh, icosphere

__all__ = ["Run", "vtk_arrays", "read_vtx"]

CENTROID_TOL = 1e-6


class Run:
    """The saved arrays of an output folder and its ``[mesh]`` config, when there is one."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        r = load_result(self.folder)
        self.raw = r
        self.times = np.asarray(r["times"], dtype=float)
        self.centroids = np.asarray(r["centroids"], dtype=float)
        self.areas = np.asarray(r["areas"], dtype=float)
        self.fields = [np.atleast_2d(r["density"])]
        if "density_perturbed" in r:
            self.fields.append(np.atleast_2d(r["density_perturbed"]))
        self.gdim = self.centroids.shape[1]
        self.num_cells = self.centroids.shape[0]
        cfg = self.folder / "config.toml"
        self.mesh_config = None
        if cfg.is_file():
            import tomllib

            with open(cfg, "rb") as f:
                self.mesh_config = tomllib.load(f).get("mesh")

    @property
    def sphere_dim(self) -> int:
        return self.gdim - 1

    def time_indices(self, times) -> list[int]:
        """Indices of the saved times nearest to ``times`` (default: first, middle, last)."""
        nt = len(self.times)
        if times is None:
            return sorted({0, nt // 2, nt - 1})
        if isinstance(times, str):
            if times != "all":
                raise ValueError(f"times must be numbers or 'all', got {times!r}")
            return list(range(nt))
        out = []
        for t in np.atleast_1d(np.asarray(times, dtype=float)):
            if not np.isfinite(t):
                raise ValueError(f"times: {t} is not a finite number")
            k = int(np.argmin(np.abs(self.times - t)))
            if abs(self.times[k] - t) > 1e-9 * max(1.0, abs(t)):
                warnings.warn(
                    f"t = {t:g} is not a saved time; showing the nearest, t = {self.times[k]:g}",
                    stacklevel=3,
                )
            if k not in out:
                out.append(k)
        return out

    def clim(self, k: int | None, flow: int | None = None) -> tuple[float, float]:
        """Colour range ``(0, max)`` at saved time ``k`` (all times when ``None``), shared by
        both flows, or of flow ``flow`` alone (0 base, 1 perturbed)."""
        sl = slice(None) if k is None else k
        fields = self.fields if flow is None else [self.fields[flow]]
        hi = max(float(np.max(f[sl])) for f in fields)
        return 0.0, hi if hi > 0 else 1.0

    def ranges(self, clim: str, per_flow: bool = False):
        """``k -> [(lo, hi) per flow]``: the colour ranges of saved time ``k`` for
        ``clim = "time"`` (rescaled per time) or ``"global"`` (one for all times), shared by
        the flows or, with ``per_flow``, one per flow (a faint base flow beside a sharp
        perturbed cluster keeps its own contrast)."""
        if clim not in ("time", "global"):
            raise ValueError(f"clim must be 'time' or 'global', got {clim!r}")
        n = len(self.fields)
        flows = list(range(n)) if per_flow else [None] * n
        if clim == "global":
            fixed = [self.clim(None, f) for f in flows]
            return lambda k: fixed
        return lambda k: [self.clim(k, f) for f in flows]


def _mesh_source(run: Run) -> dict:
    """What to rebuild the mesh from: ``{"points", "cells"}``, a mesh file, or a generator."""
    r = run.raw
    if "points" in r and "cells" in r:
        return {"points": np.asarray(r["points"], float), "cells": np.asarray(r["cells"], int)}
    m = run.mesh_config or {}
    if "file" in m:
        return {"file": m["file"], "project": bool(m.get("project", False))}
    if run.gdim == 2:
        n = int(m.get("cells", run.num_cells))
        return {"sphere": 1, "cells": n}
    if "refinement" in m:
        return {"sphere": 2, "refinement": int(m["refinement"])}
    level = np.log(run.num_cells / 20) / np.log(4) if run.num_cells >= 20 else -1.0
    if level >= 0 and 20 * 4 ** round(level) == run.num_cells:
        return {"sphere": 2, "refinement": round(level)}
    raise ValueError(
        f"cannot rebuild the mesh of {run.folder}: no config.toml with a [mesh] section, no "
        f"points/cells in result.npz, and {run.num_cells} cells is not an icosphere (20·4^k); "
        "pass mesh=(points, cells) in the original cell order"
    )


def vtk_arrays(run: Run, mesh=None):
    """``(cells (nc, nv) into points, points (np, 3), order)``: VTK cell ``i`` is saved cell
    ``order[i]``. Checked against the saved centroids."""
    order = None
    if mesh is not None and not isinstance(mesh, tuple):  # a SphereMesh on one rank
        points, cells, order = mesh.vtk_arrays()
        src = "the given SphereMesh"
    elif mesh is not None:
        points, cells = np.asarray(mesh[0], float), np.asarray(mesh[1], np.int64)
        src = "the given (points, cells)"
    else:
        spec = _mesh_source(run)
        src = f"{spec}" if "points" not in spec else "result.npz points/cells"
        if "points" in spec:
            points, cells = spec["points"], spec["cells"]
        elif "file" in spec:
            try:
                from mpi4py import MPI

                from ..mesh import load_mesh

                sm = load_mesh(MPI.COMM_SELF, spec["file"], project=spec["project"])
            except ImportError:
                raise ValueError(f"reading the mesh file {spec['file']} needs DOLFINx") from None
            points, cells, order = sm.vtk_arrays()
        elif spec["sphere"] == 1:
            points, cells = circle_mesh(spec["cells"])
        else:
            points, cells = icosphere(spec["refinement"])
    if order is None:
        order = np.arange(len(cells))
    if len(cells) != run.num_cells:
        raise ValueError(
            f"the mesh from {src} has {len(cells)} cells but the run saved {run.num_cells}"
        )
    p = np.zeros((len(points), 3))
    p[:, : points.shape[1]] = points[:, :3]
    cent = p[cells].mean(axis=1)
    cent /= np.linalg.norm(cent, axis=1, keepdims=True)
    saved = np.zeros((run.num_cells, 3))
    saved[:, : run.gdim] = run.centroids
    err = float(np.abs(cent - saved[order]).max())
    if not err < CENTROID_TOL:
        raise ValueError(
            f"the mesh rebuilt from {src} does not match the run's cells (centroids differ by "
            f"{err:.3g}): pass mesh=(points, cells) in the original cell order"
        )
    return cells, p, order


def read_vtx(path: str | os.PathLike) -> dict:
    """Read the VTX series ``density.bp`` of a run (needs the ``adios2`` Python package);
    ``path`` is the ``.bp`` folder or the run's output folder that holds ``density.bp``.

    This reads what ParaView's ADIOS2 VTX reader reads: the VTK schema stored in the file
    (attribute ``vtk.xml``), the mesh of every rank's block and the cell fields per step.
    Returns ``times`` (nt,) (the schema's ``TIME``), ``points`` (np, 3), ``cells`` (nc, nv)
    (the blocks of all ranks one after the other, ghost cells included), ``fields``
    ``{name: (nt, nc)}`` for the schema's cell data, and ``schema`` (the XML text).
    """
    import xml.etree.ElementTree as ET

    try:
        import adios2
    except ImportError:
        raise ImportError(
            "reading VTX needs the adios2 Python package (pip install adios2)"
        ) from None
    path = Path(path)
    if path.is_dir() and path.suffix != ".bp" and (path / "density.bp").is_dir():
        path = path / "density.bp"  # a run's output folder
    if not path.is_dir():
        raise FileNotFoundError(f"{path} not found (a VTX series is a folder *.bp, or give "
                                "the run's output folder)")  # fmt: skip
    with adios2.FileReader(str(path)) as f:
        xml = f.read_attribute_string("vtk.xml")
        xml = xml[0] if isinstance(xml, list) else xml
        piece = ET.fromstring(xml).find("UnstructuredGrid/Piece")
        names = [d.get("Name") for d in piece.find("CellData")]
        tvar = next((d.text for d in piece.find("PointData") if d.get("Name") == "TIME"), None)
        nsteps = f.num_steps()
        nblocks = len(f.all_blocks_info("connectivity")[0])

        def read(name, step, block):
            v = f.inquire_variable(name)
            v.set_step_selection([step, 1])
            v.set_block_selection(block)
            return np.asarray(f.read(v))

        pts, cells, off = [], [], 0
        for b in range(nblocks):
            x = read("geometry", 0, b).reshape(-1, 3)
            c = read("connectivity", 0, b)
            cells.append(c[:, 1:] + off)
            pts.append(x)
            off += len(x)
        fields = {
            n: np.array([np.concatenate([read(n, k, b).ravel() for b in range(nblocks)])
                         for k in range(nsteps)])
            for n in names
        }  # fmt: skip
        times = (
            np.array(
                [float(np.ravel(f.read(tvar, step_selection=[k, 1]))[0]) for k in range(nsteps)]
            )
            if tvar
            else np.arange(nsteps, dtype=float)
        )
    return dict(times=times, points=np.concatenate(pts), cells=np.concatenate(cells),
                fields=fields, schema=xml)  # fmt: skip
