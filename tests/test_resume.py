"""A killed run resumes from its checkpoint and ends with the same results."""

import numpy as np
from mpi4py import MPI

import solver
from solver import transport as _transport


def run(out, resume=False):
    sm = solver.sphere_mesh(MPI.COMM_WORLD, 1, cells=48)
    base = solver.Model(2 * np.eye(2), np.eye(2), np.eye(2))
    pert = base.perturbed(solver.RandomLoRA(d=2, eta=0.6, h=0.15, seed=2))
    init = solver.VonMisesFisher((0.0, 1.0), 2.0)
    return solver.evolve(sm, base, init, 0.6, perturbed=pert, save_every=0.2, output=out,
                         resume=resume, progress=False)  # fmt: skip


def test_resume_after_crash_gives_identical_results(tmp_path, monkeypatch):
    ref = run(tmp_path / "ref")
    calls = {"n": 0}
    real_step = _transport.Transport.step

    def crashing_step(self, rho, t, dt, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > len(ref.step_times):  # halfway (two flows): past t = 0.2, before the end
            raise KeyboardInterrupt("killed")
        return real_step(self, rho, t, dt, *args, **kwargs)

    monkeypatch.setattr(_transport.Transport, "step", crashing_step)
    try:
        run(tmp_path / "job")
    except KeyboardInterrupt:
        pass
    assert (tmp_path / "job" / "checkpoint.npz").is_file()
    assert not (tmp_path / "job" / "result.npz").exists()  # nothing half-written
    assert not list((tmp_path / "job").glob(".*.tmp"))
    monkeypatch.setattr(_transport.Transport, "step", real_step)
    with np.load(tmp_path / "job" / "checkpoint.npz") as z:
        assert 0 < float(z["t"]) < ref.step_times[-1]
    res = run(tmp_path / "job", resume=True)
    a, b = np.load(tmp_path / "ref" / "result.npz"), np.load(tmp_path / "job" / "result.npz")
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k])
    np.testing.assert_array_equal(ref.diagnostics, res.diagnostics)
