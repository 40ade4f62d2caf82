"""Pictures of a run's output folder: densities on the sphere, animations, diagnostics.

Everything here works from an output folder alone (``result.npz``, ``diagnostics.csv`` and,
where present, ``config.toml``), on a machine without a screen:

- :func:`plot_run` — the base density μ_t and the perturbed density ν_t side by side at
  chosen saved times, with one colour scale: on S^2 a coloured sphere rendered off-screen by
  PyVista (optionally warped radially by the density), on S^1 a polar plot (matplotlib);
- :func:`animate_run` — a GIF (or MP4) with one frame per saved time;
- :func:`plot_diagnostics` — mass, min/max density, first moment and drift over time;
- :func:`to_pyvista` — the run's mesh as a :class:`pyvista.UnstructuredGrid` with the saved
  cell fields, for your own PyVista pictures;
- ``python -m solver plot DIR`` — all of the above (:func:`add_plot_parser`, :func:`plot_main`).

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

PyVista (the ``viz`` extra) is imported only when an S^2 picture is made. Without a display,
rendering is off-screen (EGL, else OSMesa); ``show=True`` opens an interactive window where a
display exists.
"""

from __future__ import annotations

import argparse
import ctypes.util
import os
import sys
import warnings
from pathlib import Path

import numpy as np

from ..io import load_result, read_csv
from ..mesh import circle_mesh, icosphere

__all__ = [
    "plot_run",
    "animate_run",
    "plot_diagnostics",
    "to_pyvista",
    "read_vtx",
    "add_plot_parser",
    "plot_main",
]

#: Colour map of densities (perceptually uniform, readable in grey and by colour-blind eyes).
CMAP = "viridis"
#: Pixels of a PNG (two panels side by side) and of an animation frame.
WINDOW = (1400, 640)
FRAME = (960, 448)  # multiples of 16: MP4 codecs need them
LABELS = ("base μ", "LoRA-perturbed ν")
# VTK's bundled fonts have no Greek letters: plain names in rendered text.
VTK_LABELS = ("base flow", "LoRA-perturbed flow")
CENTROID_TOL = 1e-6


# --------------------------------------------------------------------------------------------
# loading


class _Run:
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

    def clim(self, k: int | None) -> tuple[float, float]:
        """Shared colour range of both flows at saved time ``k`` (all times when ``None``)."""
        sl = slice(None) if k is None else k
        hi = max(float(np.max(f[sl])) for f in self.fields)
        return 0.0, hi if hi > 0 else 1.0


def _nice_ticks(lo: float, hi: float, n: int = 5) -> np.ndarray:
    """Round tick values inside ``[lo, hi]``, ends included."""
    from matplotlib.ticker import MaxNLocator

    t = MaxNLocator(n).tick_values(lo, hi)
    t = t[(t >= lo - 1e-12 * hi) & (t <= hi * (1 + 1e-12))]
    return t


def _tick_format(ticks) -> str:
    """printf format that shows every tick exactly, with as few digits as possible."""
    for digits in range(0, 8):
        if np.allclose(np.round(ticks, digits), ticks, rtol=0, atol=1e-9 * max(ticks.max(), 1)):
            return f"%.{digits}f"
    return "%.3g"


def _fmt_time(t: float) -> str:
    return f"{t:.4g}"


# --------------------------------------------------------------------------------------------
# the mesh


def _mesh_source(run: _Run) -> dict:
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


def _vtk_arrays(run: _Run, mesh=None):
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


def to_pyvista(folder: str | os.PathLike, time_index: int = -1, *, mesh=None):
    """The run's mesh as a ``pyvista.UnstructuredGrid`` with the saved densities.

    Cell data ``density`` (and ``density_perturbed``) at saved time ``times[time_index]``;
    field data ``time``. ``mesh``: a one-rank :class:`solver.SphereMesh` or ``(points, cells)``
    in the original cell order, where the folder alone does not say which mesh was used.
    """
    pv = _pyvista()
    run = _Run(folder)
    grid, order = _grid(pv, run, mesh)
    k = range(len(run.times))[time_index]
    for name, f in zip(("density", "density_perturbed"), run.fields, strict=False):
        grid.cell_data[name] = f[k][order]
    grid.field_data["time"] = np.array([run.times[k]])
    return grid


def _grid(pv, run: _Run, mesh=None):
    cells, points, order = _vtk_arrays(run, mesh)
    nv = cells.shape[1]
    ctype = pv.CellType.TRIANGLE if nv == 3 else pv.CellType.LINE
    conn = np.column_stack([np.full(len(cells), nv), cells]).ravel()
    grid = pv.UnstructuredGrid(conn, np.full(len(cells), ctype, dtype=np.uint8), points)
    return grid, order


def read_vtx(path: str | os.PathLike) -> dict:
    """Read the VTX series ``density.bp`` of a run (needs the ``adios2`` Python package).

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
    if not path.is_dir():
        raise FileNotFoundError(f"{path} not found (a VTX series is a folder *.bp)")
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


# --------------------------------------------------------------------------------------------
# rendering set-up


def has_display() -> bool:
    """Whether an interactive window can be opened."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _pyvista(off_screen: bool = True):
    """Import PyVista set up for off-screen pictures when there is no display."""
    if not has_display() and "VTK_DEFAULT_OPENGL_WINDOW" not in os.environ:
        if ctypes.util.find_library("EGL"):  # skip VTK's X attempt and its warning
            os.environ["VTK_DEFAULT_OPENGL_WINDOW"] = "vtkEGLRenderWindow"
    try:
        import pyvista as pv
    except ImportError:
        raise ImportError(
            "pictures of S^2 need PyVista: pip install 'meanfield-lora-solver[viz]'"
        ) from None
    if off_screen or not has_display():
        pv.OFF_SCREEN = True
    return pv


def _out_dir(run: _Run, out) -> Path:
    d = Path(out) if out is not None else run.folder / "plots"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _panel_window(window, n: int) -> tuple[int, int]:
    """Pixels for ``n`` panels and a colour bar: ``window`` is sized for two panels."""
    w, h = window
    return (int(round(w * (n + 0.3) / 2.3 / 16)) * 16, int(h))


def _view_direction(run: _Run) -> np.ndarray:
    """Where to look from: the mean direction of the mass (both flows, all saved times)."""
    w = sum(f.sum(axis=0) for f in run.fields) * run.areas
    m = w @ run.centroids
    if np.linalg.norm(m) < 0.05 * w.sum():
        return np.array([1.0, 0.6, 0.5]) / np.linalg.norm([1.0, 0.6, 0.5])
    d = m / np.linalg.norm(m)
    up = np.array([0.0, 0.0, 1.0])
    # tilt a little towards the north pole, so that the sphere is seen from slightly above
    d = d + 0.35 * (up - (up @ d) * d)
    return d / np.linalg.norm(d)


class _SphereScene:
    """Two linked PyVista panels (base, perturbed) whose fields are updated per saved time."""

    def __init__(self, pv, run: _Run, window, *, warp: float, off_screen: bool, mesh=None):
        self.pv, self.run, self.warp = pv, run, float(warp)
        grid, self.order = _grid(pv, run, mesh)
        self.unit = np.asarray(grid.points).copy()
        n = len(run.fields)
        window = _panel_window(window, n)
        # one column per flow and a narrow one for the shared colour bar
        self.pl = pv.Plotter(shape=(1, n + 1), col_weights=[1.0] * n + [0.3],
                             window_size=list(window), off_screen=off_screen,
                             border=False)  # fmt: skip
        self.pl.set_background("white")
        self.meshes, self.titles, self.actors = [], [], []
        font = max(8, round(window[1] / 48))
        for i in range(n):
            self.pl.subplot(0, i)
            g = grid.copy()
            g.cell_data["density"] = run.fields[i][0][self.order]
            self.meshes.append(g)
            actor = self.pl.add_mesh(
                g, scalars="density", cmap=CMAP, clim=run.clim(0), show_scalar_bar=False,
                lighting=True, ambient=0.3, diffuse=0.75, specular=0.1,
            )  # fmt: skip
            self.actors.append(actor)
            self.titles.append(self.pl.add_text("", position="upper_edge", font_size=font,
                                                color="black"))  # fmt: skip
        self.pl.subplot(0, n)
        self.pl.add_scalar_bar(
            title="density", mapper=self.actors[0].mapper, vertical=True, position_x=0.12,
            position_y=0.15, width=0.5, height=0.7, color="black", title_font_size=2 * font,
            label_font_size=round(1.6 * font), n_labels=5,
        )  # fmt: skip
        self.bar = self.pl.scalar_bars["density"]
        self.bar.SetUseCustomLabels(True)  # round tick values (set per time)
        self.bar.SetBarRatio(0.3)
        self.radius = 1.0 + 0.5 * self.warp
        self.pl.subplot(0, 0)
        self.pl.add_axes(color="black", line_width=2)
        d = _view_direction(run)
        up = np.array([0.0, 0.0, 1.0]) if abs(d[2]) < 0.9 else np.array([0.0, 1.0, 0.0])
        aspect = window[0] / (n + 0.3) / window[1]  # of one panel
        dist = self.radius / (0.85 * np.tan(np.radians(15.0)) * min(1.0, aspect))
        self.pl.camera_position = [tuple(dist * d), (0.0, 0.0, 0.0), tuple(up - (up @ d) * d)]
        self.pl.camera.view_angle = 30.0
        if n > 1:
            self.pl.link_views(list(range(n)))

    def show_time(self, k: int, clim) -> None:
        run = self.run
        lo, hi = clim if clim is not None else run.clim(k)
        for i, g in enumerate(self.meshes):
            vals = run.fields[i][k][self.order]
            g.cell_data["density"][:] = vals  # in place: the mapper keeps this array
            if self.warp:
                nodal = np.asarray(g.cell_data_to_point_data()["density"])
                g.points[:] = self.unit * (1.0 + self.warp * nodal / hi)[:, None]
                g.GetPoints().Modified()
            name = VTK_LABELS[i] if len(self.meshes) > 1 else "density"
            self.titles[i].set_text("upper_edge", f"{name}    t = {_fmt_time(run.times[k])}")
        for actor in self.actors:
            actor.mapper.scalar_range = (lo, hi)
        self.pl.update_scalar_bar_range([lo, hi])
        ticks = _nice_ticks(lo, hi)
        self.bar.SetLabelFormat(_tick_format(ticks))
        self.bar.SetCustomLabels(self.pv.convert_array(np.asarray(ticks, dtype=float)))
        for g in self.meshes:
            g.Modified()
        self.pl.render()

    def screenshot(self, path=None):
        return self.pl.screenshot(str(path) if path is not None else None, return_img=True)

    def close(self):
        self.pl.close()


# --------------------------------------------------------------------------------------------
# S^1: polar plots (matplotlib)


class _CircleScene:
    """Polar plots of both flows on S^1 (one coloured wedge per cell), updated per time."""

    def __init__(self, run: _Run, size):
        import matplotlib as mpl
        import matplotlib.pyplot as plt
        from matplotlib.collections import PolyCollection

        self.run, self.plt = run, plt
        n = len(run.fields)
        size = _panel_window(size, n)
        dpi = 100
        self.fig, axes = plt.subplots(1, n, subplot_kw={"projection": "polar"},
                                      figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi,
                                      squeeze=False)  # fmt: skip
        self.axes = list(axes[0])
        self.fig.subplots_adjust(left=0.05, right=0.86, top=0.88, bottom=0.05, wspace=0.3)
        theta = np.arctan2(run.centroids[:, 1], run.centroids[:, 0])
        half = np.arcsin(np.clip(run.areas / 2, 0, 1))  # half the arc of a chord of length |K|
        # each wedge: from the centre out to ρ between the cell's end angles (arcs are drawn
        # by the polar transform, which interpolates lines of constant r)
        self.t0, self.t1 = theta - half, theta + half
        srt = np.argsort(theta)
        self.norm = mpl.colors.Normalize(0.0, 1.0)
        self.locator = mpl.ticker.MaxNLocator(4)
        self.cmap = mpl.colormaps[CMAP]
        self.polys, self.titles = [], []
        for i, ax in enumerate(self.axes):
            pc = PolyCollection(self._verts(run.fields[i][0]), array=run.fields[i][0],
                                cmap=self.cmap, norm=self.norm, edgecolors="face",
                                linewidths=0.3)  # fmt: skip
            ax.add_collection(pc)
            self.polys.append(pc)
            r0 = run.fields[i][0][srt]
            th = theta[srt]
            ax.plot(np.append(th, th[0] + 2 * np.pi), np.append(r0, r0[0]), color="0.4",
                    lw=1.0, ls="--", label="t = 0", zorder=3)  # fmt: skip
            ax.set_rlabel_position(112.5)
            ax.tick_params(labelsize=8)
            ax.grid(alpha=0.5)
            self.titles.append(ax.set_title("", fontsize=12, pad=14))
        self.axes[0].legend(loc="lower left", bbox_to_anchor=(-0.05, -0.04), fontsize=9,
                            frameon=False)  # fmt: skip
        cax = self.fig.add_axes((0.9, 0.15, 0.018, 0.68))
        self.cbar = self.fig.colorbar(self.polys[0], cax=cax)
        self.cbar.set_label("density", fontsize=11)

    def _verts(self, rho):
        z = np.zeros_like(rho)
        return np.stack(
            [
                np.column_stack(c)
                for c in ((self.t0, z), (self.t0, rho), (self.t1, rho), (self.t1, z))
            ],
            axis=1,
        )

    def show_time(self, k: int, clim) -> None:
        run = self.run
        lo, hi = clim if clim is not None else run.clim(k)
        self.norm.vmin, self.norm.vmax = lo, hi
        for i, ax in enumerate(self.axes):
            rho = run.fields[i][k]
            self.polys[i].set_verts(self._verts(rho))
            self.polys[i].set_array(rho)
            ax.set_ylim(0, hi * 1.05)
            ax.yaxis.set_major_locator(self.locator)
            name = LABELS[i] if len(self.axes) > 1 else "density"
            self.titles[i].set_text(f"{name}    t = {_fmt_time(run.times[k])}")
        self.cbar.update_normal(self.polys[0])

    def screenshot(self, path=None):
        if path is not None:
            self.fig.savefig(path, dpi=self.fig.dpi, facecolor="white")
            return None
        self.fig.canvas.draw()
        return np.asarray(self.fig.canvas.buffer_rgba())[..., :3].copy()

    def close(self):
        self.plt.close(self.fig)


# --------------------------------------------------------------------------------------------
# public functions


def plot_run(
    folder: str | os.PathLike,
    times=None,
    warp: bool | float = False,
    out: str | os.PathLike | None = None,
    *,
    clim: str = "time",
    window_size=WINDOW,
    show: bool = False,
    mesh=None,
) -> list[Path]:
    """PNG pictures of the base and perturbed densities, side by side, at saved times.

    Parameters
    ----------
    folder : path
        Output folder of a run.
    times : float, list of floats, "all" or None
        Times to show (the nearest saved times); default the first, middle and last.
    warp : bool or float
        S^2: displace the sphere radially by ``warp · ρ / max ρ`` (``True``: 0.5).
    out : path, optional
        Folder for the PNGs (default ``folder/plots``); files ``density_t<t>.png``.
    clim : "time" or "global"
        One colour range for both flows at each time, or one for all times.
    show : bool
        Also open an interactive window (where a display exists) for the last time.
    mesh : SphereMesh or (points, cells), optional
        The mesh, where the folder alone does not tell (see the module doc).

    Returns the paths of the PNGs written.
    """
    if clim not in ("time", "global"):
        raise ValueError(f"clim must be 'time' or 'global', got {clim!r}")
    run = _Run(folder)
    ks = run.time_indices(times)
    odir = _out_dir(run, out)
    fixed = run.clim(None) if clim == "global" else None
    paths = [odir / f"density_t{run.times[k]:g}.png" for k in ks]
    if run.sphere_dim == 1:
        scene = _CircleScene(run, window_size)
        try:
            for k, p in zip(ks, paths, strict=True):
                scene.show_time(k, fixed)
                scene.screenshot(p)
            if show and has_display():
                scene.plt.show()
            elif show:
                warnings.warn("no display: cannot open an interactive window", stacklevel=2)
        finally:
            scene.close()
    else:
        w = 0.5 if warp is True else float(warp or 0.0)
        pv = _pyvista()
        scene = _SphereScene(pv, run, window_size, warp=w, off_screen=True, mesh=mesh)
        try:
            for k, p in zip(ks, paths, strict=True):
                scene.show_time(k, fixed)
                scene.screenshot(p)
        finally:
            scene.close()
        if show:
            _interactive(run, ks[-1], w, fixed, mesh)
    return paths


def _interactive(run: _Run, k: int, warp: float, clim, mesh) -> None:
    if not has_display():
        warnings.warn("no display: cannot open an interactive window", stacklevel=3)
        return
    pv = _pyvista(off_screen=False)
    pv.OFF_SCREEN = False
    scene = _SphereScene(pv, run, WINDOW, warp=warp, off_screen=False, mesh=mesh)
    scene.show_time(k, clim)
    scene.pl.show()


def animate_run(
    folder: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    fps: float = 3.0,
    warp: bool | float = False,
    clim: str = "time",
    window_size=FRAME,
    mesh=None,
) -> Path:
    """An animation over all saved times, one frame per saved time.

    ``out``: the file (``.gif``, or ``.mp4`` with ``imageio-ffmpeg``) or a folder for
    ``density.gif`` (default ``folder/plots/density.gif``). Other arguments as in
    :func:`plot_run`. Returns the path written.
    """
    if clim not in ("time", "global"):
        raise ValueError(f"clim must be 'time' or 'global', got {clim!r}")
    if not (np.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be > 0, got {fps}")
    run = _Run(folder)
    if out is not None and Path(out).suffix.lower() in (".gif", ".mp4"):
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
    else:
        path = _out_dir(run, out) / "density.gif"
    fixed = run.clim(None) if clim == "global" else None
    frames = []
    if run.sphere_dim == 1:
        scene = _CircleScene(run, window_size)
        try:
            for k in range(len(run.times)):
                scene.show_time(k, fixed)
                frames.append(scene.screenshot())
        finally:
            scene.close()
    else:
        w = 0.5 if warp is True else float(warp or 0.0)
        scene = _SphereScene(_pyvista(), run, window_size, warp=w, off_screen=True, mesh=mesh)
        try:
            for k in range(len(run.times)):
                scene.show_time(k, fixed)
                frames.append(np.asarray(scene.screenshot()))
        finally:
            scene.close()
    _write_animation(path, frames, fps)
    return path


def _write_animation(path: Path, frames: list[np.ndarray], fps: float) -> None:
    if path.suffix.lower() == ".mp4":
        try:
            import imageio.v2 as iio

            with iio.get_writer(path, fps=fps) as w:
                for f in frames:
                    w.append_data(f)
        except (ImportError, ValueError) as e:
            raise ImportError(f"MP4 needs imageio and imageio-ffmpeg ({e}); write a .gif") from e
        return
    from PIL import Image

    # Pillow directly: one GIF frame per image. One palette for the whole animation, from a
    # sample of all frames, and dithering: smooth shading and the colour bar stay unbanded.
    sample = np.concatenate([f[::4, ::4].reshape(-1, 3) for f in frames])
    side = int(np.ceil(np.sqrt(len(sample))))
    mosaic = np.zeros((side * side, 3), np.uint8)
    mosaic[: len(sample)] = sample
    pal = Image.fromarray(mosaic.reshape(side, side, 3)).quantize(
        colors=256, method=Image.Quantize.MEDIANCUT
    )
    ims = [Image.fromarray(f).quantize(palette=pal, dither=Image.Dither.FLOYDSTEINBERG)
           for f in frames]  # fmt: skip
    ims[0].save(path, save_all=True, append_images=ims[1:], duration=int(round(1000 / fps)),
                loop=0, optimize=False, disposal=1)  # fmt: skip


def plot_diagnostics(folder: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """``diagnostics.png``: mass, min/max density, first moment and drift over time.

    The drift panel shows ``moment_drift`` and ``l1_difference`` and the exact ``W2`` at the
    saved times (``w2.csv``, or a ``w2`` column) when the run has a perturbed flow.
    ``out``: a ``.png`` path or a folder (default
    ``folder/plots``). Returns the path written.
    """
    import matplotlib.pyplot as plt

    folder = Path(folder)
    csv = folder / "diagnostics.csv"
    if not csv.is_file():
        raise FileNotFoundError(f"{csv} not found: is {folder} the output folder of a run?")
    c = read_csv(csv)
    if out is not None and Path(out).suffix.lower() == ".png":
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
    else:
        d = Path(out) if out is not None else folder / "plots"
        d.mkdir(parents=True, exist_ok=True)
        path = d / "diagnostics.png"
    t = c["t"]
    two = "mass_perturbed" in c
    axes_names = [a for a in "xyz" if f"moment_{a}" in c]
    flows = [("", LABELS[0], "-")] + ([("_perturbed", LABELS[1], "--")] if two else [])
    colours = {"x": "C0", "y": "C1", "z": "C2"}

    fig, ax = plt.subplots(2, 2, figsize=(11, 7.5), dpi=110, layout="constrained", sharex=True)
    a = ax[0, 0]
    for suf, lab, ls in flows:
        a.plot(t, c["mass" + suf] - c["mass" + suf][0], ls=ls, label=lab)
    a.set_title("mass − initial mass (conserved to round-off)")
    a.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    a.legend(fontsize=8)
    a = ax[0, 1]
    for suf, lab, ls in flows:
        a.plot(t, c["max" + suf], ls=ls, color="C3", label=f"max, {lab}")
        a.plot(t, np.maximum(c["min" + suf], 1e-300), ls=ls, color="C0", label=f"min, {lab}")
    a.set_yscale("log")
    a.set_title("min and max of the density (cell averages)")
    a.legend(fontsize=8)
    a = ax[1, 0]
    for suf, lab, ls in flows:
        tag = "moment_perturbed_" if suf else "moment_"
        m = np.column_stack([c[tag + x] for x in axes_names])
        for j, x in enumerate(axes_names):
            a.plot(t, m[:, j], ls=ls, color=colours[x], label=f"m_{x}, {lab}")
        a.plot(t, np.linalg.norm(m, axis=1), ls=ls, color="k", label=f"|m|, {lab}")
    a.set_title(r"first moment $m = \int x \, d\mu$")
    a.set_xlabel("t (depth)")
    a.legend(fontsize=7, ncol=2)
    a = ax[1, 1]
    if two:
        a.plot(t, c["moment_drift"], color="C4", label=r"$|m_\mu - m_\nu|$ (first moments)")
        a.plot(t, c["l1_difference"], color="C5", label=r"$\|\rho_\mu - \rho_\nu\|_{L^1}$")
        if "w2" in c:
            a.plot(t, c["w2"], color="C6", label=r"$W_2(\mu, \nu)$")
        elif (folder / "w2.csv").is_file():  # exact W2 at the saved times (solver.evolve)
            w = read_csv(folder / "w2.csv")
            a.plot(w["t"], w["w2"], "o-", color="C6", ms=4, label=r"$W_2(\mu, \nu)$ (geodesic)")
        a.legend(fontsize=8)
        a.set_title("drift between the base and the perturbed flow")
    else:
        a.text(0.5, 0.5, "no perturbation: no drift", ha="center", va="center",
               transform=a.transAxes)  # fmt: skip
        a.set_title("drift")
    a.set_xlabel("t (depth)")
    for a in ax.flat:
        a.grid(alpha=0.3)
    fig.suptitle(f"diagnostics of {folder.name}", fontsize=12)
    fig.savefig(path, facecolor="white")
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------
# command line


def add_plot_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``plot`` to the ``python -m solver`` subcommands."""
    p = subparsers.add_parser(
        "plot",
        help="pictures of a run's output folder (PNG, GIF/MP4, diagnostics)",
        description="Render the base and perturbed densities side by side at saved times "
        "(S^2: coloured sphere; S^1: polar plot), an animation over all saved times and "
        "the diagnostics. Works without a screen (off-screen VTK).",
    )
    p.add_argument("folder", type=Path, help="output folder of `python -m solver run`")
    p.add_argument("--times", "-t", nargs="+", metavar="T",
                   help="times to show (nearest saved ones), or 'all'; "
                   "default: first, middle, last")  # fmt: skip
    p.add_argument(
        "--warp",
        nargs="?",
        type=float,
        const=0.5,
        default=0.0,
        metavar="FACTOR",
        help="S^2: warp the sphere radially by FACTOR·ρ/max ρ (default 0.5)",
    )
    p.add_argument("--out", "-o", type=Path, help="folder for the pictures (default DIR/plots)")
    p.add_argument(
        "--clim",
        choices=("time", "global"),
        default="time",
        help="one colour range per time (default) or for all times",
    )
    p.add_argument(
        "--animation",
        choices=("gif", "mp4", "none"),
        default="gif",
        help="animation over all saved times (default gif)",
    )
    p.add_argument("--fps", type=float, default=3.0, help="frames per second of the animation")
    p.add_argument("--no-diagnostics", action="store_true", help="skip diagnostics.png")
    p.add_argument(
        "--show", action="store_true", help="also open an interactive window (needs a display)"
    )
    return p


def plot_main(args: argparse.Namespace) -> int:
    """Run ``python -m solver plot``; exit status 0, or 2 with a message for bad input."""
    try:  # under mpiexec, one rank draws
        from mpi4py import MPI

        if MPI.COMM_WORLD.rank != 0:
            return 0
    except ImportError:  # pragma: no cover
        pass
    times = args.times
    try:
        if times is not None and times != ["all"]:
            try:
                times = [float(t) for t in times]
            except ValueError:
                raise ValueError(f"--times: numbers or 'all', got {' '.join(times)}") from None
        elif times == ["all"]:
            times = "all"
        written = plot_run(args.folder, times, warp=args.warp, out=args.out, clim=args.clim,
                           show=args.show)  # fmt: skip
        if args.animation != "none":
            target = (args.out or args.folder / "plots") / f"density.{args.animation}"
            written.append(animate_run(args.folder, target, fps=args.fps, warp=args.warp,
                                       clim=args.clim))  # fmt: skip
        if not args.no_diagnostics:
            written.append(plot_diagnostics(args.folder, args.out))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ImportError as e:  # an optional dependency (pyvista, imageio-ffmpeg, ...)
        print(f"error: {e}", file=sys.stderr)
        return 1
    for p in written:
        print(p)
    return 0


def show(path) -> None:
    """Display a picture inline in Jupyter; print its path in a plain script."""
    try:
        from IPython import get_ipython
        from IPython.display import Image, display

        if get_ipython() is not None:
            display(Image(filename=str(path)))
            return
    except ImportError:
        pass
    print("wrote", path)
