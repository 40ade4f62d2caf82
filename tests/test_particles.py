"""Particles vs PDE: the particle mean matches the PDE first moment within Monte Carlo error."""

import numpy as np
import pytest
from mpi4py import MPI

import solver

COMM = MPI.COMM_WORLD


def pde_moments(sm, model, init, T, save_every):
    res = solver.evolve(sm, model, init, T, save_every=save_every, cfl=0.8, progress=False)
    cols = [c for c in res.columns if c.startswith("moment_")]
    idx = np.searchsorted(res.step_times, res.times)
    return np.column_stack([res.column(c)[idx] for c in cols])


@pytest.mark.parametrize(
    "sphere,kw,Q,V,n",
    [
        # uniform attention (Q = K = 0) with a non-normal V on S^2, n = 1e4 (O(n) velocity)
        (2, {"refinement": 4}, np.zeros((3, 3)), [[1.0, 0.5, 0.0], [0.0, 0.6, 0.0], [0.2, 0, 0.3]],
         10_000),
        # genuine softmax attention on S^1, n = 2000
        (1, {"cells": 400}, 2.0 * np.eye(2), [[1.0, 0.3], [0.0, 0.5]], 2_000),
    ],
)  # fmt: skip
def test_particle_mean_matches_pde_moment(sphere, kw, Q, V, n):
    d = sphere + 1
    sm = solver.sphere_mesh(COMM, sphere, **kw)
    model = solver.Model(Q, np.eye(d), V)
    init = solver.VonMisesFisher(tuple(solver.normalize(np.arange(1.0, d + 1))), 1.5)
    T, save = 1.0, 0.5
    m_pde = pde_moments(sm, model, init, T, save)
    x0 = solver.sample_particles(init, n, d, seed=11)
    r = solver.simulate_particles(model, x0, T, dt=0.02, save_every=save)
    m_p = r.mean()
    # standard error of an n-sample mean, |.|_2 over coordinates, at each saved time
    se = np.sqrt(r.positions.var(axis=1).sum(axis=1) / n)
    err = np.linalg.norm(m_p - m_pde, axis=1)
    print(f"S^{sphere}: |m_particles - m_pde| = {err}, standard error {se}")
    assert np.all(err <= 4 * se)
    # the moment really moved (the test is not comparing two constants)
    assert np.linalg.norm(m_pde[-1] - m_pde[0]) > 10 * se[-1]


# ------------------------------------------------------------------------------------------
# geometry="euclidean": z_i' = Σ_j P_ij V (z_j − z_i), P_ij = softmax_j(z_jᵀ A z_i)
# ------------------------------------------------------------------------------------------


def test_euclidean_two_particles_uniform_attention_closed_form():
    """Q = K = 0: P_ij = 1/2, so z1' = V (z2 − z1)/2 = −z2'. The mean m is constant and
    w = z1 − z2 obeys w' = −V w: z_{1,2}(t) = m ± e^{−tV} w0 / 2 (V non-normal here)."""
    from scipy.linalg import expm

    V = np.array([[1.0, 0.7], [-0.2, 0.4]])
    z0 = np.array([[1.5, -0.3], [-0.2, 0.9]])
    model = solver.Model(np.zeros((2, 2)), np.zeros((2, 2)), V)
    T, dt = 3.0, 0.01
    r = solver.simulate_particles(model, z0, T, dt=dt, save_every=1.0, geometry="euclidean")
    m, w0 = z0.mean(0), z0[0] - z0[1]
    for t, z in zip(r.times, r.positions, strict=True):
        half = 0.5 * expm(-t * V) @ w0
        exact = np.array([m + half, m - half])
        # RK4 on a linear system: one-step error ≤ (h‖V‖)^5 e^{h‖V‖}/120 |w|, propagated by
        # at most e^{t‖V‖}: global ≤ (t/h) (h‖V‖)^5/120 e^{(t+h)‖V‖} |w0|/2 (+ round-off)
        v = np.linalg.norm(V, 2)
        tol = t / dt * (dt * v) ** 5 / 120 * np.exp((t + dt) * v) * np.linalg.norm(w0) / 2
        tol += 1e-14
        assert np.abs(z - exact).max() <= tol, (t, np.abs(z - exact).max(), tol)
    assert np.linalg.norm(r.positions[-1, 0] - z0[0]) > 0.5  # it moved


def test_euclidean_three_particles_match_solve_ivp():
    """Softmax attention, n = 3, d = 2, non-symmetric A and V: RK4 (dt = 0.005) against
    scipy's DOP853 at rtol = atol = 1e-12 with the velocity written out independently."""
    from scipy.integrate import solve_ivp

    Q = np.array([[1.2, 0.3], [-0.4, 0.8]])
    K = np.array([[0.9, 0.0], [0.5, 1.1]])
    V = np.array([[1.0, 0.2], [0.0, 0.6]])
    z0 = np.array([[0.8, -0.5], [-0.6, 0.3], [0.1, 0.9]])

    def rhs(_t, flat):
        z = flat.reshape(3, 2)
        out = np.zeros_like(z)
        for i in range(3):
            s = np.array([(Q @ z[i]) @ (K @ z[j]) for j in range(3)])
            p = np.exp(s - s.max())
            p /= p.sum()
            out[i] = sum(p[j] * V @ (z[j] - z[i]) for j in range(3))
        return out.ravel()

    T = 4.0
    ref = solve_ivp(rhs, (0, T), z0.ravel(), method="DOP853", rtol=1e-12, atol=1e-12,
                    t_eval=[1.0, 2.0, 3.0, 4.0])  # fmt: skip
    r = solver.simulate_particles(solver.Model(Q, K, V), z0, T, dt=0.005, save_every=1.0,
                                  geometry="euclidean")  # fmt: skip
    err = np.abs(r.positions[1:].reshape(4, -1) - ref.y.T).max()
    # RK4 global error ~ C dt^4 with C = O(T L^5) and L ≈ ‖V‖(1 + 2‖A‖ diam) < 5: ≤ 1e-6 here
    assert err < 1e-6, err
    assert np.abs(ref.y[:, -1] - z0.ravel()).max() > 0.1  # it moved


def test_geometry_is_checked_and_sphere_is_the_default():
    model = solver.Model(np.eye(2), np.eye(2), np.eye(2))
    off = np.array([[2.0, 0.0], [0.0, 0.5]])
    with pytest.raises(ValueError, match="geometry='euclidean'"):
        solver.simulate_particles(model, off, 0.1)
    with pytest.raises(ValueError, match="geometry must be one of"):
        solver.simulate_particles(model, off, 0.1, geometry="flat")
    r = solver.simulate_particles(model, off, 0.1, dt=0.05, geometry="euclidean")
    assert np.all(np.isfinite(r.positions))


def test_euclidean_rescaled_matches_solve_ivp():
    """geometry='euclidean-rescaled' (the authors' code): P_ij ∝ exp(<Q e^{tV} z_i, K e^{tV} z_j>),
    n = 3, d = 2, against DOP853 (rtol = atol = 1e-12) with expm written out; T = 3 keeps the
    softmax smooth (logits ≤ e^{2t} |z|²), RK4 with dt = 0.002 is then ≤ 1e-6 off."""
    from scipy.integrate import solve_ivp
    from scipy.linalg import expm

    Q, K, V = np.eye(2), np.array([[1.0, 0.2], [0.0, 0.8]]), np.diag([1.0, 0.9])
    z0 = np.array([[0.3, -0.2], [-0.25, 0.1], [0.05, 0.3]])

    def rhs(t, flat):
        z = flat.reshape(3, 2)
        E = expm(t * V)
        out = np.zeros_like(z)
        for i in range(3):
            s = np.array([(Q @ E @ z[i]) @ (K @ E @ z[j]) for j in range(3)])
            p = np.exp(s - s.max())
            p /= p.sum()
            out[i] = sum(p[j] * V @ (z[j] - z[i]) for j in range(3))
        return out.ravel()

    T = 3.0
    ref = solve_ivp(rhs, (0, T), z0.ravel(), method="DOP853", rtol=1e-12, atol=1e-12,
                    t_eval=[1.0, 2.0, 3.0])  # fmt: skip
    r = solver.simulate_particles(solver.Model(Q, K, V), z0, T, dt=0.002, save_every=1.0,
                                  geometry="euclidean-rescaled")  # fmt: skip
    err = np.abs(r.positions[1:].reshape(3, -1) - ref.y.T).max()
    assert err < 1e-6, err
    static = solver.simulate_particles(solver.Model(Q, K, V), z0, T, dt=0.002, save_every=1.0,
                                       geometry="euclidean")  # fmt: skip
    assert np.abs(static.positions[-1] - r.positions[-1]).max() > 1e-3  # the rescaling matters


# ------------------------------------------------------------------------------------------
# velocity="fast": the error-controlled expansion (S^1, S^2) against the direct sum
# ------------------------------------------------------------------------------------------


def fast_model(d: int) -> solver.Model:
    """General (non-symmetric) A = Kᵀ Q and non-normal V."""
    Q = np.array([[1.2, 0.3, 0.0], [-0.2, 0.9, 0.4], [0.1, 0.0, 1.1]])[:d, :d]
    V = np.array([[1.0, 0.3, 0.0], [0.0, 0.7, 0.2], [0.1, 0.0, 0.5]])[:d, :d]
    return solver.Model(Q, np.eye(d), V)


@pytest.mark.parametrize("d", [2, 3])
def test_fast_and_direct_trajectories_agree(d):
    """Positions after T from the fast and the direct velocity differ by at most the
    propagated velocity tolerance.

    Every fast evaluation meets ``|X̃_i − X_i| <= tol · scale / 2`` with ``scale <= ‖V‖``
    (``|X| <= |V m| <= ‖V‖``; the round-off floor of the scale is below ``‖V‖`` for ``tol >=
    1e-11``), so each RK stage is off by ``ε = tol ‖V‖ / 2``. The particle field ``F_i =
    P_{x_i} m_i``, ``m_i = Σ_j p_ij V x_j``, ``p_ij ∝ e^{x_jᵀ A x_i}``, is Lipschitz in
    ``max_k |x_k|`` with ``L = ‖V‖ (3 + 3‖A‖)``: ``2‖V‖`` from the projection, ``‖V‖ ‖A‖``
    from the logits' dependence on ``x_i`` (a covariance of ``V x_j`` and ``Aᵀ x_j`` under
    ``p_i.``), ``Σ_k p_ik ‖V‖ (1 + 2‖A‖)`` from the sources ``x_k``. One RK4 step is then
    Lipschitz with ``e^{hL}`` and its increment is off by at most ``ε (e^{hL} − 1)/(hL)``, the
    retraction onto the sphere is 1-Lipschitz (radial projection of points outside the ball,
    up to ``O(h³)``), so by the discrete Gronwall lemma the positions differ by at most
    ``ε' (e^{L'T} − 1) / L'`` with ``ε' = ε c``, ``L' = L c``, ``c = (e^{hL} − 1)/(hL)``;
    a factor 2 covers the ``O(h³)`` of the retraction."""
    model = fast_model(d)
    A, V = model.parameters(0.0)
    x0 = solver.sample_particles(solver.Uniform(), 300, d, seed=5)
    T, dt, tol = 1.0, 0.05, 1e-8
    kw = {"dt": dt, "save_every": 0.5}
    rf = solver.simulate_particles(model, x0, T, velocity="fast", tolerance=tol, **kw)
    rd = solver.simulate_particles(model, x0, T, velocity="direct", **kw)
    info = rf.velocity
    steps = round(T / dt)
    assert info["method"] == "fast" and info["fast_calls"] == info["calls"] == 4 * steps, info
    assert info["max_bound"] <= tol, info
    assert rd.velocity == {"method": "direct"}
    nV, nA = np.linalg.norm(V, 2), np.linalg.norm(A, 2)
    L = nV * (3 + 3 * nA)
    c = np.expm1(dt * L) / (dt * L)
    eps = tol * nV / 2
    bound = 2 * eps * c * np.expm1(c * L * T) / (c * L)
    diff = np.linalg.norm(rf.positions - rd.positions, axis=-1).max()
    print(f"S^{d - 1}: |x_fast - x_direct| = {diff:.2e} <= {bound:.2e}; {info}")
    assert diff <= bound
    moved = np.linalg.norm(rd.positions[-1] - x0, axis=1).max()
    assert moved > 100 * bound  # the test compares trajectories that moved
    assert np.abs(np.linalg.norm(rf.positions, axis=-1) - 1).max() < 1e-14


FAST_RANKS = """
import numpy as np, sys
from mpi4py import MPI
import solver
from test_particles import fast_model
d = int(sys.argv[2])
x0 = solver.sample_particles(solver.Uniform(), 301, d, seed=1)
r = solver.simulate_particles(fast_model(d), x0, 0.5, dt=0.05, comm=MPI.COMM_WORLD,
                              velocity="fast")
assert r.velocity["method"] == "fast" and r.velocity["fast_calls"] == 40, r.velocity
if MPI.COMM_WORLD.rank == 0:
    np.save(sys.argv[1], r.positions)
"""


@pytest.mark.mpi
@pytest.mark.parametrize("d", [2, 3])
def test_fast_particles_rank_independent(tmp_path, run, d):
    """301 particles in uneven blocks over 2 ranks: the expansion's moments are summed in
    fixed chunks (rank-independent order), every target is evaluated alone: the same
    positions as on one rank to round-off of the per-target products."""
    from pathlib import Path

    script = tmp_path / "p.py"
    script.write_text(f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
                      + FAST_RANKS)  # fmt: skip
    for n in (1, 2):
        p = run([str(script), str(tmp_path / f"x{n}.npy"), str(d)], n)
        assert p.returncode == 0, p.stderr
    a, b = np.load(tmp_path / "x1.npy"), np.load(tmp_path / "x2.npy")
    assert np.abs(a - b).max() <= 1e-12
    assert np.abs(a[-1] - a[0]).max() > 1e-2  # it moved


def test_velocity_option_is_checked_and_auto_picks_by_size():
    m2 = fast_model(2)
    x = solver.sample_particles(solver.Uniform(), 10, 2, seed=0)
    with pytest.raises(ValueError, match="velocity must be one of"):
        solver.simulate_particles(m2, x, 0.1, velocity="fmm")
    with pytest.raises(ValueError, match="tolerance"):
        solver.simulate_particles(m2, x, 0.1, velocity="fast", tolerance=0.0)
    with pytest.raises(ValueError, match="velocity='fast' needs geometry='sphere'"):
        solver.simulate_particles(m2, x, 0.1, velocity="fast", geometry="euclidean")
    m4 = solver.Model(np.eye(4), np.eye(4), np.eye(4))
    x4 = solver.sample_particles(solver.Uniform(), 10, 4, seed=0)
    with pytest.raises(ValueError, match="velocity='fast' needs .* d = 2 or 3.*d = 4"):
        solver.simulate_particles(m4, x4, 0.1, velocity="fast")
    assert solver.simulate_particles(m4, x4, 0.1).velocity["method"] == "direct"  # auto
    # auto: the direct sum below FAST_MIN_N (bit for bit), the expansion from it on
    from solver.particles import FAST_MIN_N

    n = FAST_MIN_N[2]
    for size, method in ((n - 1, "direct"), (n, "fast")):
        x = solver.sample_particles(solver.Uniform(), size, 2, seed=0)
        r = solver.simulate_particles(m2, x, 0.1, dt=0.1)
        assert r.velocity["method"] == method
        if method == "direct":
            rd = solver.simulate_particles(m2, x, 0.1, dt=0.1, velocity="direct")
            np.testing.assert_array_equal(r.positions, rd.positions)


def test_compiled_steps_are_the_python_steps(monkeypatch):
    """A serial run on the sphere takes each RK4 step in one compiled call; the same stages
    and update as the Python loop (which ranks > 1 and runs without numba take), so the
    trajectories agree to round-off over a run that clusters (Lipschitz growth ≲ e^{LT} of
    the per-step round-off)."""
    import solver.particles as sp

    if sp._nb is None:  # pragma: no cover - depends on the environment
        pytest.skip("numba is not installed")
    for d in (2, 3, 5):
        m = solver.Model(np.eye(d) * 2, np.eye(d), np.diag(np.linspace(1.0, 0.4, d)),
                         solver.RandomLoRA(d=d, eta=0.5, h=0.1, seed=3))  # fmt: skip
        x0 = solver.sample_particles(solver.Uniform(), 40, d, seed=1)
        a = solver.simulate_particles(m, x0, 3.0, dt=0.05, save_every=0.5)
        with monkeypatch.context() as mp:
            mp.setattr(sp, "_nb", None)
            b = solver.simulate_particles(m, x0, 3.0, dt=0.05, save_every=0.5)
        np.testing.assert_array_equal(a.times, b.times)
        assert np.abs(a.positions - b.positions).max() <= 1e-12
        assert np.abs(a.positions[-1] - x0).max() > 0.1  # it moved
        assert np.abs(np.linalg.norm(a.positions, axis=-1) - 1).max() < 1e-14
