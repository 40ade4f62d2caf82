"""The scenes that draw a run: S^2 in PyVista, S^1 in matplotlib, both updated per saved time.

A scene is built once for a run and then, for each saved time ``k``,
``show_time(k, ranges)`` (each flow's colour range, :meth:`~solver.viz._data.Run.ranges`)
updates its fields and ``screenshot(path=None)`` writes a PNG or returns the RGB image;
``close()`` frees it. :class:`SphereScene` shows the densities on the sphere (optionally
warped radially), :class:`CircleScene` polar plots; the base and the perturbed flow side by
side with one colour scale, or one each (``per_flow``). The S^2 camera looks face-on at where
the final mass is (:func:`face_on_direction`), and each panel says how much of its mass is on
the hidden side (:func:`hidden_fraction`).

PyVista (the ``viz`` extra) is imported only when an S^2 scene is made (:func:`pyvista`).
Without a display, rendering is off-screen (EGL, else OSMesa).
"""

from __future__ import annotations

import ctypes.util
import os
import sys

import numpy as np

from ._data import Run, vtk_arrays

__all__ = [
    "CMAP",
    "WINDOW",
    "FRAME",
    "LABELS",
    "SphereScene",
    "CircleScene",
    "has_display",
    "hidden_fraction",
    "face_on_direction",
    "pan_directions",
    "pyvista",
    "pyvista_grid",
]

#: Colour map of densities (perceptually uniform, readable in grey and by colour-blind eyes).
CMAP = "viridis"
#: Pixels of a PNG (two panels side by side) and of an animation frame.
WINDOW = (1400, 640)
FRAME = (960, 448)  # multiples of 16: MP4 codecs need them
LABELS = ("base μ", "LoRA-perturbed ν")
# VTK's bundled fonts have no Greek letters: plain names in rendered text.
VTK_LABELS = ("base flow", "LoRA-perturbed flow")


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


def has_display() -> bool:
    """Whether an interactive window can be opened."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def pyvista(off_screen: bool = True):
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


def _panel_window(window, n: int, bars: int = 1) -> tuple[int, int]:
    """Pixels for ``n`` panels and ``bars`` colour bars: ``window`` is sized for two panels
    and one bar."""
    w, h = window
    return (int(round(w * (n + 0.3 * bars) / 2.3 / 16)) * 16, int(h))


def face_on_direction(run: Run, k: int = -1) -> np.ndarray:
    """Unit vector the S^2 camera looks from: face-on to where the mass of saved time ``k``
    is (default: the final one).

    With ``w_j`` the masses of both flows at ``k`` (``ρ_j |K_j|``, base plus perturbed) at the
    cell centres ``x_j``, the direction maximises the face-on visible mass
    ``F(v) = Σ_j w_j max(<x_j, v>, 0)`` (a point mass at ``e`` gives ``v = e``; two clusters
    give their bisector, both in view). ``F`` is maximised from the best of a few hundred
    starting directions (spread over the sphere, plus the first moment) by the fixed-point
    iteration ``v ← Σ_{<x_j,v> > 0} w_j x_j / |·|``, which never decreases ``F``.
    """
    x = run.centroids
    w = sum(f[k] for f in run.fields) * run.areas
    w = np.where(w > 0, w, 0.0)
    k = np.arange(256) + 0.5  # Fibonacci points: evenly spread starting directions
    z = 1 - 2 * k / len(k)
    phi = np.pi * (3 - np.sqrt(5)) * k
    s = np.sqrt(1 - z**2)
    starts = np.column_stack([s * np.cos(phi), s * np.sin(phi), z])
    m = w @ x
    if np.linalg.norm(m) > 0:
        starts = np.vstack([m / np.linalg.norm(m), starts])
    big = np.argsort(w)[-4096:]  # the heaviest cells pick the start; all cells refine it
    v = starts[np.argmax(np.maximum(starts @ x[big].T, 0.0) @ w[big])]
    for _ in range(100):
        s = (w * (x @ v > 0)) @ x
        if not np.linalg.norm(s) > 0:
            break
        new = s / np.linalg.norm(s)
        if np.allclose(new, v, rtol=0, atol=1e-12):
            break
        v = new
    return v


def pan_directions(run: Run) -> np.ndarray:
    """A camera direction per saved time for an animation: from face-on to the initial
    mass (t = 0 framed on it) to face-on to the final mass, along the great circle, at a
    constant angle per frame (``(nt, 3)``, unit rows)."""
    a, b = face_on_direction(run, 0), face_on_direction(run, -1)
    nt = len(run.times)
    theta = float(np.arccos(np.clip(a @ b, -1.0, 1.0)))
    s = np.linspace(0.0, 1.0, nt)[:, None]
    if theta < 1e-9:
        return np.repeat(b[None], nt, axis=0)
    if np.pi - theta < 1e-6:  # opposite: any great circle through both; take one
        ortho = np.cross(a, [1.0, 0.0, 0.0] if abs(a[0]) < 0.9 else [0.0, 1.0, 0.0])
        ortho /= np.linalg.norm(ortho)
        return np.cos(np.pi * s) * a + np.sin(np.pi * s) * ortho
    out = (np.sin((1 - s) * theta) * a + np.sin(s * theta) * b) / np.sin(theta)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def hidden_fraction(run: Run, direction, k: int) -> list[float]:
    """Fraction of each flow's mass at saved time ``k`` on the far side of the camera:
    ``Σ_{<x_j, v> < 0} ρ_j |K_j| / Σ_j ρ_j |K_j|``."""
    back = run.centroids @ np.asarray(direction, dtype=float) < 0
    out = []
    for f in run.fields:
        w = f[k] * run.areas
        out.append(float(w[back].sum() / w.sum()) if w.sum() > 0 else 0.0)
    return out


# --------------------------------------------------------------------------------------------
# S^2: coloured spheres (PyVista)


def pyvista_grid(pv, run: Run, mesh=None):
    """``(grid, order)``: the run's cells as a ``pyvista.UnstructuredGrid`` (no fields); VTK
    cell ``i`` is saved cell ``order[i]``."""
    cells, points, order = vtk_arrays(run, mesh)
    nv = cells.shape[1]
    ctype = pv.CellType.TRIANGLE if nv == 3 else pv.CellType.LINE
    conn = np.column_stack([np.full(len(cells), nv), cells]).ravel()
    grid = pv.UnstructuredGrid(conn, np.full(len(cells), ctype, dtype=np.uint8), points)
    return grid, order


class SphereScene:
    """Two linked PyVista panels (base, perturbed) whose fields are updated per saved time."""

    def __init__(self, pv, run: Run, window, *, warp: float, off_screen: bool, mesh=None,
                 views=None, per_flow: bool = False):  # fmt: skip
        self.pv, self.run, self.warp = pv, run, float(warp)
        #: a camera direction per saved time (None: the final mass's, for every time)
        self.views = views
        grid, self.order = pyvista_grid(pv, run, mesh)
        self.unit = np.asarray(grid.points).copy()
        n = len(run.fields)
        per_flow = per_flow and n > 1
        window = _panel_window(window, n, n if per_flow else 1)
        # one column per flow and a narrow one for the shared colour bar, or a bar after each
        if per_flow:
            cols, weights, bar_cols = [2 * i for i in range(n)], [1.0, 0.3] * n, [1, 3][:n]
        else:
            cols, weights, bar_cols = list(range(n)), [1.0] * n + [0.3], [n]
        self.pl = pv.Plotter(shape=(1, len(weights)), col_weights=weights,
                             window_size=list(window), off_screen=off_screen,
                             border=False)  # fmt: skip
        self.pl.set_background("white")
        self.meshes, self.titles, self.actors, self.hidden = [], [], [], []
        font = max(8, round(window[1] / 48))
        for i in range(n):
            self.pl.subplot(0, cols[i])
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
            self.hidden.append(self.pl.add_text("", position="lower_edge",
                                                font_size=round(0.8 * font),
                                                color="black"))  # fmt: skip
        # scalar bars are named by their titles: one per flow needs two titles
        self.bar_titles = ["density", "density "][: len(bar_cols)]
        self.bars = []
        for j, (c, title) in enumerate(zip(bar_cols, self.bar_titles, strict=True)):
            self.pl.subplot(0, c)
            self.pl.add_scalar_bar(
                title=title, mapper=self.actors[j].mapper, vertical=True, position_x=0.12,
                position_y=0.15, width=0.5, height=0.7, color="black",
                title_font_size=2 * font, label_font_size=round(1.6 * font), n_labels=5,
            )  # fmt: skip
            bar = self.pl.scalar_bars[title]
            bar.SetUseCustomLabels(True)  # round tick values (set per time)
            bar.SetBarRatio(0.3)
            self.bars.append(bar)
        self.radius = 1.0 + 0.5 * self.warp
        self.pl.subplot(0, 0)
        self.pl.add_axes(color="black", line_width=2)
        aspect = window[0] / sum(weights) / window[1]  # of one panel
        self.dist = self.radius / (0.85 * np.tan(np.radians(15.0)) * min(1.0, aspect))
        self.aim(face_on_direction(run))  # show_time re-aims where views are given
        if n > 1:
            self.pl.link_views(cols)

    def aim(self, d: np.ndarray) -> None:
        """Look at the centre from direction ``d`` (the panels are linked)."""
        self.view = d = np.asarray(d, dtype=float)
        up = np.array([0.0, 0.0, 1.0]) if abs(d[2]) < 0.9 else np.array([0.0, 1.0, 0.0])
        self.pl.subplot(0, 0)
        self.pl.camera_position = [tuple(self.dist * d), (0.0, 0.0, 0.0),
                                   tuple(up - (up @ d) * d)]  # fmt: skip
        self.pl.camera.view_angle = 30.0

    def show_time(self, k: int, ranges) -> None:
        """Show saved time ``k`` with the colour range ``ranges[i]`` for flow ``i``."""
        run = self.run
        if self.views is not None:
            self.aim(self.views[k])
        for i, g in enumerate(self.meshes):
            vals = run.fields[i][k][self.order]
            g.cell_data["density"][:] = vals  # in place: the mapper keeps this array
            if self.warp:
                nodal = np.asarray(g.cell_data_to_point_data()["density"])
                g.points[:] = self.unit * (1.0 + self.warp * nodal / ranges[i][1])[:, None]
                g.GetPoints().Modified()
            name = VTK_LABELS[i] if len(self.meshes) > 1 else "density"
            self.titles[i].set_text("upper_edge", f"{name}    t = {_fmt_time(run.times[k])}")
        for i, h in enumerate(hidden_fraction(run, self.view, k)):
            self.hidden[i].set_text("lower_edge", f"far side (hidden): {100 * h:.1f}% of the mass")
        for actor, (lo, hi) in zip(self.actors, ranges, strict=True):
            actor.mapper.scalar_range = (lo, hi)
        for bar, title, (lo, hi) in zip(self.bars, self.bar_titles, ranges, strict=False):
            self.pl.update_scalar_bar_range([lo, hi], name=title)
            ticks = _nice_ticks(lo, hi)
            bar.SetLabelFormat(_tick_format(ticks))
            bar.SetCustomLabels(self.pv.convert_array(np.asarray(ticks, dtype=float)))
        for g in self.meshes:
            g.Modified()
        self.pl.render()

    def screenshot(self, path=None):
        return self.pl.screenshot(str(path) if path is not None else None, return_img=True)

    def close(self):
        self.pl.close()


# --------------------------------------------------------------------------------------------
# S^1: polar plots (matplotlib)


class CircleScene:
    """Polar plots of both flows on S^1 (one coloured wedge per cell), updated per time."""

    def __init__(self, run: Run, size, per_flow: bool = False):
        import matplotlib as mpl
        import matplotlib.pyplot as plt
        from matplotlib.collections import PolyCollection

        self.run, self.plt = run, plt
        n = len(run.fields)
        self.per_flow = per_flow = per_flow and n > 1
        size = _panel_window(size, n, n if per_flow else 1)
        dpi = 100
        self.fig, axes = plt.subplots(1, n, subplot_kw={"projection": "polar"},
                                      figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi,
                                      squeeze=False)  # fmt: skip
        self.axes = list(axes[0])
        self.fig.subplots_adjust(left=0.05, right=0.95 if per_flow else 0.86, top=0.88,
                                 bottom=0.05, wspace=0.3)  # fmt: skip
        theta = np.arctan2(run.centroids[:, 1], run.centroids[:, 0])
        half = np.arcsin(np.clip(run.areas / 2, 0, 1))  # half the arc of a chord of length |K|
        # each wedge: from the centre out to ρ between the cell's end angles (arcs are drawn
        # by the polar transform, which interpolates lines of constant r)
        self.t0, self.t1 = theta - half, theta + half
        srt = np.argsort(theta)
        # one normalisation for both flows, or one each (per_flow)
        self.norms = [mpl.colors.Normalize(0.0, 1.0) for _ in range(n if per_flow else 1)] * (
            1 if per_flow else n
        )
        self.locator = mpl.ticker.MaxNLocator(4)
        self.cmap = mpl.colormaps[CMAP]
        self.polys, self.titles = [], []
        for i, ax in enumerate(self.axes):
            pc = PolyCollection(self._verts(run.fields[i][0]), array=run.fields[i][0],
                                cmap=self.cmap, norm=self.norms[i], edgecolors="face",
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
        if per_flow:  # a colour bar right of each panel
            self.cbars = [self.fig.colorbar(pc, ax=ax, fraction=0.04, pad=0.1)
                          for pc, ax in zip(self.polys, self.axes, strict=True)]  # fmt: skip
        else:
            cax = self.fig.add_axes((0.9, 0.15, 0.018, 0.68))
            self.cbars = [self.fig.colorbar(self.polys[0], cax=cax)]
        for cb in self.cbars:
            cb.set_label("density", fontsize=11)

    def _verts(self, rho):
        z = np.zeros_like(rho)
        return np.stack(
            [
                np.column_stack(c)
                for c in ((self.t0, z), (self.t0, rho), (self.t1, rho), (self.t1, z))
            ],
            axis=1,
        )

    def show_time(self, k: int, ranges) -> None:
        """Show saved time ``k`` with the colour range ``ranges[i]`` for flow ``i``."""
        run = self.run
        for norm, (lo, hi) in zip(self.norms, ranges, strict=True):
            norm.vmin, norm.vmax = lo, hi
        for i, ax in enumerate(self.axes):
            hi = ranges[i][1]
            rho = run.fields[i][k]
            self.polys[i].set_verts(self._verts(rho))
            self.polys[i].set_array(rho)
            ax.set_ylim(0, hi * 1.05)
            ax.yaxis.set_major_locator(self.locator)
            name = LABELS[i] if len(self.axes) > 1 else "density"
            self.titles[i].set_text(f"{name}    t = {_fmt_time(run.times[k])}")
        for cb, pc in zip(self.cbars, self.polys, strict=False):
            cb.update_normal(pc)

    def screenshot(self, path=None):
        if path is not None:
            self.fig.savefig(path, dpi=self.fig.dpi, facecolor="white")
            return None
        self.fig.canvas.draw()
        return np.asarray(self.fig.canvas.buffer_rgba())[..., :3].copy()

    def close(self):
        self.plt.close(self.fig)
