"""Trustworthy runs: resume only what continues exactly, output folders that never mix two
runs, a manifest written last, and no rank left waiting when another one fails."""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from conftest import ROOT, mpiexec
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


def signal_after(monkeypatch, n, signum=signal.SIGINT):
    """Deliver ``signum`` to this process during the n-th SSP-RK3 step (Ctrl-C mid-run)."""
    calls = {"n": 0}
    real = _transport.Transport.step

    def step(self, rho, t, dt, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            signal.raise_signal(signum)
        return real(self, rho, t, dt, *args, **kwargs)

    monkeypatch.setattr(_transport.Transport, "step", step)
    return real


@pytest.mark.serial
def test_ctrl_c_checkpoints_the_step_and_resume_is_bit_for_bit(tmp_path, monkeypatch, capsys):
    """Ctrl-C mid-run: the run stops after that step with a checkpoint of it (not of the last
    saved time), one line and exit 130; ``--resume`` then ends bit for bit as an uninterrupted
    run, the default velocity method (auto: the fast expansion here) included, and the VTX
    series holds every saved time after the restart."""
    cfg = config(tmp_path)
    assert main(["run", str(cfg), "--output", str(tmp_path / "ref"), "--no-progress"]) == 0
    ref_t = solver.read_csv(tmp_path / "ref" / "diagnostics.csv")["t"]
    saves = np.load(tmp_path / "ref" / "result.npz")["times"]
    # the first step past halfway that ends between saved times (two flows: two calls a step)
    k = next(k for k in range(len(ref_t) // 2, len(ref_t)) if ref_t[k] not in saves)
    real = signal_after(monkeypatch, 2 * k - 1)
    capsys.readouterr()
    job = tmp_path / "job"
    assert main(["run", str(cfg), "--output", str(job), "--no-progress"]) == 130
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(r"stopped at t = \S+; resume with --resume", err), err
    t_stop = float(err.split("t = ")[1].split(";")[0])
    with np.load(job / "checkpoint.npz") as z:
        t_ckpt = float(z["t"])
    assert f"{t_ckpt:.6g}" == f"{t_stop:.6g}"
    assert t_ckpt == ref_t[k]  # the step the signal came in, not the last saved time
    assert not json.loads((job / "manifest.json").read_text())["complete"]
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
            solver.read_vtx(job),  # the run's folder is enough
        )
        np.testing.assert_allclose(got["times"], ref["times"])
        np.testing.assert_allclose(got["times"], a["times"])


#: about 23,000 fixed steps: a run that is still going when the signal comes
LONG = """
[mesh]
sphere = 1
cells = 64
[model]
Q = [[4.0, 0.0], [0.0, 4.0]]
[perturbation]
kind = "tied"
dV = [[0.0, 0.0], [0.0, -0.3]]
[initial]
kind = "vmf"
centre = [1.0, 0.0]
kappa = 1.0
[time]
T = 1000.0
stepping = "fixed"
"""


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux /proc)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d))
    return out


@pytest.mark.mpi
@pytest.mark.parametrize("signum,target", [(signal.SIGINT, "mpiexec"),
                                           (signal.SIGTERM, "one rank")])  # fmt: skip
def test_a_signal_under_mpiexec_stops_every_rank(tmp_path, signum, target):
    """Ctrl-C to ``mpiexec -n 2`` (it forwards SIGINT to every rank), or SIGTERM to one rank
    only: every rank stops after the same step (no rank left in a collective call), the
    checkpoint of that step is written, rank 0 prints one line, the exit status is 128 +
    the signal. The timeout is the test of "no hang"."""
    cfg = tmp_path / "long.toml"
    cfg.write_text(LONG)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [mpiexec(), "-n", "2", sys.executable, "-m", "solver", "run", str(cfg), "-o",
           str(out), "--no-progress"]  # fmt: skip
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env, cwd=ROOT)  # fmt: skip
    try:
        end = time.monotonic() + 300
        while not (out / "checkpoint.npz").is_file():  # the time loop has started
            assert p.poll() is None and time.monotonic() < end, p.communicate()
            time.sleep(0.1)
        if target == "mpiexec":
            p.send_signal(signum)
        else:
            ranks = [c for proxy in _children(p.pid) for c in _children(proxy)]
            assert len(ranks) == 2, ranks
            os.kill(max(ranks), signum)
        stdout, stderr = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 128 + signum, stderr
    lines = [ln for ln in stderr.splitlines() if not ln.startswith("[mpiexec@")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    m = re.fullmatch(r"stopped at t = (\S+); resume with --resume", lines[0])
    assert m, stderr
    with np.load(out / "checkpoint.npz") as z:
        assert f"{float(z['t']):.6g}" == m.group(1) and int(z["ranks"]) == 2
    assert float(m.group(1)) > 0


def _loaded(pid: int, lib: str) -> bool:
    try:
        with open(f"/proc/{pid}/maps") as f:
            return lib in f.read()
    except OSError:
        return False


@pytest.mark.mpi
@pytest.mark.parametrize("lib", ["mpi4py/MPI.", "libdolfinx"])
def test_ctrl_c_while_starting_up_under_mpiexec(tmp_path, lib):
    """Ctrl-C to ``mpiexec -n 2`` as soon as both ranks have loaded MPI, while they import
    SciPy, DOLFINx and set up (before the time loop): one line, exit 130 on every rank, no
    traceback, nothing left waiting. Without :mod:`solver._startup` holding the signal, a
    rank left while the other waited in ``MPI_Init`` (hang), printed a traceback from inside
    an import, or was ended by SIGINT (CPython's ``exit_sigint`` after a KeyboardInterrupt in
    ``exec``'d import code: status 2 from mpiexec)."""
    cfg = tmp_path / "long.toml"
    cfg.write_text(LONG)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [mpiexec(), "-n", "2", sys.executable, "-m", "solver", "run", str(cfg), "-o",
           str(out), "--no-progress"]  # fmt: skip
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env, cwd=ROOT)  # fmt: skip
    try:
        end = time.monotonic() + 120
        while True:
            ranks = [c for proxy in _children(p.pid) for c in _children(proxy)]
            if len(ranks) == 2 and all(_loaded(r, lib) for r in ranks):
                break
            assert p.poll() is None and time.monotonic() < end, p.communicate()
            time.sleep(0.005)
        p.send_signal(signal.SIGINT)
        stdout, stderr = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 130, (stdout, stderr)
    lines = [ln for ln in stderr.splitlines() if not ln.startswith("[mpiexec@")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert re.fullmatch(r"stopped by SIGINT \(at once: outside the time loop.*resumes with "
                        r"--resume", lines[0]), stderr  # fmt: skip
    assert "BAD TERMINATION" not in stdout, stdout
    assert not (out / "checkpoint.npz").exists()  # it came before the time loop


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
import solver.parallel
from solver.cli import _fail
solver.parallel.FAIL_WAIT = 0.5  # rank 1 never fails: any wait ends the same way
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
    assert not json.loads((tmp_path / "o" / "manifest.json").read_text())["complete"]


SMALL = """
[mesh]
sphere = 1
cells = 32
[model]
V = [[1.0, 0.0], [0.0, 1.0]]
[perturbation]
dV = [[0.0, 0.0], [0.0, -0.3]]
[initial]
kind = "vmf"
centre = [1.0, 0.0]
kappa = 2.0
[time]
T = 0.2
save_every = 0.1
"""


@pytest.mark.serial
def test_overwrite_never_deletes_the_users_config(tmp_path, capsys):
    """``run proj/config.toml --output proj [--overwrite]`` is refused: the run would replace
    the user's config.toml (comments and all), which no run's manifest lists."""
    proj = tmp_path / "proj"
    proj.mkdir()
    cfg = proj / "config.toml"
    text = "# my notes, kept\n" + SMALL
    cfg.write_text(text)
    for extra in ([], ["--overwrite"]):
        assert main(["run", str(cfg), "--output", str(proj), "--no-progress", *extra]) == 2
        err = capsys.readouterr().err
        assert "config.toml" in err and "manifest" in err, err
        assert cfg.read_text() == text
        assert sorted(p.name for p in proj.iterdir()) == ["config.toml"]  # nothing written
    # a folder holding a run: --overwrite deletes what its manifest lists, nothing else
    out = tmp_path / "out"
    assert main(["run", str(cfg), "--output", str(out), "--no-progress"]) == 0
    mine = out / "notes.txt"
    mine.write_text("mine")
    assert main(["run", str(cfg), "--output", str(out), "--no-progress", "--overwrite"]) == 0
    assert mine.read_text() == "mine"


@pytest.mark.serial
@pytest.mark.parametrize("value", ["", " "])
def test_empty_output_is_refused(tmp_path, capsys, monkeypatch, value):
    """``--output ''`` used to write the whole run into the current folder."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(SMALL)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["run", str(cfg), "--output", value, "--no-progress"])
    assert e.value.code == 2
    assert "--output" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.toml"]
    with pytest.raises(ValueError, match="output"):
        solver.evolve(solver.sphere_mesh(COMM, 1, cells=8), solver.Model(np.eye(2), np.eye(2),
                      np.eye(2)), solver.Uniform(), 0.1, output=value, progress=False)  # fmt: skip


#: (TOML line added, phrase of the refusal): each changes an output of the run
CHANGES = [
    ("[time]\ncfl = 0.8", "cfl (0.9 before, 0.8 now)"),
    ("[clusters]\ndelta = 0.5", "clusters (delta=0.1 tol=0.01 before, delta=0.5 tol=0.01 now)"),
    ("[output]\nw2 = false", "w2 (True before, False now)"),
    ("[output]\nvtx = false", "vtx (True before, False now)"),
    ("[velocity]\ntolerance = 1e-08", "velocity (auto tol=1e-10 before, auto tol=1e-08 now)"),
    ("[velocity]\nactive = 1e-12", "velocity (auto tol=1e-10 before, auto tol=1e-10 active=1e-12"),
    ('[time]\nstepping = "fixed"', "stepping"),
    ("[time]\nsave_every = 0.05", "time_grid"),
]


@pytest.mark.serial
def test_resume_refuses_every_changed_setting(tmp_path, capsys):
    """Resuming with a setting that changes any output (diagnostics, W2, VTX, saves, steps) is
    refused, naming it and its two values (it used to mix two runs' results, or crash)."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(SMALL)
    out = tmp_path / "out"
    assert main(["run", str(cfg), "--output", str(out), "--no-progress"]) == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    import tomllib

    from solver.io import dump_toml

    for patch, phrase in CHANGES:
        raw = tomllib.loads(SMALL)
        for sec, table in tomllib.loads(patch).items():
            raw.setdefault(sec, {}).update(table)
        other = tmp_path / "other.toml"
        other.write_text(dump_toml(raw))
        capsys.readouterr()
        assert main(["run", str(other), "--output", str(out), "--resume", "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert phrase in err and "--resume" in err, (patch, err)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # untouched
    # --resume --overwrite: the advice does not repeat --overwrite
    assert main(["run", str(other), "--output", str(out), "--resume", "--overwrite"]) == 2
    assert "run without --resume to replace it" in capsys.readouterr().err


@pytest.mark.mpi
def test_resume_on_another_rank_count_is_stated(tmp_path, run):
    cfg = tmp_path / "c.toml"
    cfg.write_text(SMALL)
    out = tmp_path / "out"
    p = run(["-m", "solver", "run", str(cfg), "--output", str(out), "--no-progress"])
    assert p.returncode == 0, p.stderr
    p = run(["-m", "solver", "run", str(cfg), "--output", str(out), "--resume", "--no-progress"],
            2, timeout=300)  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert p.stderr.count("warning: resuming on 2 rank(s) a checkpoint written on 1") == 1


FULL_DISK = """
import sys
import numpy as np
from mpi4py import MPI
import solver
from solver.io import FieldWriter
sm = solver.sphere_mesh(MPI.COMM_SELF, 2, refinement=3)
w = FieldWriter(sm, sys.argv[1], ["density"])
try:
    for k in range(50):
        w.write(float(k), [np.ones(sm.num_owned)])
    w.close()
except OSError as e:
    print("OSError:", e)
"""


@pytest.mark.serial
def test_a_full_disk_under_vtx_is_an_os_error_not_an_abort(tmp_path, run):
    """ADIOS2 on a full disk (its data file is /dev/full: every write fails with ENOSPC):
    the write raises OSError naming the series, without ANSI colours, and the process ends
    normally (it used to end in std::terminate, SIGABRT, exit 134, from the writer's
    destructor flushing again)."""
    from dolfinx.io import has_adios2

    if not has_adios2 or not os.path.exists("/dev/full"):
        pytest.skip("needs DOLFINx with ADIOS2 and /dev/full")
    (tmp_path / "density.bp").mkdir()
    (tmp_path / "density.bp" / "data.0").symlink_to("/dev/full")
    script = tmp_path / "full.py"
    script.write_text(FULL_DISK)
    p = run([str(script), str(tmp_path / "density")])
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    assert "OSError: cannot write the VTX series" in p.stdout and "No space left" in p.stdout
    assert "\x1b[" not in out and "terminate" not in out, out
