"""The fast (expansion) velocity against the direct sum, its fall-backs and MPI independence."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI
from scipy.special import eval_legendre, ive, spherical_in

from solver.velocity import (
    FastVelocity,
    NonlocalVelocity,
    attention_velocity,
    degree_weights,
    sphere_basis,
    truncation_tails,
)
from solver.velocity._harmonics import _degree_of_terms, _scaled_bessel
from solver.velocity._kernels import _nb

SELF = MPI.COMM_SELF


def fibonacci_sphere(n: int) -> np.ndarray:
    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    t = np.pi * (1 + 5**0.5) * i
    s = np.sqrt(1 - z * z)
    return np.c_[s * np.cos(t), s * np.sin(t), z]


def circle(n: int, shift: float = 0.0) -> np.ndarray:
    t = 2 * np.pi * (np.arange(n) + shift) / n
    return np.c_[np.cos(t), np.sin(t)]


def problem(d: int, seed: int = 0):
    """Targets, sources and smooth positive weights on S^1 (d = 2) or S^2 (d = 3)."""
    rng = np.random.default_rng(seed)
    if d == 3:
        x = fibonacci_sphere(300)
        y = fibonacci_sphere(640) @ np.linalg.qr(rng.normal(size=(3, 3)))[0]
        w = (1.3 + np.sin(3 * y[:, 0]) * np.cos(2 * y[:, 1])) / len(y)
    else:
        x, y = circle(200), circle(400, 0.5)
        w = (1.2 + np.cos(3 * np.arctan2(y[:, 1], y[:, 0]))) / len(y)
    return x, y, w


def matrix(d: int, norm: float, seed: int, kind: str = "general") -> np.ndarray:
    rng = np.random.default_rng(seed)
    M = rng.normal(size=(d, d))
    if kind == "symmetric":
        M = M + M.T
    return M * (norm / np.linalg.norm(M, 2))


def rel_error(X, Xd) -> float:
    return float(np.abs(X - Xd).max() / np.linalg.norm(Xd, axis=1).max())


def quiet_call(f, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return f(*args)


# ----------------------------------------------------------------------------- building blocks


def test_spherical_harmonics_addition_theorem():
    rng = np.random.default_rng(1)
    a, b = (p / np.linalg.norm(p, axis=1)[:, None] for p in rng.normal(size=(2, 6, 3)))
    a[0] = [0, 0, 1]  # a pole
    n = 30
    Ba, Bb, deg = sphere_basis(a, n), sphere_basis(b, n), _degree_of_terms(n, 3)
    for l in range(n + 1):
        s = (Ba[deg == l] * Bb[deg == l]).sum(axis=0)
        exact = (2 * l + 1) / (4 * np.pi) * eval_legendre(l, (a * b).sum(axis=1))
        np.testing.assert_allclose(s, exact, atol=1e-13 * (2 * l + 1))
    # orthonormality on a fine Fibonacci grid (quadrature error is tiny for degree <= 6)
    p = fibonacci_sphere(20000)
    G = sphere_basis(p, 6) @ sphere_basis(p, 6).T * (4 * np.pi / len(p))
    np.testing.assert_allclose(G, np.eye(49), atol=2e-3)


def test_fourier_basis():
    p = circle(7, 0.3)
    B = sphere_basis(p, 5)
    t = np.arctan2(p[:, 1], p[:, 0])
    np.testing.assert_allclose(B[0], 1.0)
    for k in range(1, 6):
        np.testing.assert_allclose(B[2 * k - 1], np.cos(k * t), atol=1e-14)
        np.testing.assert_allclose(B[2 * k], np.sin(k * t), atol=1e-14)


@pytest.mark.parametrize("d", [2, 3])
def test_scaled_bessel(d):
    r = np.array([0.0, 1e-6, 0.3, 2.0, 9.0, 35.0, 120.0])
    f = _scaled_bessel(r, 50, d)
    l = np.arange(51)[:, None]
    with np.errstate(all="ignore"):
        if d == 3:
            exact = np.sqrt(np.pi / (2 * r)) * ive(l + 0.5, r)
            exact[:, 0] = spherical_in(l[:, 0], 0.0)
        else:
            exact = ive(l, r)
    np.testing.assert_allclose(f, exact, rtol=1e-12, atol=1e-16)


@pytest.mark.parametrize("d", [2, 3])
def test_kernel_expansion_within_truncation_tail(d):
    """``|e^{<u,y> - r} - Σ_{l<=n}| <= τ_n(r)`` (plus round-off), and τ_n -> 0."""
    rng = np.random.default_rng(2)
    u = rng.normal(size=(40, d))
    u *= rng.uniform(0, 10, size=(40, 1)) / np.linalg.norm(u, axis=1)[:, None]
    y = rng.normal(size=(50, d))
    y /= np.linalg.norm(y, axis=1)[:, None]
    r = np.linalg.norm(u, axis=1)
    exact = np.exp(u @ y.T - r[:, None])
    tails = truncation_tails(r, 40, d)
    for n in (3, 10, 20, 40):
        b = degree_weights(r, n, d)
        phi = sphere_basis(u / r[:, None], n) * b[_degree_of_terms(n, d)]
        approx = phi.T @ sphere_basis(y, n)
        err = np.abs(approx - exact).max(axis=1)
        assert np.all(err <= tails[n] + 1e-14)
    assert tails[40].max() < 1e-15


# ----------------------------------------------------------------------------- fast vs direct

CASES = [
    # (d, ‖A‖, kind, tolerance)
    (3, 0.5, "general", 1e-10),
    (3, 3.0, "general", 1e-8),
    (3, 3.0, "symmetric", 1e-12),
    (3, 10.0, "general", 1e-8),
    (3, 10.0, "general", 1e-10),
    (3, 40.0, "general", 1e-8),
    (2, 1.0, "general", 1e-10),
    (2, 6.0, "symmetric", 1e-12),
    (2, 20.0, "general", 1e-8),
]


BACKENDS = ["numpy"] + (["numba"] if _nb is not None else [])


@pytest.mark.parametrize(
    "d,norm,kind,tol,backend",
    [c + (b,) for c in CASES for b in BACKENDS if c[0] == 3 or b == "numpy"],  # S^1: NumPy
)
def test_fast_matches_direct(d, norm, kind, tol, backend):
    x, y, w = problem(d, seed=3)
    A, V = matrix(d, norm, 10, kind), matrix(d, 1.5, 11)
    nv = NonlocalVelocity(
        SELF,
        x,
        y,
        np.arange(len(y)),
        method="fast",
        tolerance=tol,
        fast_options={"backend": backend},
    )
    assert nv._fast.backend == backend
    X = nv(w, A, V)
    Xd = attention_velocity(x, y, w, A, V)
    rep = nv.report
    assert rep["method"] == "fast", rep
    err = rel_error(X, Xd)
    assert err <= tol
    assert err <= max(rep["bound"], 1e-13)
    assert rep["sampled_error"] <= tol
    # the result is tangent
    np.testing.assert_allclose(np.einsum("ij,ij->i", X, x), 0, atol=1e-14)


@pytest.mark.skipif(_nb is None, reason="numba not installed")
def test_serial_and_threaded_kernels_agree_bit_for_bit():
    """One thread per rank takes the serial kernels (no thread pool): same sums, same order."""
    x, y, w = problem(3, seed=6)
    A, V = matrix(3, 4.0, 30), matrix(3, 1.0, 31)
    out = []
    for threads in (1, 2):
        fv = FastVelocity(SELF, x, y, tolerance=1e-10, chunk=128, backend="numba",
                          threads=threads)  # fmt: skip
        assert fv._kernels[0].__name__.endswith("_serial") == (fv.threads == 1)
        out.append(fv(w, A, V))
    np.testing.assert_array_equal(out[0], out[1])


@pytest.mark.parametrize("d", [2, 3])
def test_weights_change_and_A_cache(d):
    """Weights drift between calls; two A values alternate (cached); zero weights drop out."""
    x, y, w0 = problem(d, seed=4)
    As = [matrix(d, 4.0, 20), matrix(d, 2.0, 21)]
    V = matrix(d, 1.0, 22)
    tol = 1e-9
    fv = FastVelocity(SELF, x, y, tolerance=tol, chunk=128)
    for k in range(6):
        w = w0 * (1 + 0.5 * np.sin(k + 3 * y[:, 0]))
        w[::7] = 0.0
        A = As[k % 2]
        X = fv(w, A, V)
        assert fv.report["method"] == "fast"
        assert rel_error(X, attention_velocity(x, y, w, A, V)) <= tol
    assert len(fv._setups) == 2
    assert [st.calls for st in fv._setups.values()] == [3, 3]


@pytest.mark.parametrize("d,backend", [(2, "numpy"), (3, "numpy"), (3, "numba")][: 3 if _nb else 2])
def test_moving_points_match_direct(d, backend):
    """Particles: sources = targets, moved between calls (set_points) towards a cluster, with
    two A values alternating (each cached set-up is rebuilt at the new points): every call
    within the tolerance of the direct sum and within its own bound."""
    rng = np.random.default_rng(12)
    x = problem(d, seed=12)[1]
    w = np.full(len(x), 1.0 / len(x))
    As, V = [matrix(d, 4.0, 70), matrix(d, 1.5, 71)], matrix(d, 1.0, 72)
    tol = 1e-9
    fv = FastVelocity(SELF, x, x, tolerance=tol, chunk=128, backend=backend)
    pole = np.eye(d)[0]
    for k in range(6):
        if k:
            x = x + 0.3 * pole + 0.05 * rng.normal(size=x.shape)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            fv.set_points(x, x)
        A = As[k % 2]
        X = fv(w, A, V)
        rep = fv.report
        assert rep["method"] == "fast", rep
        err = rel_error(X, attention_velocity(x, x, w, A, V))
        assert err <= tol and err <= max(rep["bound"], 1e-13), (k, err, rep)
    assert np.linalg.norm(x.mean(axis=0)) > 0.5  # the points did concentrate (from ~0)
    with pytest.raises(ValueError, match="set_points: expected targets"):
        fv.set_points(x[:-1], x)


@pytest.mark.parametrize("d", [2, 3])
def test_truncation_tails_increase_with_r(d):
    """Moving points bound each target's tail by the tail at the grid value above r_i: this
    needs τ_m(r) non-decreasing in r (Bessel ratios I_{ν+1}/I_ν increase with r)."""
    r = np.geomspace(1e-4, 60.0, 3000)
    t = truncation_tails(r, 60, d)
    assert np.all(np.diff(t, axis=1) >= -1e-15 * t[:, 1:])
    assert np.all(t[:, -1] > t[:, 0])  # not a constant


def test_concentrated_density_uses_direct_for_a_few_targets():
    """A peaked density leaves some targets with tiny denominators: those go direct."""
    x, y, _ = problem(3, seed=5)
    w = np.exp(10 * (y[:, 2] - 1))
    A, V = matrix(3, 8.0, 30), matrix(3, 1.0, 31)
    tol = 1e-10
    nv = NonlocalVelocity(SELF, x, y, np.arange(len(y)), method="fast", tolerance=tol)
    X = quiet_call(nv, w, A, V)
    assert rel_error(X, attention_velocity(x, y, w, A, V)) <= tol
    assert nv.report["method"] == "fast"
    assert 0 < nv.report["direct_targets"] < len(x) // 4


# ----------------------------------------------------------------------------- fall-backs


@pytest.mark.parametrize("method", ["auto", "fast"])
@pytest.mark.parametrize("d", [2, 3])
def test_peaked_kernel_falls_back_to_direct(method, d):
    x, y, w = problem(d, seed=6)
    A, V = matrix(d, 2e4 if d == 2 else 3000.0, 40), matrix(d, 1.0, 41)
    mem = 8 * 2**20  # small budget for the NumPy tables (S^1): the degree does not fit
    nv = NonlocalVelocity(
        SELF,
        x,
        y,
        np.arange(len(y)),
        method=method,
        tolerance=1e-10,
        fast_options={"memory_bytes": mem},
    )
    with pytest.warns(RuntimeWarning, match="too peaked"):
        X = nv(w, A, V)
    assert nv.report["method"] == "direct"
    assert "too peaked" in nv.report["reason"]
    Xd = attention_velocity(x, y, w, A, V)
    assert rel_error(X, Xd) <= 1e-10  # this call may be a fast/direct hybrid
    np.testing.assert_array_equal(nv(w, A, V), Xd)  # later calls: direct


def test_auto_prefers_direct_for_tiny_problems():
    x, y, w = problem(3)
    x, y, w = x[:10], y[:20], w[:20]
    A, V = matrix(3, 5.0, 50), matrix(3, 1.0, 51)
    nv = NonlocalVelocity(SELF, x, y, np.arange(len(y)), method="auto", tolerance=1e-10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a size decision, not worth a warning
        X = nv(w, A, V)
    assert nv.report["method"] == "direct"
    assert "not cheaper" in nv.report["reason"]
    np.testing.assert_array_equal(X, attention_velocity(x, y, w, A, V))


def test_moving_sources_use_direct():
    x, y, w = problem(3)
    A, V = matrix(3, 3.0, 60), matrix(3, 1.0, 61)
    keys = np.arange(len(y))
    auto = NonlocalVelocity(SELF, x, None, keys, method="auto")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto: silently direct
        X = auto(w, A, V, sources=y)
    np.testing.assert_array_equal(X, attention_velocity(x, y, w, A, V))
    with pytest.warns(RuntimeWarning, match="fixed sources"):
        fast = NonlocalVelocity(SELF, x, None, keys, method="fast")
    np.testing.assert_array_equal(fast(w, A, V, sources=y), X)
    # fixed sources given, but moved on a call: direct for that call
    fixed = NonlocalVelocity(SELF, x, y[::-1], keys, method="fast")
    with pytest.warns(RuntimeWarning, match="moving sources"):
        np.testing.assert_array_equal(fixed(w, A, V, sources=y), X)


def test_bad_options():
    x, y, _ = problem(3)
    with pytest.raises(ValueError, match="method"):
        NonlocalVelocity(SELF, x, y, np.arange(len(y)), method="fmm")
    with pytest.raises(ValueError, match="tolerance"):
        NonlocalVelocity(SELF, x, y, np.arange(len(y)), method="fast", tolerance=0.0)
    fv = FastVelocity(SELF, x, y, tolerance=1e-8)
    with pytest.raises(ValueError, match="no mass"):
        fv(np.zeros(len(y)), np.eye(3), np.eye(3))


# ----------------------------------------------------------------------------- MPI

_MPI_SCRIPT = textwrap.dedent(
    """
    import sys, warnings
    import numpy as np
    from mpi4py import MPI
    sys.path.insert(0, {tests!r})
    from test_fast_velocity import problem, matrix, run_partitioned
    comm = MPI.COMM_WORLD
    out = run_partitioned(comm)
    if comm.rank == 0:
        np.savez(sys.argv[1], **out)
    """
)


def run_partitioned(comm) -> dict:
    """Fast velocities (S^1 and S^2, two A values, changing weights) gathered on rank 0.

    Targets and sources are dealt to the ranks in a scrambled, uneven way (in one case all
    targets on rank 0); the sources' global keys are their indices in the reference arrays.
    """
    P, p = comm.size, comm.rank
    out = {}
    for d, backend, skew in [(2, "numpy", 0), (3, "numpy", 0), (3, "auto", 0), (3, "auto", 1)]:
        x, y, w = problem(d, seed=7)
        rng = np.random.default_rng(8)
        tpart = rng.integers(0, P, len(x)) if not skew else np.zeros(len(x), int)  # idle ranks
        spart = rng.integers(0, P, len(y))
        mine_t, mine_s = np.nonzero(tpart == p)[0], np.nonzero(spart == p)[0]
        nv, step_by_step = (NonlocalVelocity(
            comm,
            x[mine_t],
            y[mine_s],
            mine_s,
            method="fast",
            tolerance=1e-9,
            fast_options={"chunk": 64, "backend": backend},
        ) for _ in range(2))  # fmt: skip
        step_by_step._fast.lean = False  # the lean call's collectives give the same numbers
        V = matrix(d, 1.0, 9)
        As = [matrix(d, 5.0, 10), matrix(d, 1.0, 11), matrix(d, 5.0, 10), matrix(d, 1.0, 11)]
        for k, A in enumerate(As):
            wk = w * (1 + 0.3 * np.cos(k + 2 * y[:, 1]))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                X = nv(wk[mine_s], A, V)
                np.testing.assert_array_equal(X, step_by_step(wk[mine_s], A, V))
            assert nv.report["method"] == "fast", nv.report
            parts = comm.gather((mine_t, X), root=0)
            if p == 0:
                full = np.empty((len(x), d))
                for idx, Xp in parts:
                    full[idx] = Xp
                out[f"d{d}_{backend}_{skew}_{k}"] = full
    return out


def test_rank_independence():
    comm = MPI.COMM_WORLD
    ref = run_partitioned(SELF)
    if comm.size > 1:  # run under mpiexec: compare this run's partition with one rank
        got = run_partitioned(comm)
        if comm.rank == 0:
            for k in ref:
                assert rel_error(got[k], ref[k]) <= 1e-12, k
        return
    mpiexec = Path(sys.executable).parent / "mpiexec"
    mpiexec = str(mpiexec) if mpiexec.exists() else shutil.which("mpiexec")
    if mpiexec is None:
        pytest.skip("mpiexec not found")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "run.py"
        script.write_text(_MPI_SCRIPT.format(tests=str(Path(__file__).parent)))
        root = str(Path(__file__).resolve().parents[1])
        env = dict(os.environ, PYTHONPATH=root, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
        res = subprocess.run(
            [mpiexec, "-n", "2", sys.executable, str(script), str(Path(tmp) / "out.npz")],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        assert res.returncode == 0, res.stdout + res.stderr
        got = dict(np.load(Path(tmp) / "out.npz"))
    assert set(got) == set(ref)
    for k in ref:
        # identical up to BLAS round-off in the per-target products
        assert rel_error(got[k], ref[k]) <= 1e-12, k


def test_field_that_vanishes_by_symmetry_is_not_out_of_reach():
    """A uniform density with A = 2I: X[μ] vanishes by symmetry (|X| ~ 5e-7 against a softmax
    mean |V m| ~ 0.5), below what the tolerance relative to max|X| can reach in double
    precision. The fast method then works to a floor of 1e4 round-offs of |V m| (the rigorous
    bound is a few 1e-13 |V m|) instead of warning and falling back to the direct sum."""
    from solver import sphere_mesh

    sm = sphere_mesh(MPI.COMM_WORLD, 2, refinement=3)
    nv = NonlocalVelocity(sm.comm, sm.centroids, sm.centroids, sm.keys, method="fast")
    A, V = 2 * np.eye(3), np.eye(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "missed the tolerance" warning
        X = nv(sm.areas, A, V)
    assert nv.report["method"] == "fast"
    Xd = attention_velocity(sm.centroids, sm.centroids, sm.areas, A, V)
    assert np.abs(Xd).max() < 1e-6  # the field does vanish
    assert np.abs(X - Xd).max() <= 1e-12


# ----------------------------------------------------------------------------- the bound itself


def _context(fv: FastVelocity, w: np.ndarray, V: np.ndarray) -> dict:
    """The per-call sums that ``FastVelocity.__call__`` builds (one rank, all sources)."""
    Vy, nVy = fv._vdata(V)
    W = np.zeros((fv._C_local * fv.chunk, fv.d + 1))
    W[: len(w), 0] = w
    W[: len(w), 1:] = w[:, None] * Vy
    return {"W": W, "mass": float(w.sum()), "SwV": float(w @ nVy)}


def _tail_s2(r: np.ndarray, n: int) -> np.ndarray:
    """``τ_n(r) = Σ_{l>n} (2l+1) i_l(r) e^{-r}`` summed straight from SciPy (to l = 200)."""
    ls = np.arange(n + 1, 201)[:, None]
    return ((2 * ls + 1) * spherical_in(ls, r[None, :]) * np.exp(-r[None, :])).sum(axis=0)


def _peaked_case():
    """A density peaked at the north pole (weights e^{10(z-1)}) and ‖A‖₂ = 8: the targets that
    see the weights only through the kernel's ~e^{-2r} side have tiny denominators."""
    x, y, _ = problem(3, seed=5)
    return x, y, np.exp(10 * (y[:, 2] - 1)), matrix(3, 8.0, 30), matrix(3, 1.0, 31)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bound_is_its_formula_and_holds_at_every_degree(backend):
    """``B_i = η_i (S_wV + q_i Σw) / (D̃_i - η_i Σw)`` with ``η_i = τ_n(r_i) + ε_n`` recomputed
    here from SciPy's Bessel functions, at degrees where ``η_i Σw / D̃_i`` is 0.05-1 for
    dozens of targets (so the sign of the denominator's correction matters), and the
    computed velocity and denominator within it at every target (rigour)."""
    x, y, w, A, V = _peaked_case()
    fv = FastVelocity(SELF, x, y, tolerance=1e-10, chunk=128, backend=backend)
    quiet_call(fv, w, A, V)
    st = fv._setup(A)
    ctx = _context(fv, w, V)
    Xd = attention_velocity(x, y, w, A, V)
    r = np.linalg.norm(x @ A.T, axis=1)
    uh = (x @ A.T) / r[:, None]
    D_exact = (w[None, :] * np.exp(r[:, None] * (uh @ y.T - 1))).sum(axis=1)
    lam, u = 2.0, np.finfo(float).eps / 2
    mixed = 0
    for n in (4, 8, 10, 14, st.n_use):
        X, D, q = fv._fast(st, n, ctx)
        B = fv._bounds(st, n, D, q, ctx)[0]
        eps = lam * u * (float(n + 1) + fv.chunk**0.5 + fv.C**0.5 + n + 1)  # √r_n = n + 1
        eta = _tail_s2(r, n) + eps
        den = D - eta * w.sum()
        expect = np.full(len(x), np.inf)
        ok = den > 0
        expect[ok] = eta[ok] * (ctx["SwV"] + q[ok] * w.sum()) / den[ok]
        np.testing.assert_array_equal(np.isinf(B), ~ok)
        np.testing.assert_allclose(B[ok], expect[ok], rtol=1e-9)  # tails: SciPy vs recurrence
        ratio = eta * w.sum() / D
        mixed += int(np.sum((ratio > 0.05) & (ratio < 1)))
        # rigour: the scaled denominator within η Σw, the velocity within B (measured: the
        # bound is 25 to 5e6 times the error, |P_l| <= 1 is far from tight)
        assert np.all(np.abs(D - D_exact) <= eta * w.sum())
        err = np.linalg.norm(X - Xd, axis=1)
        assert np.all(err[ok] <= B[ok])
    assert mixed >= 50, mixed  # measured 266 (70, 89, 107 at degrees 4, 8, 10)


def test_bound_of_a_tiny_or_negative_denominator_is_infinite():
    """Where ``D̃_i <= η_i Σw`` nothing bounds the error (the true denominator may be 0): the
    bound is +inf, so the target goes to the direct sum; just above, it is the formula."""
    x, y, w, A, V = _peaked_case()
    fv = FastVelocity(SELF, x, y, tolerance=1e-10, chunk=128, backend="numpy")
    st = fv._setup(A)
    ctx = _context(fv, w, V)
    n = 10
    eta = st.tails[n, :5] + fv._roundoff(n)
    f = np.array([-1.0, 0.0, 1.0, 1.5, 11.0])  # D̃ = f η Σw
    D, q = f * eta * ctx["mass"], np.full(5, 0.7)
    st_tails = st.tails
    st.tails = st_tails[:, :5]
    B = fv._bounds(st, n, D, q, ctx)[0]
    st.tails = st_tails
    assert np.all(np.isinf(B[:3]))
    expect = (ctx["SwV"] + 0.7 * ctx["mass"]) / ((f[3:] - 1) * ctx["mass"])
    np.testing.assert_allclose(B[3:], expect, rtol=1e-12)  # η cancels: B = (..) / ((f-1) Σw)


@pytest.mark.parametrize("backend", BACKENDS)
def test_targets_over_half_the_tolerance_go_direct(backend):
    """A target is accepted when ``B_i <= tol · max|X̃| / 2`` (the other half of the tolerance
    covers the error of the scale ``max|X̃|`` itself): exactly the targets above that go to the
    direct sum (measured: 42 of 300, 20 of them between tol/2 and tol), and they carry the
    direct sum's values."""
    x, y, w, A, V = _peaked_case()
    tol = 1e-10
    fv = FastVelocity(SELF, x, y, tolerance=tol, chunk=128, backend=backend)
    X = quiet_call(fv, w, A, V)
    rep = fv.report
    assert rep["method"] == "fast", rep
    st = fv._setup(A)
    ctx = _context(fv, w, V)
    Xf, D, q = fv._fast(st, st.n_use, ctx)
    B = fv._bounds(st, st.n_use, D, q, ctx)[0]
    scale = np.linalg.norm(Xf, axis=1).max()
    fail = B > tol * scale / 2
    assert np.sum(B > tol * scale) < fail.sum() == rep["direct_targets"]
    assert rep["bound"] <= tol / 2
    Xd = attention_velocity(x, y, w, A, V)
    np.testing.assert_allclose(X[fail], Xd[fail], rtol=0, atol=1e-15 * scale)
    np.testing.assert_array_equal(X[~fail], Xf[~fail])
    assert rel_error(X, Xd) <= tol


@pytest.mark.parametrize(
    "backend,case",
    [(b, c) for b in BACKENDS for c in ("smooth", "peaked", "moving", "circle")
     if c != "circle" or b == "numpy"],  # S^1 has the NumPy back-end only
)  # fmt: skip
def test_lean_call_is_the_step_by_step_call(backend, case):
    """The lean call (one compiled pass over the targets, one collective where nothing fails:
    :meth:`FastVelocity._finish`, :meth:`FastVelocity._settle`) gives the step-by-step NumPy
    path's numbers bit for bit, velocity and report alike: with no failing target (smooth),
    with dozens going to the direct sum (peaked: the speculative local threshold is passed
    and the failures counted against the global one), with moving points (the tails taken
    from the grid) and on S^1. Both ranks' collective paths: :func:`run_partitioned`."""
    if case == "peaked":
        x, y, w, A, V = _peaked_case()
    elif case == "circle":
        x, y, w = problem(2, seed=1)
        A, V = matrix(2, 5.0, 2), matrix(2, 1.0, 3)
    else:
        x, y, w = problem(3, seed=1)
        A, V = matrix(3, 5.0, 2), matrix(3, 1.0, 3)
    fvs = [FastVelocity(SELF, x, y, tolerance=1e-10, chunk=128, backend=backend)
           for _ in range(2)]  # fmt: skip
    fvs[1].lean = False
    rng = np.random.default_rng(0)
    failed = 0
    for k in range(4):
        wk = w * (1 + 0.3 * np.cos(k + 2 * y[:, 1]))
        if case == "moving" and k:
            Q = np.linalg.qr(rng.normal(size=(3, 3)))[0]
            for fv in fvs:
                fv.set_points(x @ Q.T, y @ Q.T)
        Xa, Xb = (quiet_call(fv, wk, A, V) for fv in fvs)
        np.testing.assert_array_equal(Xa, Xb)
        assert fvs[0].report == fvs[1].report
        failed += fvs[0].report["direct_targets"] if k else 0  # the lean calls' failures
    assert failed > 0 if case == "peaked" else failed == 0, failed  # measured 129 / 0


def test_lean_settle_fails_exactly_the_targets_over_the_threshold():
    """:meth:`FastVelocity._settle` on bounds placed around the threshold ``tol · scale / 2``
    (just below, just above, far above): exactly those above fail, and the bound reported is
    the largest of the others (relative to the scale), as the step-by-step path has it."""
    x, y, w = problem(3, seed=1)
    tol = 1e-10
    fv = FastVelocity(SELF, x, y, tolerance=tol, chunk=128)
    m = len(x)
    X = np.zeros((m, 3))
    X[0, 0] = 2.0  # scale = max|X| = 2
    q, D = np.full(m, 0.5), np.ones(m)
    thr = 0.5 * tol * 2.0
    for f in ([0.5, 0.999], [0.5, 0.999, 1.001], [0.5, 1.001, 3.0], [2.0, 0.1]):
        B = np.zeros(m)
        B[: len(f)] = thr * np.array(f)
        out = fv._settle(X, D, q, B, 2.0, 0.5)
        fail, nfail, bound = out[6], out[7], out[8]
        np.testing.assert_array_equal(fail, B > thr)
        assert nfail == int(np.sum(B > thr))
        if nfail == 0:
            assert bound == B.max() / 2.0
