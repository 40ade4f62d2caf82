"""1 rank and 2 ranks give the same answer (runs ``mpiexec -n 2`` itself)."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import ROOT, mpiexec

pytestmark = pytest.mark.mpi

CONFIGS = {
    "S2": """
        [mesh]
        sphere = 2
        refinement = 2
        [model]
        Q = [[2.0, 0.5, 0.0], [0.0, 1.0, 0.0], [0.3, 0.0, 1.5]]
        V = [[1.0, 0.2, 0.0], [0.0, 0.8, 0.1], [0.0, 0.0, 0.6]]
        [perturbation]
        kind = "random"
        eta = 0.8
        layer_length = 0.1
        s = [1.0, 0.5]
        on = "both"
        [initial]
        kind = "mixture"
        weights = [0.7, 0.3]
        components = [{ kind = "vmf", centre = [1.0, 0.0, 0.0], kappa = 4.0 },
                      { kind = "expression", expression = "1 + z**2" }]
        [time]
        T = 0.5
        save_every = 0.25
        """,
    "S1": """
        [mesh]
        sphere = 1
        cells = 101
        [model]
        Q = [[3.0, 0.0], [1.0, 3.0]]
        V = [[1.0, 0.0], [0.0, 0.5]]
        [perturbation]
        kind = "tied"
        dV = [[0.0, 0.0], [0.0, -0.3]]
        [initial]
        kind = "expression"
        expression = "exp(2*cos(3*theta))"
        [time]
        T = 1.0
        save_every = 0.5
        """,
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_one_and_two_ranks_agree(tmp_path, run, name):
    cfg = tmp_path / "c.toml"
    cfg.write_text(textwrap.dedent(CONFIGS[name]))
    outs = {}
    for n in (1, 2):
        out = tmp_path / f"out{n}"
        p = run(["-m", "solver", "run", str(cfg), "--output", str(out), "--no-progress"], n)
        assert p.returncode == 0, p.stderr
        assert p.stdout.count("done:") == 1  # rank 0 alone prints
        outs[n] = np.load(out / "result.npz")
    a, b = outs[1], outs[2]
    assert a.files == b.files and "density_perturbed" in a.files
    for k in a.files:
        assert a[k].shape == b[k].shape
        assert np.array_equal(np.isnan(a[k]), np.isnan(b[k])), k  # t_enter_exit may be nan
        x, y = np.nan_to_num(a[k]), np.nan_to_num(b[k])
        scale = max(1.0, np.abs(x).max())
        assert np.abs(x - y).max() <= 1e-12 * scale, k
    d1 = np.loadtxt(tmp_path / "out1" / "diagnostics.csv", delimiter=",", skiprows=1)
    d2 = np.loadtxt(tmp_path / "out2" / "diagnostics.csv", delimiter=",", skiprows=1)
    assert np.abs(d1 - d2).max() <= 1e-12


PARTICLES = """
import numpy as np, sys
from mpi4py import MPI
import solver
m = solver.Model(np.eye(4) * 2, np.eye(4), np.diag([1.0, 0.7, 0.5, 0.2]),
                 solver.RandomLoRA(d=4, eta=0.5, h=0.1, seed=3))
x0 = solver.sample_particles(solver.Uniform(), 301, 4, seed=1)
r = solver.simulate_particles(m, x0, 0.5, dt=0.05, comm=MPI.COMM_WORLD)
if MPI.COMM_WORLD.rank == 0:
    np.save(sys.argv[1], r.positions)
"""


def test_particles_rank_independent(tmp_path, run):
    script = tmp_path / "p.py"
    script.write_text(PARTICLES)
    for n in (1, 2):
        p = run([str(script), str(tmp_path / f"x{n}.npy")], n)
        assert p.returncode == 0, p.stderr
    a, b = np.load(tmp_path / "x1.npy"), np.load(tmp_path / "x2.npy")
    assert np.abs(np.linalg.norm(a, axis=-1) - 1).max() < 1e-14
    assert np.abs(a - b).max() <= 1e-12


THREADS = """
import json, sys
from mpi4py import MPI
from threadpoolctl import threadpool_info
from solver.parallel import share_cores, threads_per_rank

def blas():
    return sorted({p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"})

before = blas()
n = share_cores(MPI.COMM_WORLD)
alone = threads_per_rank(MPI.COMM_SELF)  # a rank computing on its own shares the node too
out = MPI.COMM_WORLD.gather({"before": before, "after": blas(), "n": n, "self": alone}, root=0)
if MPI.COMM_WORLD.rank == 0:
    json.dump(out, open(sys.argv[1], "w"))
"""


def test_ranks_share_the_cores(tmp_path):
    """Under mpiexec each rank's BLAS gets cores / ranks threads (idle BLAS workers spin), and
    so does a rank that computes on ``COMM_SELF`` (the cases of a sweep, side by side)."""
    script = tmp_path / "t.py"
    script.write_text(THREADS)
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    env["PYTHONPATH"] = str(ROOT)
    cores = len(os.sched_getaffinity(0))
    for n in (1, 2):
        cmd = [sys.executable, str(script), str(tmp_path / f"{n}.json")]
        p = subprocess.run([mpiexec(), "-n", str(n), *cmd], capture_output=True, text=True,
                           timeout=300, env=env)  # fmt: skip
        assert p.returncode == 0, p.stderr
        for rank in json.loads((tmp_path / f"{n}.json").read_text()):
            assert rank["n"] == rank["self"] == max(1, cores // n)
            if n == 1:  # one rank: nothing changed
                assert rank["after"] == rank["before"]
            else:
                assert rank["after"] == [max(1, cores // n)]


ABORT = """
from mpi4py import MPI
from solver.parallel import abort_on_error

abort_on_error()
comm = MPI.COMM_WORLD
if comm.rank == 0:
    raise RuntimeError("failed on rank 0 only")
comm.barrier()  # rank 1 waits here for ever unless the error ends every rank
"""


def test_an_error_on_one_rank_ends_every_rank(tmp_path, run):
    """A script's uncaught exception on rank 0 while rank 1 waits in a collective: with
    ``abort_on_error`` the job ends (non-zero status, the rank's traceback) instead of hanging
    until the subprocess timeout, which would fail this test."""
    script = tmp_path / "abort.py"
    script.write_text(ABORT)
    p = run([str(script)], nprocs=2, timeout=120)
    assert p.returncode != 0
    assert "[rank 0] uncaught RuntimeError" in p.stderr and "failed on rank 0 only" in p.stderr
