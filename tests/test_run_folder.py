"""Trustworthy runs: resume only what continues exactly, output folders that never mix two
runs, a manifest written last, and no rank left waiting when another one fails."""

import json
import textwrap

import numpy as np
import pytest
from mpi4py import MPI

import solver
from solver import transport as _transport
from solver.cli import main

COMM = MPI.COMM_WORLD

CONFIG = """
[mesh]
sphere = 2
refinement = 3
[model]
Q = [[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]]
[initial]
kind = "vmf"
centre = [1.0, 0.0, 0.0]
kappa = {kappa}
[perturbation]
kind = "tied"
dV = [[0.0, 0.0, 0.0], [0.0, -0.3, 0.0], [0.0, 0.0, 0.0]]
[time]
T = 0.3
save_every = 0.1
[velocity]
method = "auto"
"""


def config(tmp_path, kappa=4.0, name="c.toml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(CONFIG.format(kappa=kappa)))
    return p


def crash_after(monkeypatch, n):
    """Make the n-th SSP-RK3 step raise (a killed run)."""
    calls = {"n": 0}
    real = _transport.Transport.step

    def step(self, rho, t, dt, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > n:
            raise KeyboardInterrupt("killed")
        return real(self, rho, t, dt, *args, **kwargs)

    monkeypatch.setattr(_transport.Transport, "step", step)
    return real


@pytest.mark.serial
def test_resume_with_the_fast_method_is_bit_for_bit(tmp_path, monkeypatch, capsys):
    """The default velocity method (auto: the fast expansion here) resumes bit for bit, and
    the VTX series holds every saved time after the restart."""
    cfg = config(tmp_path)
    assert main(["run", str(cfg), "--output", str(tmp_path / "ref"), "--no-progress"]) == 0
    steps = len(solver.read_csv(tmp_path / "ref" / "diagnostics.csv")["t"]) - 1
    real = crash_after(monkeypatch, steps)  # two flows: halfway, past the first saves
    with pytest.raises(KeyboardInterrupt):
        main(["run", str(cfg), "--output", str(tmp_path / "job"), "--no-progress"])
    job = tmp_path / "job"
    assert (job / "checkpoint.npz").is_file() and not (job / "manifest.json").exists()
    monkeypatch.setattr(_transport.Transport, "step", real)
    assert main(["run", str(cfg), "--output", str(job), "--resume", "--no-progress"]) == 0
    a, b = np.load(tmp_path / "ref" / "result.npz"), np.load(job / "result.npz")
    assert sorted(a.files) == sorted(b.files)
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert (tmp_path / "ref" / "diagnostics.csv").read_text() == (
        job / "diagnostics.csv"
    ).read_text()
    if __import__("dolfinx").io.has_adios2:
        pytest.importorskip("adios2")
        ref, got = (
            solver.read_vtx(tmp_path / "ref" / "density.bp"),
            solver.read_vtx(job / "density.bp"),
        )
        np.testing.assert_allclose(got["times"], ref["times"])
        np.testing.assert_allclose(got["times"], a["times"])


@pytest.mark.serial
def test_resume_with_another_config_is_refused(tmp_path, monkeypatch, capsys):
    cfg = config(tmp_path)
    assert main(["run", str(cfg), "--output", str(tmp_path / "job"), "--no-progress"]) == 0
    other = config(tmp_path, kappa=5.0, name="other.toml")  # same step times, other density
    capsys.readouterr()
    code = main(["run", str(other), "--output", str(tmp_path / "job"), "--resume"])
    assert code == 2
    err = capsys.readouterr().err
    assert "initial" in err and "--resume" in err and "base" not in err


@pytest.mark.serial
def test_folder_of_another_run_is_refused_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", str(config(tmp_path)), "--output", str(out), "--no-progress"]) == 0
    assert (out / "w2.csv").is_file()
    man = json.loads((out / "manifest.json").read_text())
    assert man["complete"] and {"result.npz", "diagnostics.csv", "w2.csv"} <= set(man["files"])
    assert "result.npz, diagnostics.csv, w2.csv" in capsys.readouterr().out  # the files written
    # a different run (no perturbation: it writes no w2.csv) into the same folder
    plain = tmp_path / "plain.toml"
    text = CONFIG.format(kappa=4.0)
    plain.write_text(
        textwrap.dedent(text[: text.index("[perturbation]")] + text[text.index("[time]") :])
    )
    assert main(["run", str(plain), "--output", str(out), "--no-progress"]) == 2
    assert "holds another run" in capsys.readouterr().err
    (out / ".result.npz.12345.tmp").write_bytes(b"junk")  # left by a killed atomic write
    assert main(["run", str(plain), "--output", str(out), "--overwrite", "--no-progress"]) == 0
    assert not (out / "w2.csv").exists()  # no stale file of the old run
    assert not list(out.glob(".*.tmp"))
    assert "density_perturbed" not in np.load(out / "result.npz").files
    # the same run again is not "another run"
    assert main(["run", str(plain), "--output", str(out), "--no-progress"]) == 0


@pytest.mark.serial
def test_output_path_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["run", str(config(tmp_path)), "--output", str(f)]) == 2
    assert "is an existing file" in capsys.readouterr().err


@pytest.mark.mpi
def test_two_ranks_unwritable_output_exit_nonzero(tmp_path, run):
    """The output check fails on rank 0 alone; both ranks end with the message, no hang."""
    f = tmp_path / "file"
    f.write_text("x")
    p = run(["-m", "solver", "run", str(config(tmp_path)), "--output", str(f / "sub")], 2,
            timeout=120)  # fmt: skip
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("not a writable folder") == 1  # rank 0 alone prints


ONE_RANK_FAILS = """
from mpi4py import MPI
from solver.cli import _fail
comm = MPI.COMM_WORLD
err = comm.Dup()
if comm.rank == 0:
    _fail(comm, err, 3, "error: rank 0 alone failed")
comm.barrier()  # rank 1 waits here for rank 0, which never comes
"""


@pytest.mark.mpi
def test_an_error_on_one_rank_ends_every_rank(tmp_path, run):
    script = tmp_path / "fail.py"
    script.write_text(ONE_RANK_FAILS)
    p = run([str(script)], 2, timeout=120)
    assert p.returncode == 3, (p.returncode, p.stderr)
    assert "[rank 0] error: rank 0 alone failed" in p.stderr


@pytest.mark.serial
@pytest.mark.parametrize(
    "bad,phrase", [(np.nan, "NaN"), (-1.0, "negative cell average"), (None, "mass drifted")]
)
def test_a_run_that_breaks_down_exits_1(tmp_path, monkeypatch, capsys, bad, phrase):
    """The README's promise: a density that becomes NaN, negative or loses mass stops the run with
    exit code 1 (the state is corrupted after the first step, as a broken scheme would)."""
    real = _transport.Transport.step

    def broken(self, rho, t, dt, *args, **kwargs):
        out = real(self, rho, t, dt, *args, **kwargs)
        if bad is None:
            return 0.9 * out  # lost mass
        out[0] = bad
        return out

    monkeypatch.setattr(_transport.Transport, "step", broken)
    code = main(["run", str(config(tmp_path)), "--output", str(tmp_path / "o"), "--no-progress"])
    assert code == 1
    err = capsys.readouterr().err
    assert "run stopped" in err and phrase in err
    assert not (tmp_path / "o" / "manifest.json").exists()  # not a complete run
