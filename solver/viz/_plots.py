"""Pictures of a run's output folder: densities on the sphere, animations, diagnostics.

Everything here works from an output folder alone (``result.npz``, ``diagnostics.csv`` and,
where present, ``config.toml``), on a machine without a screen:

- :func:`plot_run` — the base density μ_t and the perturbed density ν_t side by side at
  chosen saved times, with one colour scale: on S^2 a coloured sphere rendered off-screen by
  PyVista (optionally warped radially by the density), on S^1 a polar plot (matplotlib);
- :func:`animate_run` — an MP4 (where an ffmpeg exists) or GIF with one frame per saved time;
- :func:`plot_diagnostics` — mass, min/max density, first moment and drift over time;
- :func:`to_pyvista` — the run's mesh as a :class:`pyvista.UnstructuredGrid` with the saved
  cell fields, for your own PyVista pictures.

:func:`plot_run` and :func:`animate_run` draw with one scene loop (:func:`_render`, scenes of
:mod:`solver.viz._scenes`); the mesh is rebuilt as described in :mod:`solver.viz._data`.
``show=True`` opens an interactive window where a display exists.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np

from ..io import read_csv
from ._data import Run
from ._scenes import (
    FRAME,
    LABELS,
    WINDOW,
    CircleScene,
    SphereScene,
    face_on_direction,
    has_display,
    hidden_fraction,
    pan_directions,
    pyvista,
    pyvista_grid,
)

__all__ = [
    "plot_run",
    "animate_run",
    "plot_diagnostics",
    "to_pyvista",
    "show",
    "view_direction",
    "ffmpeg",
    "default_animation",
]


def _out_dir(run: Run, out) -> Path:
    d = Path(out) if out is not None else run.folder / "plots"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _render(run: Run, ks, ranges, *, window_size, warp, mesh, paths=None, show=False,
            views=None, per_flow=False) -> list:  # fmt: skip
    """Draw the saved times ``ks`` in one scene: PNGs at ``paths``, else the RGB images.

    ``ranges``: ``k -> [(lo, hi) per flow]`` (:meth:`Run.ranges`; ``per_flow``: a colour
    bar for each flow); ``warp``: as in :func:`plot_run`; ``show``: then open an interactive
    window at the last time; ``views``: S^2 camera directions per saved time (``None``: the
    final mass's).
    """
    if show and not has_display():
        warnings.warn("no display: cannot open an interactive window", stacklevel=3)
        show = False
    if run.sphere_dim == 1:
        scene = CircleScene(run, window_size, per_flow=per_flow)
    else:
        w = 0.5 if warp is True else float(warp or 0.0)
        scene = SphereScene(pyvista(), run, window_size, warp=w, off_screen=True, mesh=mesh,
                            views=views, per_flow=per_flow)  # fmt: skip
    images = []
    try:
        for i, k in enumerate(ks):
            scene.show_time(k, ranges(k))
            if paths is None:
                images.append(np.asarray(scene.screenshot()))
            else:
                scene.screenshot(paths[i])
        if show and run.sphere_dim == 1:
            scene.plt.show()
    finally:
        scene.close()
    if show and run.sphere_dim == 2:  # a new, on-screen scene
        pv = pyvista(off_screen=False)
        pv.OFF_SCREEN = False
        scene = SphereScene(pv, run, WINDOW, warp=w, off_screen=False, mesh=mesh,
                            views=views, per_flow=per_flow)  # fmt: skip
        scene.show_time(ks[-1], ranges(ks[-1]))
        scene.pl.show()
    return images


def plot_run(
    folder: str | os.PathLike,
    times=None,
    warp: bool | float = False,
    out: str | os.PathLike | None = None,
    *,
    clim: str = "time",
    per_flow: bool = False,
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
    per_flow : bool
        One colour range (and colour bar) per flow instead of one for both: the base flow
        keeps its contrast beside a sharp perturbed cluster.
    show : bool
        Also open an interactive window (where a display exists) for the last time.
    mesh : SphereMesh or (points, cells), optional
        The mesh, where the folder alone does not tell (see the module doc).

    Returns the paths of the PNGs written.
    """
    run = Run(folder)
    ranges = run.ranges(clim, per_flow)
    ks = run.time_indices(times)
    odir = _out_dir(run, out)
    paths = [odir / f"density_t{run.times[k]:g}.png" for k in ks]
    views = None  # S^2: each picture framed face-on to the mass of its own time
    if run.sphere_dim == 2:
        views = {k: face_on_direction(run, k) for k in ks}
    _render(run, ks, ranges, window_size=window_size, warp=warp, mesh=mesh, paths=paths,
            show=show, views=views, per_flow=per_flow)  # fmt: skip
    return paths


def ffmpeg() -> str | None:
    """The ffmpeg program for MP4s: imageio-ffmpeg's (the ``viz`` extra ships one; it also
    honours ``IMAGEIO_FFMPEG_EXE``), else ``ffmpeg`` on the PATH; ``None`` if there is none."""
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        return shutil.which("ffmpeg")


def default_animation() -> str:
    """``"mp4"`` where an ffmpeg exists (:func:`ffmpeg`; smooth colours, small files), else
    ``"gif"`` (one palette, no dithering)."""
    return "mp4" if ffmpeg() is not None else "gif"


def animate_run(
    folder: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    fps: float = 10.0,
    warp: bool | float = False,
    clim: str = "global",
    per_flow: bool = False,
    window_size=FRAME,
    mesh=None,
) -> Path:
    """An animation over all saved times, one frame per saved time.

    ``out``: the file (``.mp4`` or ``.gif``) or a folder for ``density.mp4`` where an ffmpeg
    exists, else ``density.gif`` (:func:`default_animation`; default folder
    ``folder/plots``). ``clim``: ``"global"`` (default: one colour range, 0 to the largest
    density over all saved times, for every frame, so that frames compare) or ``"time"``
    (rescaled per frame); ``per_flow``: one range per flow (each flow's own largest
    density). On S^2 the camera turns from face-on to the initial mass (t = 0) to face-on to
    the final one. Other arguments as in :func:`plot_run`. Returns the path written.
    """
    if not (np.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be > 0, got {fps}")
    run = Run(folder)
    ranges = run.ranges(clim, per_flow)
    if out is not None and Path(out).suffix.lower() in (".gif", ".mp4"):
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
    else:
        path = _out_dir(run, out) / f"density.{default_animation()}"
    views = pan_directions(run) if run.sphere_dim == 2 else None  # t = 0 on the initial mass
    frames = _render(run, range(len(run.times)), ranges, window_size=window_size, warp=warp,
                     mesh=mesh, views=views, per_flow=per_flow)  # fmt: skip
    _write_animation(path, frames, fps)
    return path


def _write_animation(path: Path, frames: list[np.ndarray], fps: float) -> None:
    if path.suffix.lower() == ".mp4":
        _write_mp4(path, frames, fps)
        return
    from PIL import Image

    # Pillow directly: one GIF frame per image. One palette for the whole animation, from a
    # sample of all frames, without dithering: dithered flat cells speckle from frame to frame
    sample = np.concatenate([f[::4, ::4].reshape(-1, 3) for f in frames])
    side = int(np.ceil(np.sqrt(len(sample))))
    mosaic = np.zeros((side * side, 3), np.uint8)
    mosaic[: len(sample)] = sample
    pal = Image.fromarray(mosaic.reshape(side, side, 3)).quantize(
        colors=256, method=Image.Quantize.MEDIANCUT
    )
    ims = [Image.fromarray(f).quantize(palette=pal, dither=Image.Dither.NONE)
           for f in frames]  # fmt: skip
    ims[0].save(path, save_all=True, append_images=ims[1:], duration=int(round(1000 / fps)),
                loop=0, optimize=False, disposal=1)  # fmt: skip


def _write_mp4(path: Path, frames: list[np.ndarray], fps: float) -> None:
    """H.264 (yuv420p: every player) through ffmpeg, the RGB frames piped in raw."""
    exe = ffmpeg()
    if exe is None:
        raise ImportError("an MP4 needs ffmpeg: pip install imageio-ffmpeg (in the viz extra) "
                          "or put ffmpeg on the PATH; or write a .gif")  # fmt: skip
    h, w = frames[0].shape[:2]
    pad = f"pad={(w + 1) // 2 * 2}:{(h + 1) // 2 * 2}"  # yuv420p needs even sides
    cmd = [exe, "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{w}x{h}", "-r", f"{fps:g}", "-i", "-", "-vf", pad, "-c:v", "libx264",
           "-pix_fmt", "yuv420p", "-crf", "18", "-r", f"{fps:g}", str(path)]  # fmt: skip
    data = b"".join(np.ascontiguousarray(f[..., :3], dtype=np.uint8).tobytes() for f in frames)
    p = subprocess.run(cmd, input=data, capture_output=True)
    if p.returncode != 0:
        raise OSError(f"ffmpeg could not write {path}: {p.stderr.decode(errors='replace')}")


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


def to_pyvista(folder: str | os.PathLike, time_index: int = -1, *, mesh=None):
    """The run's mesh as a ``pyvista.UnstructuredGrid`` with the saved densities.

    Cell data ``density`` (and ``density_perturbed``) at saved time ``times[time_index]``;
    field data ``time``. ``mesh``: a one-rank :class:`solver.SphereMesh` or ``(points, cells)``
    in the original cell order, where the folder alone does not say which mesh was used.
    """
    pv = pyvista()
    run = Run(folder)
    grid, order = pyvista_grid(pv, run, mesh)
    k = range(len(run.times))[time_index]
    for name, f in zip(("density", "density_perturbed"), run.fields, strict=False):
        grid.cell_data[name] = f[k][order]
    grid.field_data["time"] = np.array([run.times[k]])
    return grid


def view_direction(folder: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``(v, hidden)``: where the S^2 pictures look from, and the mass they cannot show.

    ``v`` (unit, R^3) maximises the face-on visible final mass ``Σ_j w_j max(<x_j, v>, 0)``
    (``w_j`` the final cell masses of both flows); ``hidden[f, k]`` is the fraction of flow
    ``f``'s mass at saved time ``k`` with ``<x, v> < 0`` (the far hemisphere), the figure's
    "far side (hidden)" label.
    """
    run = Run(folder)
    if run.sphere_dim != 2:
        raise ValueError(f"{folder}: a view direction is for S^2 runs; this run is on S^1")
    v = face_on_direction(run)
    hidden = np.array([hidden_fraction(run, v, k) for k in range(len(run.times))]).T
    return v, hidden


def show(path) -> None:
    """Display a picture or an MP4 inline in Jupyter; print its path in a plain script."""
    try:
        from IPython import get_ipython
        from IPython.display import Image, Video, display

        if get_ipython() is not None:
            if Path(path).suffix.lower() == ".mp4":
                display(Video(str(path), embed=True))
            else:
                display(Image(filename=str(path)))
            return
    except ImportError:
        pass
    print("wrote", path)
