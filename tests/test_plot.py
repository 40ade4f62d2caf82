"""Pictures of a run: PNGs that are not blank, one animation frame per saved time, diagnostics,
the mesh rebuilt in the saved cell order, and the VTX series that ParaView reads."""

from __future__ import annotations

import argparse
import shutil
import sys
import textwrap

import numpy as np
import pytest

from solver import viz as _plot
from solver.cli import build_parser, main
from solver.mesh import icosphere

pytestmark = pytest.mark.serial  # one rank draws; the runs below are serial

Image = pytest.importorskip("PIL.Image")

S2 = """
[mesh]
sphere = 2
refinement = 2
[model]
Q = [[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]]
V = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
[perturbation]
kind = "tied"
B = [[0.0], [0.0], [0.5]]
A = [[0.0], [1.0], [0.0]]
[initial]
kind = "mixture"
weights = [0.5, 0.5]
components = [
    { kind = "vmf", centre = [1.0, 0.0, 0.2], kappa = 6.0 },
    { kind = "vmf", centre = [-0.3, 1.0, 0.0], kappa = 6.0 },
]
[time]
T = 0.6
save_every = 0.2
"""

S1 = """
[mesh]
sphere = 1
cells = 64
[model]
Q = [[3.0, 0.0], [0.0, 3.0]]
V = [[1.0, 0.0], [0.0, 1.0]]
[perturbation]
kind = "tied"
dV = [[0.0, -0.5], [0.5, 0.0]]
[initial]
kind = "mixture"
weights = [0.5, 0.5]
components = [
    { kind = "vmf", centre = [1.0, 0.0], kappa = 3.0 },
    { kind = "vmf", centre = [-0.5, 0.8], kappa = 3.0 },
]
[time]
T = 1.0
save_every = 0.25
"""


def _run(tmp_path_factory, name, text):
    d = tmp_path_factory.mktemp(name)
    cfg = d / "c.toml"
    cfg.write_text(textwrap.dedent(text))
    out = d / "out"
    assert main(["run", str(cfg), "--output", str(out), "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def s2_run(tmp_path_factory):
    return _run(tmp_path_factory, "s2", S2)


@pytest.fixture(scope="module")
def s1_run(tmp_path_factory):
    return _run(tmp_path_factory, "s1", S1)


def _plot_cli(argv: list[str]) -> int:
    """``python -m solver plot ...``: through the CLI once it has ``plot``, else directly."""
    if "plot" in build_parser().format_help():
        return main(["plot", *argv])
    p = argparse.ArgumentParser()
    _plot.add_plot_parser(p.add_subparsers(dest="command"))
    return _plot.plot_main(p.parse_args(["plot", *argv]))


def _pixels(path):
    im = np.asarray(Image.open(path).convert("RGB"), dtype=float)
    assert im.ndim == 3 and im.shape[0] > 100 and im.shape[1] > 100
    return im


def _colours(im) -> int:
    """Number of distinct RGB colours."""
    rgb = im.astype(np.int64)
    return len(np.unique(rgb[..., 0] * 65536 + rgb[..., 1] * 256 + rgb[..., 2]))


def _assert_not_blank(path, panels: int):
    """The picture varies, and so does each panel (base, perturbed) on its own."""
    assert path.is_file() and path.stat().st_size > 5_000
    im = _pixels(path)
    assert im.std() > 10
    assert _colours(im) > 100  # a coloured field, not a flat fill
    w = im.shape[1]
    for i in range(panels):  # each panel: many colours (a colour map), not only background
        part = im[:, int(i * w / (panels + 0.3)) : int((i + 1) * w / (panels + 0.3))]
        assert part.std() > 10
        assert _colours(part) > 50


def _frames(path):
    """The RGB frames of an animation: a GIF (Pillow) or an MP4 (decoded by ffmpeg)."""
    if path.suffix == ".mp4":
        imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
        gen = imageio_ffmpeg.read_frames(str(path))
        w, h = next(gen)["size"]
        return [np.frombuffer(b, np.uint8).reshape(h, w, 3).astype(float) for b in gen]
    im = Image.open(path)
    out = []
    for k in range(im.n_frames):
        im.seek(k)
        out.append(np.asarray(im.convert("RGB"), dtype=float))
    return out


def test_plot_command_s2(s2_run, tmp_path):
    pytest.importorskip("pyvista")
    out = tmp_path / "pics"
    assert _plot_cli([str(s2_run), "--out", str(out), "--warp", "--per-flow"]) == 0
    times = np.load(s2_run / "result.npz")["times"]
    pngs = sorted(out.glob("density_t*.png"))
    assert len(pngs) == 3  # first, middle, last
    for p in pngs:
        _assert_not_blank(p, panels=2)
    # the density evolves: first and last pictures differ
    assert np.abs(_pixels(pngs[0]) - _pixels(pngs[-1])).mean() > 1
    frames = _frames(out / f"density.{_plot.default_animation()}")
    assert len(frames) == len(times)
    assert np.abs(frames[0] - frames[-1]).mean() > 1
    _assert_not_blank(out / "diagnostics.png", panels=1)


def test_plot_command_s1(s1_run, tmp_path):
    out = tmp_path / "pics"
    assert _plot_cli([str(s1_run), "--out", str(out), "--times", "0", "0.5", "1"]) == 0
    for t in ("0", "0.5", "1"):
        _assert_not_blank(out / f"density_t{t}.png", panels=2)
    times = np.load(s1_run / "result.npz")["times"]
    frames = _frames(out / f"density.{_plot.default_animation()}")
    assert len(frames) == len(times) == 5
    assert np.abs(frames[0] - frames[-1]).mean() > 1
    assert (out / "diagnostics.png").is_file()


def test_library_defaults_and_options(s1_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(s1_run, run)
    paths = _plot.plot_run(run, times="all", clim="global")
    assert [p.parent for p in paths] == [run / "plots"] * 5
    with pytest.warns(UserWarning, match="nearest"):
        (p,) = _plot.plot_run(run, times=0.3)
    assert p.name == "density_t0.25.png"
    assert _plot.animate_run(run, run / "a.gif", fps=10).is_file()
    with pytest.raises(ValueError, match="clim"):
        _plot.plot_run(run, clim="bad")
    # a w2 column (validation layer) is plotted when present
    csv = run / "diagnostics.csv"
    lines = csv.read_text().splitlines()
    lines = [lines[0] + ",w2"] + [ln + ",0.1" for ln in lines[1:]]
    csv.write_text("\n".join(lines) + "\n")
    assert _plot.plot_diagnostics(run, tmp_path / "d.png") == tmp_path / "d.png"


def test_unperturbed_s1_single_panel(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(textwrap.dedent(S1).split("[perturbation]")[0] + textwrap.dedent("""
        [initial]
        kind = "vmf"
        centre = [1.0, 0.0]
        kappa = 2.0
        [time]
        T = 0.2
        save_every = 0.1
        """))  # fmt: skip
    out = tmp_path / "out"
    assert main(["run", str(cfg), "--output", str(out), "--no-progress"]) == 0
    assert _plot_cli([str(out), "--animation", "none"]) == 0
    _assert_not_blank(out / "plots" / "density_t0.2.png", panels=1)
    assert not (out / "plots" / "density.gif").exists()
    assert (out / "plots" / "diagnostics.png").is_file()


def test_bad_folder_exit_code(tmp_path, capsys):
    assert _plot_cli([str(tmp_path)]) == 2
    assert "result.npz" in capsys.readouterr().err
    assert _plot_cli([str(tmp_path), "--times", "x"]) == 2


def test_mesh_rebuilt_in_saved_cell_order(s2_run, tmp_path):
    """DOLFINx's vtk_mesh order, the plain generator, an inferred icosphere: same picture."""
    pv = pytest.importorskip("pyvista")
    r = np.load(s2_run / "result.npz")
    grid = _plot.to_pyvista(s2_run, -1)
    assert grid.n_cells == len(r["areas"])
    cent = np.asarray(grid.cell_centers().points)
    cent /= np.linalg.norm(cent, axis=1, keepdims=True)
    # each VTK cell carries the density of the saved cell at its place
    near = np.argmin(((cent[:, None, :] - r["centroids"][None]) ** 2).sum(-1), axis=1)
    np.testing.assert_array_equal(grid.cell_data["density"], r["density"][-1][near])
    np.testing.assert_array_equal(grid.cell_data["density_perturbed"],
                                  r["density_perturbed"][-1][near])  # fmt: skip
    assert grid.field_data["time"][0] == r["times"][-1]
    # without config.toml (a library run): the icosphere is inferred from the cell count
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(s2_run / "result.npz", bare)
    g2 = _plot.to_pyvista(bare, 0)
    assert isinstance(g2, pv.UnstructuredGrid) and g2.n_cells == grid.n_cells
    # an explicit mesh in the original order, and a wrong one, which is refused
    points, cells = icosphere(2)
    g3 = _plot.to_pyvista(bare, 0, mesh=(points, cells))
    np.testing.assert_array_equal(g3.cell_data["density"], r["density"][0])
    with pytest.raises(ValueError, match="does not match"):
        _plot.to_pyvista(bare, 0, mesh=(points, cells[::-1]))


def test_mesh_without_dolfinx(s2_run, monkeypatch):
    """Without DOLFINx the plain generators rebuild the mesh, in the saved order."""
    pytest.importorskip("pyvista")

    monkeypatch.setitem(sys.modules, "solver.mesh._sphere", None)  # DOLFINx meshes fail
    r = np.load(s2_run / "result.npz")
    grid = _plot.to_pyvista(s2_run, -1)
    np.testing.assert_array_equal(grid.cell_data["density"], r["density"][-1])
    (png,) = _plot.plot_run(s2_run, times=[0.0], out=s2_run / "nodolfinx")
    _assert_not_blank(png, panels=2)


def test_vtx_series_has_fields_and_times(s2_run):
    """What ParaView's VTX reader sees: the schema's cell fields and TIME, the saved values."""
    from dolfinx.io import has_adios2

    if not has_adios2:
        pytest.skip("DOLFINx built without ADIOS2: the run wrote XDMF, not a VTX series")
    pytest.importorskip("adios2")
    r = np.load(s2_run / "result.npz")
    v = _plot.read_vtx(s2_run / "density.bp")
    assert list(v["fields"]) == ["density", "density_perturbed"]
    assert 'Name="TIME"' in v["schema"]
    np.testing.assert_allclose(v["times"], r["times"], rtol=0, atol=1e-14)
    cent = v["points"][v["cells"]].mean(axis=1)
    cent /= np.linalg.norm(cent, axis=1, keepdims=True)
    d2 = ((cent[:, None, :] - r["centroids"][None]) ** 2).sum(-1)
    near = np.argmin(d2, axis=1)
    assert np.sqrt(d2.min(axis=1)).max() < 1e-10
    assert set(near) == set(range(len(r["areas"])))
    for name in ("density", "density_perturbed"):
        np.testing.assert_allclose(v["fields"][name], r[name][:, near], rtol=0, atol=1e-14)


def _bar_strip_spread(frames, panels: int) -> float:
    """Largest mean pixel difference, between any frame and the first, of the colour-bar
    strip (the narrow column right of the panels: the bar and its tick labels)."""
    w = frames[0].shape[1]
    x0 = int(w * panels / (panels + 0.3)) + 4
    return max(np.abs(f[:, x0:] - frames[0][:, x0:]).mean() for f in frames)


def test_animation_has_one_colour_range(s1_run, tmp_path):
    """By default every frame of an animation uses one colour range (the colour bar and its
    labels are the same pixels in every frame); ``clim="time"`` rescales per frame."""
    fixed = _frames(_plot.animate_run(s1_run, tmp_path / "global.gif"))
    per_time = _frames(_plot.animate_run(s1_run, tmp_path / "time.gif", clim="time"))
    r = np.load(s1_run / "result.npz")
    # the largest density changes over the run, so one range per time would show it
    peaks = np.max([r["density"].max(axis=1), r["density_perturbed"].max(axis=1)], axis=0)
    assert peaks.max() > 1.2 * peaks.min()
    spread = _bar_strip_spread(fixed, 2), _bar_strip_spread(per_time, 2)
    print("colour-bar strip, mean pixel change over the frames (global, per time):", spread)
    assert spread[1] > 1.0  # per time the labels move: the check can fail
    assert spread[0] < 0.05 * spread[1]  # measured: exactly 0


SINGLE = """
[mesh]
sphere = 2
refinement = 3
[model]
Q = [[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]]
V = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
[perturbation]
kind = "tied"
B = [[0.03], [-0.08], [-0.05]]
A = [[0.3], [-0.8], [-0.5]]
[initial]
kind = "vmf"
centre = [0.3, -0.8, -0.5]
kappa = 6.0
[time]
T = 0.3
save_every = 0.15
"""


def test_view_faces_the_mass(tmp_path_factory):
    """A von Mises-Fisher blob around c under A = 2I, V = I and ΔV = 0.1 c cᵀ |c|², all
    invariant under the rotations about c: the densities stay symmetric about c up to the
    mesh, so the camera must look from c, face-on; its far hemisphere holds about
    1/(e^κ + 1) of a vMF(c, κ)'s mass, and the attraction towards c only lowers that."""
    out = _run(tmp_path_factory, "single", SINGLE)
    c = np.array([0.3, -0.8, -0.5]) / np.linalg.norm([0.3, -0.8, -0.5])
    v, hidden = _plot.view_direction(out)
    r = np.load(out / "result.npz")
    h = np.sqrt(4 * np.pi / len(r["areas"]))  # typical cell diameter
    assert np.isclose(np.linalg.norm(v), 1.0, rtol=0, atol=1e-12)
    angle = np.arccos(np.clip(v @ c, -1, 1))
    print("view angle from the centre (rad):", angle, "cell size", h, "hidden", hidden)
    assert angle < h**2  # the centroid quadrature of a smooth density: O(h²)
    kappa = 6.0
    assert hidden.shape == (2, len(r["times"]))
    assert hidden.max() < 2 / (np.exp(kappa) + 1)


def test_animation_pans_from_the_initial_to_the_final_mass(s2_run):
    """The S^2 animation starts face-on to the initial mass (two bumps of the mixture, not on
    the rim as with the final mass's camera) and turns along a great circle, one equal angle
    per frame, to face the final mass; each PNG faces the mass of its own time."""
    from solver.viz._data import Run
    from solver.viz._scenes import face_on_direction, hidden_fraction, pan_directions

    run = Run(s2_run)
    views = pan_directions(run)
    first, last = face_on_direction(run, 0), face_on_direction(run, -1)
    assert views.shape == (len(run.times), 3)
    np.testing.assert_allclose(np.linalg.norm(views, axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(views[0], first, atol=1e-12)
    np.testing.assert_allclose(views[-1], last, atol=1e-12)
    steps = np.arccos(np.clip(np.sum(views[1:] * views[:-1], axis=1), -1, 1))
    np.testing.assert_allclose(steps, steps.mean(), atol=1e-9)
    # framed on the initial mass: less of it hidden than with the final mass's camera
    # (measured 0.1571 against 0.1596 of the two flows' mass: the run is short)
    h0, h_final = np.sum(hidden_fraction(run, first, 0)), np.sum(hidden_fraction(run, last, 0))
    print("t = 0, hidden mass (initial view, final view):", h0, h_final)
    assert h0 < h_final


def test_default_animation_is_smooth():
    """The default job saves at least 30 times, shown at 10 frames per second."""
    import inspect

    from solver.io import load_config

    t = load_config(None)["time"]
    assert round(t["T"] / t["save_every"]) + 1 >= 30
    assert inspect.signature(_plot.animate_run).parameters["fps"].default == 10
    assert build_parser().parse_args(["plot", "x"]).fps == 10


def test_default_animation_is_mp4_where_ffmpeg_exists(s1_run, tmp_path):
    """MP4 (H.264, 10 fps) by default where an ffmpeg exists (the viz extra's imageio-ffmpeg
    ships one), else the GIF; the MP4's frames are the rendered pictures up to the video
    compression (mean difference measured 0.50-0.73 of 255 levels, bound 2; the GIF's
    256-colour palette is 2.9 off)."""
    kind = _plot.default_animation()
    assert kind == ("mp4" if _plot.ffmpeg() is not None else "gif")
    path = _plot.animate_run(s1_run, tmp_path)  # a folder: the default file name
    assert path == tmp_path / f"density.{kind}"
    if kind == "gif":
        pytest.skip("no ffmpeg here: the default is the GIF")
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    meta = next(imageio_ffmpeg.read_frames(str(path)))
    assert meta["fps"] == 10 and meta["codec"].startswith("h264"), meta
    from solver.viz._data import Run
    from solver.viz._plots import _render
    from solver.viz._scenes import FRAME

    run = Run(s1_run)
    raw = _render(run, range(len(run.times)), run.ranges("global"), window_size=FRAME,
                  warp=False, mesh=None)  # fmt: skip
    mp4 = _frames(path)
    assert len(mp4) == len(raw) == len(run.times)
    assert mp4[0].shape == raw[0].shape
    diff = [np.abs(a - b).mean() for a, b in zip(mp4, raw, strict=True)]
    print("MP4 against the rendered frames, mean pixel difference:", np.round(diff, 2))
    assert max(diff) < 2
    assert np.abs(mp4[0] - mp4[-1]).mean() > 1


def test_per_flow_colour_ranges(s1_run):
    """``per_flow``: each flow's largest density gets the top colour of the map in its own
    panel (and its own colour bar); with the shared range only the larger flow reaches it.
    S^1, last saved time, where the two peaks differ (checked)."""
    import matplotlib as mpl

    from solver.viz._data import Run
    from solver.viz._scenes import CMAP, WINDOW, CircleScene

    run = Run(s1_run)
    k = len(run.times) - 1
    peaks = [float(f[k].max()) for f in run.fields]
    assert min(peaks) < 0.97 * max(peaks), peaks  # measured 0.459 against 0.500
    top = np.asarray(mpl.colormaps[CMAP](1.0))
    for per_flow in (False, True):
        scene = CircleScene(run, WINDOW, per_flow=per_flow)
        try:
            scene.show_time(k, run.ranges("time", per_flow)(k))
            scene.screenshot()  # drawn: the face colours are set
            reach = [np.isclose(pc.get_facecolors()[:, :3], top[:3], atol=1e-3).all(axis=1).any()
                     for pc in scene.polys]  # fmt: skip
            assert len(scene.cbars) == (2 if per_flow else 1)
        finally:
            scene.close()
        expect = [True, True] if per_flow else [p == max(peaks) for p in peaks]
        assert reach == expect, (per_flow, reach, peaks)
