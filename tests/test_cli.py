"""Command line and config validation: bad input fails with a clear message and exit code."""

import textwrap
from pathlib import Path

import numpy as np
import pytest

from solver.cli import main

GOOD = """
[mesh]
sphere = 1
cells = 32
[model]
V = [[1.0, 0.0], [0.0, 1.0]]
[initial]
kind = "vmf"
centre = [1.0, 0.0]
kappa = 2.0
[time]
T = 0.2
"""


def write(tmp_path, text, name="c.toml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_help_and_default_config(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    assert "run" in capsys.readouterr().out
    assert main(["config"]) == 0
    assert "[mesh]" in capsys.readouterr().out


def test_good_config_runs(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", str(write(tmp_path, GOOD)), "--output", str(out), "--no-progress"]) == 0
    z = np.load(out / "result.npz")
    assert set(z.files) == {"times", "centroids", "areas", "density", "points", "cells"}
    assert not (out / "w2.csv").exists()  # no perturbation, no drift
    assert z["density"].shape == (len(z["times"]), 32)
    assert (out / "diagnostics.csv").is_file() and (out / "config.toml").is_file()
    assert (out / "versions.json").is_file()
    from dolfinx.io import has_adios2  # VTX series with ADIOS2, else the XDMF fallback

    assert (out / "density.bp").is_dir() if has_adios2 else (out / "density.xdmf").is_file()
    # the resolved config is itself a valid config
    assert main(["config", "--check", str(out / "config.toml")]) == 0


BAD = {
    "non-square Q": ("[model]\nQ = [[1.0, 0.0]]\n", "model.Q"),
    "wrong-size V": ("[model]\nV = [[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]\n", "model.V"),
    "NaN in K": ("K = [[nan, 0.0], [0.0, 1.0]]", "model.K"),
    "unknown key": ("[time]\nT = 1.0\ndt = 0.1\n", "unknown key"),
    "unknown section": ("[solver]\nx = 1\n", "unknown section"),
    "negative initial": ('[initial]\nkind = "expression"\nexpression = "x"\n', "negative"),
    "zero initial": ('[initial]\nkind = "expression"\nexpression = "0*x"\n', "zero"),
    "bad expression": ('[initial]\nkind = "expression"\nexpression = "open(1)"\n', "unknown"),
    "key of another kind": ('[initial]\nkind = "uniform"\nkappa = 1.0\n', "do not apply"),
    "cfl > 1": ("[time]\nT = 1.0\ncfl = 1.5\n", "time.cfl"),
    "tail mass >= 1": ("[time]\nT = 1.0\ntail_mass = 1.0\n", "time.tail_mass"),
    "tail mass as text": ('[time]\nT = 1.0\ntail_mass = "1e-5"\n', "time.tail_mass"),
    "missing mesh file": ('[mesh]\nfile = "/nonexistent/sphere.xdmf"\n', "mesh.file"),
    "vmf centre size": ('[initial]\nkind = "vmf"\ncentre = [1.0]\nkappa = 1.0\n', "centre"),
    "bad LoRA factors": (
        '[perturbation]\nkind = "tied"\nB = [[1.0], [0.0]]\nA = [[1.0, 0.0], [0.0, 1.0]]\n',
        "perturbation",
    ),
}


def merge(base: str, patch: str) -> str:
    """Override keys of ``base`` by those in ``patch`` (section by section)."""
    import tomllib

    cfg = tomllib.loads(base)
    for sec, table in tomllib.loads(patch).items():
        if "kind" in table and sec == "initial":  # a new kind replaces the whole table
            cfg[sec] = table
        cfg.setdefault(sec, {}).update(table)
    from solver.io import dump_toml

    return dump_toml(cfg)


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_config_fails_clearly(tmp_path, capsys, case):
    patch, needle = BAD[case]
    if case == "NaN in K":  # dump_toml cannot express nan: patch the text directly
        text = GOOD.replace("[model]", "[model]\n" + patch)
    else:
        text = merge(GOOD, patch)
    rc = main(["run", str(write(tmp_path, text)), "--output", str(tmp_path / "o"),
               "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc != 0
    assert needle in err, err


def test_unreadable_and_off_sphere_meshes(tmp_path, capsys):
    from dolfinx import io
    from mpi4py import MPI

    import solver

    junk = tmp_path / "junk.xdmf"
    junk.write_text("not xml at all")
    cfg = GOOD.replace("sphere = 1\ncells = 32", f'file = "{junk}"')
    assert main(["run", str(write(tmp_path, cfg)), "--output", str(tmp_path / "o")]) == 2
    assert "is not an XDMF file" in capsys.readouterr().err

    sm = solver.sphere_mesh(MPI.COMM_SELF, 1, cells=16)
    sm.mesh.geometry.x[:] *= 1.1
    off = tmp_path / "off.xdmf"
    with io.XDMFFile(MPI.COMM_SELF, str(off), "w") as f:
        f.write_mesh(sm.mesh)
    cfg = GOOD.replace("sphere = 1\ncells = 32", f'file = "{off}"')
    assert main(["run", str(write(tmp_path, cfg)), "--output", str(tmp_path / "o")]) == 2
    assert "not a mesh of the unit sphere" in capsys.readouterr().err
    # ... unless projection is asked for
    cfg = cfg.replace(f'file = "{off}"', f'file = "{off}"\nproject = true')
    out = tmp_path / "p"
    assert main(["run", str(write(tmp_path, cfg)), "--output", str(out), "--no-progress"]) == 0


def test_shipped_meshes_load():
    from pathlib import Path

    from mpi4py import MPI

    import solver

    root = Path(__file__).resolve().parents[1] / "meshes"
    sm = solver.load_mesh(MPI.COMM_WORLD, root / "icosphere_3.xdmf")
    assert sm.num_cells == 1280 and sm.gdim == 3
    # flat cells inscribed in the sphere: total area slightly below 4π, O(h^2)
    assert 0.99 * 4 * np.pi < sm.integrate(np.ones(sm.num_owned)) < 4 * np.pi
    assert solver.load_mesh(MPI.COMM_WORLD, root / "circle_256.xdmf").num_cells == 256


def test_real_exit_code_from_shell(tmp_path, run):
    bad = write(tmp_path, merge(GOOD, "[model]\nQ = [[1.0, 0.0]]\n"))
    p = run(["-m", "solver", "run", str(bad), "--output", str(tmp_path / "o")])
    assert p.returncode == 2 and "model.Q" in p.stderr
    p = run(["-m", "solver", "--help"])
    assert p.returncode == 0 and "mpiexec" in p.stdout


def test_dg1_through_the_config(tmp_path):
    """[scheme] degree = 1 runs DG1 on curved cells from the CLI: mass kept, density >= 0."""
    cfg = merge(GOOD, "[scheme]\ndegree = 1\n[perturbation]\nkind = \"tied\"\n"
                      "dV = [[0.0, 0.0], [0.0, -0.5]]\n")  # fmt: skip
    out = tmp_path / "o"
    assert main(["run", str(write(tmp_path, cfg)), "--output", str(out), "--no-progress"]) == 0
    d = np.loadtxt(out / "diagnostics.csv", delimiter=",", skiprows=1)
    cols = (out / "diagnostics.csv").read_text().splitlines()[0].split(",")
    for name in ("mass", "mass_perturbed"):
        assert np.abs(d[:, cols.index(name)] - 1).max() <= 1e-12
    assert d[:, cols.index("min")].min() >= 0 and d[:, cols.index("min_perturbed")].min() >= 0
    z = np.load(out / "result.npz")
    # cell averages on the curved cells integrate to one
    assert abs(z["density"][-1] @ z["areas"] - 1) < 1e-12


def test_validate_on_a_mesh_file(tmp_path):
    """`validate` with `[mesh] file` runs on the file's mesh (it used to fail on 'sphere')."""
    mesh = Path(__file__).resolve().parents[1] / "meshes" / "circle_64.xdmf"
    cfg = GOOD.replace("sphere = 1\ncells = 32", f'file = "{mesh}"').replace("T = 0.2", "T = 0.1")
    cfg += "[validation]\nsizes = [20, 40]\nseeds = 1\n"
    out = tmp_path / "v"
    assert main(["validate", str(write(tmp_path, cfg)), "--output", str(out), "--no-progress"]) == 0
    rows = np.loadtxt(out / "pde_vs_particles.csv", delimiter=",", skiprows=1)
    assert set(rows[:, 0]) == {64}  # the level column holds the file mesh's cell count


HEAVY = ("numpy", "scipy", "ot", "numba", "dolfinx", "petsc4py", "pyvista", "matplotlib")


def test_help_and_version_load_nothing_heavy(run):
    """``--help`` and ``--version`` build the parser without the numerical stack (lazy
    imports: it took 1.45 s with SciPy, POT and numba imported up front); the check is on
    what is imported, not on a time."""
    code = ("import sys\nfrom solver.cli import main\nfor a in (['--help'], ['--version']):\n"
            "    try:\n        main(a)\n    except SystemExit as e:\n        assert e.code == 0\n"
            f"print('HEAVY', [m for m in {HEAVY!r} if m in sys.modules])\n")  # fmt: skip
    p = run(["-c", code])
    assert p.returncode == 0, p.stderr
    assert "python -m solver 0." in p.stdout and "plot" in p.stdout
    assert p.stdout.strip().splitlines()[-1] == "HEAVY []", p.stdout


def test_progress_in_a_log_is_plain_lines(tmp_path):
    """stderr not a terminal: one plain line per tenth of the run (no carriage returns)."""
    from solver.io import PlainProgress, progress

    f = (tmp_path / "log").open("w")
    bar = PlainProgress(30.0, desc="evolve", unit="t", file=f)
    for _ in range(300):
        bar.update(0.1)
    bar.close()
    f.close()
    lines = (tmp_path / "log").read_text().splitlines()
    assert len(lines) == 10, lines
    assert lines[-1].startswith("evolve: t = 30/30 (100 %)") and "\r" not in "".join(lines)
    assert isinstance(progress(1.0), PlainProgress)  # pytest captures stderr: not a terminal


PEAKED = GOOD.replace("[model]\n", "[model]\nQ = [[1e6, 0.0], [0.0, 1e6]]\n")


def test_auto_with_a_peaked_kernel_warns_and_takes_the_direct_sum(tmp_path, capsys,
                                                                  monkeypatch):  # fmt: skip
    """``Q = 1e6 I``: ``auto`` says in one line that it takes the direct sum, and gives the
    direct sum's run; it decides without the exact truncation tails, whose recurrence takes
    O(‖A‖) steps (22 s here; auto took 14.8 s against 0.4 s for direct, silently)."""
    from solver.velocity import _fast

    real = _fast.truncation_tails

    def tails(r, n, d, extra=30):
        assert float(np.max(r)) <= _fast.QUICK_TAIL_R, "exact tails for a hopeless kernel"
        return real(r, n, d, extra)

    monkeypatch.setattr(_fast, "truncation_tails", tails)
    runs = {}
    for method in ("auto", "direct"):
        cfg = write(tmp_path, PEAKED + f'[velocity]\nmethod = "{method}"\n', f"{method}.toml")
        out = tmp_path / method
        assert main(["run", str(cfg), "--output", str(out), "--no-progress"]) == 0
        runs[method] = (out / "diagnostics.csv").read_text()
        err = capsys.readouterr().err
        if method == "auto":
            lines = [ln for ln in err.splitlines() if ln.startswith("warning: auto:")]
            assert len(lines) == 1 and "using the direct sum" in lines[0], err
    assert runs["auto"] == runs["direct"]
