"""Linear response (solver.analysis._response): the first variation of the flow map in the
weights, against finite differences of the real solvers (particles on S^1 and S^2)."""

from __future__ import annotations

import numpy as np
import pytest

from solver.analysis._response import (
    first_order_w2,
    layer_jacobians,
    most_forgetful_adapter,
    particle_tangent,
    random_adapter_c,
    tied_jacobian,
)
from solver.model import Model, RandomLoRA, TiedLoRA, Uniform, VonMisesFisher
from solver.particles import sample_particles, simulate_particles


def _gap_model(d: int) -> Model:
    V = np.diag([1.0, 0.7, 0.5][:d])
    return Model.from_AV(V, V)


@pytest.mark.parametrize("d", [2, 3])
def test_tangent_equals_central_differences(d):
    """``δx_T`` (complex step) against ``(x_T(+ε) − x_T(−ε)) / (2ε)`` of simulate_particles,
    a tied ``(δA, δV)`` in a random direction. The difference is the central difference's own
    error ``ε² |x'''| / 6``: measured 2.7e-5 (S^1) and 6.6e-6 (S^2) at ε = 1e-3, divided by 100
    at ε = 1e-4 (order 2); asserted below 5 ε² · 10 (``|x'''|/6 ≤ 27`` measured, 2x margin)."""
    rng = np.random.default_rng(1)
    base = _gap_model(d)
    x0 = sample_particles(VonMisesFisher(tuple(np.ones(d) / np.sqrt(d)), 2.0), 12, d, seed=3)
    dA, dV = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    r = particle_tangent(base, x0, 4.0, lambda t: (dA[None], dV[None]), dt=0.05)
    xb = simulate_particles(base, x0, 4.0, dt=0.05).positions[-1]
    assert np.abs(r.x - xb).max() < 1e-13  # the same scheme
    errs = []
    for eps in (1e-3, 1e-4):
        xp, xm = (simulate_particles(base.perturbed(TiedLoRA(s * eps * dA, s * eps * dV)), x0,
                                     4.0, dt=0.05).positions[-1] for s in (1, -1))  # fmt: skip
        errs.append(np.abs((xp - xm) / (2 * eps) - r.dx[0]).max())
        assert errs[-1] < 50 * eps**2
    assert 50 < errs[0] / errs[1] < 200  # second order: the derivative is exact
    assert np.abs(r.dx[0]).max() > 1.0  # a response that is there


def test_layer_jacobians_predict_random_adapters():
    """``δx = Σ_ℓ J_ℓ(ΔV^ℓ)`` predicts simulate_particles with a RandomLoRA of η = 1e-4 to
    O(η²): measured 4.0e-9 against a response 1.4e-5 (ratio 3e-4 = O(η)); asserted < 1e-3 of
    the response. Coarse layers are sums of fine ones (to the O(dt⁴) of the other step grid:
    measured 1.8e-8)."""
    d, n, T, L = 2, 32, 6.0, 16
    base = Model(np.eye(d), np.eye(d), np.eye(d))
    x0 = sample_particles(Uniform(), n, d, seed=0)
    x, J = layer_jacobians(base, x0, T, L, dt=0.05)
    pert = RandomLoRA(d=d, eta=1e-4, h=T / L, seed=5)
    dVs = np.array([pert.at((ell + 0.5) * T / L)[1] for ell in range(L)])
    pred = np.einsum("lk,lknd->nd", dVs.reshape(L, -1), J)
    xp = simulate_particles(base.perturbed(pert), x0, T, dt=0.05).positions[-1]
    assert np.abs((xp - x) - pred).max() < 1e-3 * np.abs(pred).max()
    _, J4 = layer_jacobians(base, x0, T, 4, dt=0.05)
    assert np.abs(J.reshape(4, 4, *J.shape[1:]).sum(1) - J4).max() < 1e-6


def test_random_adapter_c_is_the_mean_square_over_adapters():
    """``c_L`` (closed form over the adapters) against the Monte-Carlo mean of the same linear
    response over 4,000 adapter draws: the standard error of the Monte-Carlo square root is
    1.2 % (measured over 5 generator seeds: deviations -1.1 % .. +1.0 %); asserted within 4 %
    (3.3 standard errors)."""
    d, n, T, L = 2, 16, 4.0, 8
    base = Model(np.eye(d), np.eye(d), np.eye(d))
    x0 = sample_particles(Uniform(), n, d, seed=2)
    _, J = layer_jacobians(base, x0, T, L, dt=0.05)
    c = random_adapter_c(J)
    rng = np.random.default_rng(0)
    u = rng.normal(scale=1 / np.sqrt(d), size=(4000, L, d))
    v = rng.normal(scale=1 / np.sqrt(d), size=(4000, L, d))
    M = np.einsum("sla,slb->slab", u, v).reshape(4000, L, d * d)
    resp = np.einsum("slk,lknd->snd", M, J)
    mc = np.sqrt(L * np.mean(first_order_w2(resp) ** 2))
    assert abs(mc / c - 1) < 0.04


def test_most_forgetful_adapter():
    """The full-rank answer attains σ_1/√n (the top singular value: nothing larger exists).
    The rank-one answer (S^1: unit adapters ``u vᵀ``, two angles) equals the maximum over a
    400 x 400 grid of the angles to the grid's second-order resolution (measured relative
    difference below 1e-5; asserted 1e-4), and beats every grid point. Its response predicts
    simulate_particles' W2 / ε at ε = 1e-4 within 1 %."""
    from solver.experiments._stats import w2

    d, n, T = 2, 10, 4.0
    base = _gap_model(d)
    x0 = sample_particles(VonMisesFisher((1.0, 1.0), 3.0), n, d, seed=1)
    x, J = tied_jacobian(base, x0, T, dt=0.05)
    full = most_forgetful_adapter(J, d)
    assert full.w2 == pytest.approx(full.sigma[0] / np.sqrt(n), rel=1e-10)
    one = most_forgetful_adapter(J, 1)
    s = np.linalg.svd(one.dV, compute_uv=False)
    assert s[1] < 1e-10 * s[0] and abs(np.linalg.norm(one.dV) - 1) < 1e-12
    a = np.linspace(0, np.pi, 400, endpoint=False)
    u = np.stack([np.cos(a), np.sin(a)], 1)
    M = np.einsum("pa,qb->pqab", u, u).reshape(-1, d * d)
    grid = first_order_w2(np.einsum("mk,knd->mnd", M, J)).max()
    assert grid <= one.w2 + 1e-12 and one.w2 <= grid * (1 + 1e-4)
    assert one.w2 < full.w2  # rank one is a real constraint here
    eps = 1e-4
    xp = simulate_particles(base.perturbed(TiedLoRA(np.zeros((d, d)), eps * one.dV)), x0, T,
                            dt=0.05).positions[-1]  # fmt: skip
    assert w2(x, xp) / eps == pytest.approx(one.w2, rel=1e-2)


def test_bad_input():
    base = _gap_model(2)
    x0 = sample_particles(Uniform(), 4, 2, seed=0)
    with pytest.raises(ValueError, match="x0"):
        particle_tangent(base, x0 * 2, 1.0, lambda t: (np.zeros((1, 2, 2)),) * 2)
    with pytest.raises(TypeError, match="directions"):
        particle_tangent(base, x0, 1.0, None)
    with pytest.raises(ValueError, match="L"):
        layer_jacobians(base, x0, 1.0, 0)
    with pytest.raises(ValueError, match="r"):
        most_forgetful_adapter(np.zeros((4, 4, 2)), 0)


def _pde_case(sphere: int):
    from mpi4py import MPI

    from solver.mesh import sphere_mesh

    d = sphere + 1
    sm = (sphere_mesh(MPI.COMM_SELF, 1, cells=64) if sphere == 1
          else sphere_mesh(MPI.COMM_SELF, 2, refinement=1))  # fmt: skip
    D = np.zeros((d, d))
    D[1, 0], D[0, 1] = 1.0, 0.5
    return sm, _gap_model(d), VonMisesFisher(tuple(np.ones(d) / np.sqrt(d)), 3.0), D


def test_pde_response_converges_s1():
    """The PDE's first-moment response on S^1 (64 cells, T = 4) by symmetric differences at
    ε = 0.04, 0.02, 0.01: the quotient settles (measured differences 1.04e-2 then 4.6e-3; the
    last 0.3 % of |q| = 1.66); asserted: the differences shrink by at least 1.5 (measured
    2.3) and the last is below 1 % of |q|; and it is the particles' response as n grows."""
    from solver.analysis._response import pde_response

    sm, base, init, D = _pde_case(1)
    r = pde_response(sm, base, init, 4.0, D)
    q = np.linalg.norm(r.moment[-1])
    assert r.differences[0] > 1.5 * r.differences[1]
    assert r.differences[1] < 1e-2 * q
    assert len(set(r.steps.tolist())) == 1  # ±ε took the same fixed steps
    # the mean-field limit of the particles' exact tangent: n = 400 draws of the same density,
    # the mean of δx_i(T) (sampling error ~3 %; with the PDE's 64-cell error measured 4.5 %
    # apart; asserted 15 %)
    x0 = sample_particles(init, 400, 2, seed=0)
    t = particle_tangent(base, x0, 4.0, lambda s: (np.zeros((1, 2, 2)), D[None]), dt=0.05)
    assert np.linalg.norm(t.dx[0].mean(0) - r.moment[-1]) < 0.15 * q


@pytest.mark.slow
def test_pde_response_converges_s2():
    """The same on S^2 (icosphere level 1, T = 2): measured differences 6.2e-4 then 2.4e-4
    (|q| = 0.74); asserted: shrinking by at least 1.5 (measured 2.6), the last below 0.2 %."""
    from solver.analysis._response import pde_response

    sm, base, init, D = _pde_case(2)
    r = pde_response(sm, base, init, 2.0, D)
    q = np.linalg.norm(r.moment[-1])
    assert r.differences[0] > 1.5 * r.differences[1]
    assert r.differences[1] < 2e-3 * q


def test_linear_response_experiment(tmp_path):
    """The linear_response experiment on its tiny preset (S^1, n = 32, T = 6, L = 1, 4, 16, 8
    draws). Identities of the exact response: c_1 (one layer) is the RMS response of a random
    unit rank-one tied adapter (``‖J‖_F/(d√n)``, s = 1); the most forgetful rank-one adapter
    beats that RMS (a maximum over the unit rank-one adapters is at least their RMS), rank two
    beats rank one (nested sets) and equals σ_1/√n at full rank. The γ interval comes from the
    draws alone and contains the mean of the per-draw γ."""
    from solver.experiments import load_presets, read_rows, run_linear_response

    p = load_presets("linear_response")["tiny"]
    s = run_linear_response(p, tmp_path, progress=False)
    ex = read_rows(tmp_path / "exact.csv")
    fg = read_rows(tmp_path / "forgetful.csv")
    assert len(ex) == len(p["Ls"]) * p["seeds"] and len(fg) == 2 * p["seeds"]
    assert (tmp_path / "linear_response.png").is_file()
    for seed in range(p["seeds"]):
        c1 = next(r["c"] for r in ex if r["seed"] == seed and r["L"] == 1)
        f1, f2 = (next(r for r in fg if r["seed"] == seed and r["rank"] == k) for k in (1, 2))
        assert c1 == pytest.approx(f1["random_rank1"], rel=1e-10)
        assert f1["w2"] >= f1["random_rank1"] and f2["w2"] >= f1["w2"] - 1e-12
        assert f2["w2"] == pytest.approx(f2["sigma1"], rel=1e-10)
    # L = 4 from the 16-layer Jacobians against a 4-layer computation (another step grid)
    x0 = sample_particles(Uniform(), p["n"], 2, seed=p["x0_seed"] + 1)
    _, J4 = layer_jacobians(Model(np.eye(2), np.eye(2), np.eye(2)), x0, p["T"], 4, dt=p["dt"])
    c4 = next(r["c"] for r in ex if r["seed"] == 1 and r["L"] == 4)
    assert c4 == pytest.approx(random_adapter_c(J4), rel=1e-6)
    # the PDE's measure: one row per draw and depth, c_1 recomputed from the 1-layer weighted
    # Jacobian of the draw's density on its mesh quadrature (another partition of the layers)
    from mpi4py import MPI

    from solver.analysis import mesh_atoms
    from solver.experiments._common import draw_density
    from solver.mesh import sphere_mesh

    me = read_rows(tmp_path / "measure.csv")
    assert len(me) == len(p["Ls"]) * p["pde_seeds"]
    x0 = sample_particles(Uniform(), p["n"], 2, seed=p["x0_seed"] + 2)
    atoms, w = mesh_atoms(sphere_mesh(MPI.COMM_SELF, 1, cells=p["pde_cells"]), draw_density(x0))
    _, J1 = layer_jacobians(Model(np.eye(2), np.eye(2), np.eye(2)), atoms, p["T"], 1,
                            dt=p["dt"], weights=w)  # fmt: skip
    c1 = next(r["c"] for r in me if r["seed"] == 2 and r["L"] == 1)
    assert c1 == pytest.approx(random_adapter_c(J1, weights=w), rel=1e-6)
    g = s["gamma"]["2"]["pde"]
    assert g["gamma_lo"] <= g["gamma_mean"] <= g["gamma_hi"]
    g = s["gamma"]["2"]
    assert g["gamma_lo"] <= np.mean(g["gamma_per_draw"]) <= g["gamma_hi"]
    assert len(g["gamma_per_draw"]) == p["seeds"]
    _check_measure_forgetful(p, tmp_path, fg, atoms, w)


def _check_measure_forgetful(p, out, fg, atoms, w):
    """The most forgetful per-layer adapters of the PDE's measure (``measure_forgetful.csv``)
    and their check on the PDE (``forgetful_pde.csv``), tiny preset.

    Identities: ``c^max_L = L w_1`` (s = 1); full rank attains ``σ_1``; a maximum over unit
    rank-``r`` adapters bounds the random rank-one adapters' RMS, ``c^max_L ≥ c_L`` (PDE atoms,
    the measure's own on S^1, particles); the measure's ``W2`` is at most the atoms'
    (a projection); repeating a coarse adapter on fine layers gives ``c^max_L ≥ √(L/L')
    c^max_{L'}``; at L = 1 the particles' answer is forgetful.csv's; the 4-layer answer
    recomputed from a 4-layer partition (another step grid) to 1e-6.

    The check on the PDE (S^1, draw 0, T = 6, ε = 0.01; tied full-rank adapter of the measure
    on 128 cells, σ_1 = 4.196): the prediction on the adapter's own mesh is σ_1; the
    measure's first order is below the atoms' bound (4.84); DG0's ``W2/ε`` is 4.021 / 4.077
    on 128 / 256 cells against the predictions 4.196 / 4.180 (measured 2026-12-08: 4.2 % and
    2.5 % below, the DG0 error shrinking by 0.056 under the refinement while the prediction
    moves by 0.017): asserted within 5 % on 256 cells and closer than on 128."""
    from solver.experiments import read_rows

    mf = read_rows(out / "measure_forgetful.csv")
    ranks = [r for r in p["ranks"] if r <= 2]
    assert len(mf) == len(p["Ls"]) * p["pde_seeds"] * len(ranks)
    for r in mf:
        assert r["c_max"] == pytest.approx(r["L"] * r["w2"], rel=1e-12)
        if r["rank"] == 2:
            assert r["w2"] == pytest.approx(r["sigma1"], rel=1e-10)
        for a, b in (("c_max", "c_random"), ("c_max_measure", "c_random_measure"),
                     ("particles_c_max", "particles_c_random")):  # fmt: skip
            assert r[a] >= r[b] * (1 - 1e-12), (a, r)
        assert r["w2_measure"] <= r["w2"] * (1 + 1e-12)
        assert 0 <= r["alignment"] <= 1 + 1e-12
    tab = {(int(r["seed"]), int(r["L"]), int(r["rank"])): r for r in mf}
    for (seed, L, rk), r in tab.items():
        for Lc in p["Ls"]:
            if Lc < L and L % Lc == 0:
                for col in ("c_max", "c_max_measure", "particles_c_max"):
                    assert r[col] >= np.sqrt(L / Lc) * tab[(seed, Lc, rk)][col] * (1 - 1e-12)
        if L == 1:
            f = next(x for x in fg if x["seed"] == seed and x["rank"] == rk)
            assert r["particles_w2"] == pytest.approx(f["w2"], rel=1e-10)
    _, J4 = layer_jacobians(Model(np.eye(2), np.eye(2), np.eye(2)), atoms, p["T"], 4,
                            dt=p["dt"], weights=w)  # fmt: skip
    assert tab[(2, 4, 1)]["w2"] == pytest.approx(
        most_forgetful_adapter(J4, 1, weights=w).w2, rel=1e-6
    )
    ck = read_rows(out / "forgetful_pde.csv")
    assert len(ck) == len(p["check_cells"]) * len(p["check_eps"])
    e = min(p["check_eps"])
    by = {int(r["cells"]): r for r in ck if r["eps"] == e}
    coarse, fine = by[min(p["check_cells"])], by[max(p["check_cells"])]
    assert coarse["predicted"] == pytest.approx(coarse["sigma1"], rel=1e-9)
    assert all(r["predicted"] < r["predicted_atoms"] for r in ck)
    gap = [abs(r["w2_over_eps"] / r["predicted"] - 1) for r in (coarse, fine)]
    assert gap[1] < 0.05 and gap[1] < gap[0], gap


def test_measure_tangent_s1():
    """The tangent-linear mean-field flow on the mesh quadrature of μ_0 (S^1, T = 4, the PDE
    case above): (a) it is the exact derivative of the weighted atoms' scheme (central
    differences at ε = 1e-5 agree to 1e-6 of max |δx|); (b) the first moment's derivative
    converges with the quadrature (measured |Δ| = 8.2e-3 from 32 to 64 cells and 2.1e-3 from 64
    to 128, 0.12 % of |q| = 1.74; 1e-5 from 256 to 1,024); (c) the Eulerian DG0 scheme's
    symmetric differences (``pde_response``, 64 cells, ε = 0.01) are its first-order
    approximation: measured 4.3 % apart (4.8 % at 128 cells, 2.9 % at 256), asserted 8 %."""
    from mpi4py import MPI

    from solver.analysis._response import measure_tangent, pde_response
    from solver.mesh import sphere_mesh

    sm, base, init, D = _pde_case(1)
    qs = {n: measure_tangent(sphere_mesh(MPI.COMM_SELF, 1, cells=n), base, init, 4.0, D, dt=0.05)
          for n in (32, 64, 128)}  # fmt: skip
    r = qs[128]
    assert np.isclose(r.weights.sum(), 1.0) and r.dx.shape == (1, 128, 2)
    z = np.zeros((1, 2, 2))
    e = 1e-5
    xs = [particle_tangent(base.perturbed(TiedLoRA(np.zeros((2, 2)), s * e * D)), r.x0, 4.0,
                           lambda t: (z, z), dt=0.05, weights=r.weights).x
          for s in (1.0, -1.0)]  # fmt: skip
    assert np.abs((xs[0] - xs[1]) / (2 * e) - r.dx[0]).max() <= 1e-6 * np.abs(r.dx[0]).max()
    q = np.linalg.norm(r.moment[0])
    d1 = np.linalg.norm(qs[32].moment[0] - qs[64].moment[0])
    d2 = np.linalg.norm(qs[64].moment[0] - qs[128].moment[0])
    assert d2 < 0.5 * d1 and d2 < 3e-3 * q
    assert r.w2[0] >= q  # Jensen: (Σ ω |δx|²)^{1/2} >= |Σ ω δx|
    fd = pde_response(sphere_mesh(MPI.COMM_SELF, 1, cells=64), base, init, 4.0, D, eps=(0.01,))
    assert np.linalg.norm(fd.moment[-1] - r.moment[0]) <= 0.08 * q


def test_most_forgetful_adapter_on_the_measure():
    """The most forgetful unit adapter of the PDE's measure (S^1, 64 cells, the tangent of
    measure_tangent in the d² directions e_i e_jᵀ, weighted by the cells' masses): full rank
    attains σ_1/√n of the weighted map, and no random unit adapter (200 drawn)
    beats it; the rank-one answer's response is the weighted RMS of its own tangent (the
    weights enter: the unweighted answer differs)."""
    from mpi4py import MPI

    from solver.analysis._response import measure_tangent
    from solver.mesh import sphere_mesh

    _, base, init, _ = _pde_case(1)
    d = 2
    E = np.eye(d * d).reshape(d * d, d, d)
    r = measure_tangent(sphere_mesh(MPI.COMM_SELF, 1, cells=64), base, init, 4.0, E, dt=0.05)
    n = len(r.weights)
    full = most_forgetful_adapter(r.dx, d, weights=r.weights)
    assert full.w2 == pytest.approx(full.sigma[0] / np.sqrt(n), rel=1e-10)
    one = most_forgetful_adapter(r.dx, 1, weights=r.weights)
    own = measure_tangent(sphere_mesh(MPI.COMM_SELF, 1, cells=64), base, init, 4.0, one.dV,
                          dt=0.05)  # fmt: skip
    assert own.w2[0] == pytest.approx(one.w2, rel=1e-9)
    M = np.random.default_rng(0).normal(size=(200, d, d))
    M /= np.linalg.norm(M, axis=(1, 2))[:, None, None]
    rand = first_order_w2(np.einsum("mk,knd->mnd", M.reshape(200, -1), r.dx), r.weights)
    assert rand.max() <= full.w2 + 1e-12
    plain = most_forgetful_adapter(r.dx, 1)
    assert abs(abs(np.sum(plain.dV * one.dV)) - 1) > 1e-3  # the weights change the answer
    with pytest.raises(ValueError, match="weights"):
        most_forgetful_adapter(r.dx, 1, weights=-r.weights)


def test_random_adapter_c_of_the_measure():
    """Thm 4.2's exact ``c_L`` for the PDE's measure (S^1, 48 cells, the weighted atoms of
    measure_tangent): the per-layer Jacobians with the cells' masses sum to the tied response
    of measure_tangent (the chain rule is exact: measured 2e-15 of the response; asserted 1e-12),
    and the weighted closed form (1.410; 3.54 unweighted) is the Monte-Carlo mean square over
    4,000 adapter draws (1.422; standard error ~1.2 %; asserted 4 %)."""
    from mpi4py import MPI

    from solver.analysis._response import measure_tangent
    from solver.mesh import sphere_mesh

    _, base, init, D = _pde_case(1)
    d, L, T = 2, 4, 4.0
    r = measure_tangent(sphere_mesh(MPI.COMM_SELF, 1, cells=48), base, init, T, D, dt=0.05)
    x, J = layer_jacobians(base, r.x0, T, L, dt=0.05, weights=r.weights)
    assert np.abs(x - r.x).max() < 1e-12
    tied = np.einsum("k,lknd->nd", D.reshape(-1), J)
    assert np.abs(tied - r.dx[0]).max() < 1e-12 * np.abs(r.dx[0]).max()
    c = random_adapter_c(J, weights=r.weights)
    assert abs(c / random_adapter_c(J) - 1) > 0.05  # the weights matter here
    rng = np.random.default_rng(0)
    u = rng.normal(scale=1 / np.sqrt(d), size=(4000, L, d))
    v = rng.normal(scale=1 / np.sqrt(d), size=(4000, L, d))
    M = np.einsum("sla,slb->slab", u, v).reshape(4000, L, d * d)
    resp = np.einsum("slk,lknd->snd", M, J)
    mc = np.sqrt(L * np.mean(first_order_w2(resp, r.weights) ** 2))
    assert abs(mc / c - 1) < 0.04


def test_circle_gradient_part_is_the_measure_w2():
    """On S^1 the first-order ``W2`` of a density ``ρ`` displaced by a field ``v`` is
    ``min_β ‖v + β/ρ‖_μ`` (the circle's coupling may shift its cut), not the atoms' ``‖v‖_μ``.
    ``ρ ∝ 1 + 0.6 cos θ``, ``v = 0.5 + sin 2θ``: ``circle_gradient_part`` on a 256-cell
    quadrature against the exact circle ``W2 / ε`` of 200,000 equal atoms at the quantiles of
    ``ρ`` and their images (ε = 0.01, shifts 30 times the atoms' spacing): measured 0.7416
    against 0.7419, 4e-4 relative (the quadrature's and the O(ε) error), asserted 2e-3; the
    atoms' ``‖v‖_μ`` is 0.866 (asserted above 1.1 times). A rotation of the uniform density
    (``v`` constant) moves nothing: 0."""
    from mpi4py import MPI

    from solver.analysis import circle_gradient_part, mesh_atoms, wasserstein_circle
    from solver.mesh import sphere_mesh

    def rho(x):
        return 1.0 + 0.6 * x[:, 0]

    def field(th):
        return 0.5 + np.sin(2 * th)

    x, w = mesh_atoms(sphere_mesh(MPI.COMM_SELF, 1, cells=256), rho)
    th = np.arctan2(x[:, 1], x[:, 0])
    tangent = np.column_stack((-np.sin(th), np.cos(th)))
    dx = field(th)[:, None] * tangent
    w2 = first_order_w2(circle_gradient_part(x, dx[None], w), w)[0]
    atoms = first_order_w2(dx[None], w)[0]
    # the exact W2 of the continuum: equal atoms at the quantiles (fine grid CDF)
    N, eps = 200_000, 0.01
    g = np.linspace(-np.pi, np.pi, 1 << 20)
    cdf = np.cumsum(rho(np.column_stack((np.cos(g), np.sin(g)))))
    q = np.interp((np.arange(N) + 0.5) / N * cdf[-1], cdf, g)
    exact = wasserstein_circle(q, None, q + eps * field(q), None) / eps
    assert abs(w2 / exact - 1) < 2e-3, (w2, exact)
    assert atoms > 1.1 * w2
    xu, wu = mesh_atoms(sphere_mesh(MPI.COMM_SELF, 1, cells=64), lambda x: np.ones(len(x)))
    thu = np.arctan2(xu[:, 1], xu[:, 0])
    rot = np.column_stack((-np.sin(thu), np.cos(thu)))[None]
    assert np.abs(circle_gradient_part(xu, rot, wu)).max() < 1e-12
    with pytest.raises(ValueError, match="dx"):
        circle_gradient_part(xu, rot[:, :10], wu)


def test_most_forgetful_adapter_per_layer():
    """One adapter per layer (``J`` (L, d², n, d), 12 uniform particles on S^2, T = 4, L = 4):
    at L = 1 it is the tied answer; full rank attains σ_1/√n of the stacked map; the rank-one
    answer has rank one in every layer, unit total norm, beats 300 random per-layer rank-one
    adapters, is a fixed point of the alternation, and its predicted response is
    particle_tangent's along the same schedule (layer ℓ on ``[ℓ T/L, (ℓ+1) T/L)``: 1e-9).
    Repeating a coarse adapter on the fine layers bounds ``c^max_L = L w_1`` from below:
    ``c^max_4 ≥ √4 c^max_1`` (any rank)."""
    d, n, T, L = 3, 12, 4.0, 4
    base = _gap_model(d)
    x0 = sample_particles(Uniform(), n, d, seed=1)
    _, J = layer_jacobians(base, x0, T, L, dt=0.05)
    tied = most_forgetful_adapter(J.sum(axis=0), 1)
    one_layer = most_forgetful_adapter(J.sum(axis=0)[None], 1)
    assert one_layer.dV.shape == (1, d, d) and one_layer.w2 == pytest.approx(tied.w2, rel=1e-12)
    full = most_forgetful_adapter(J, d)
    assert full.dV.shape == (L, d, d)
    assert full.w2 == pytest.approx(full.sigma[0] / np.sqrt(n), rel=1e-10)
    one = most_forgetful_adapter(J, 1)
    s = np.linalg.svd(one.dV, compute_uv=False)
    assert np.all(s[:, 1] <= 1e-10 * s[:, 0].max()) and abs(np.linalg.norm(one.dV) - 1) < 1e-12
    rng = np.random.default_rng(0)
    M = np.einsum("sla,slb->slab", rng.normal(size=(300, L, d)), rng.normal(size=(300, L, d)))
    M /= np.sqrt(np.sum(M**2, axis=(1, 2, 3)))[:, None, None, None]
    rand = first_order_w2(np.einsum("sk,knd->snd", M.reshape(300, -1), J.reshape(-1, n, d)))
    assert rand.max() <= one.w2 + 1e-12 and one.w2 <= full.w2 + 1e-12
    # a fixed point of the alternation: with every layer's right factor c_ℓ held, the best left
    # factors (a top singular vector) give nothing more (the truncated SVD's start would gain
    # 1.6e-5 relative here)
    c = np.linalg.svd(one.dV)[2][:, 0]  # (L, d)
    H = np.einsum("lijnk,lj->nkli", J.reshape(L, d, d, n, d), c).reshape(n * d, L * d)
    assert np.linalg.svd(H, compute_uv=False)[0] / np.sqrt(n) <= one.w2 * (1 + 1e-9)
    z = np.zeros((1, d, d))

    def schedule(t):
        return z, one.dV[min(int(t // (T / L)), L - 1)][None]

    r = particle_tangent(base, x0, T, schedule, dt=0.05, jumps=np.arange(1, L) * T / L)
    assert first_order_w2(r.dx)[0] == pytest.approx(one.w2, rel=1e-9)
    for r_ in (1, d):
        c1 = most_forgetful_adapter(J.sum(axis=0), r_).w2
        assert L * most_forgetful_adapter(J, r_).w2 >= np.sqrt(L) * c1 * (1 - 1e-12)


def test_circle_density_w2_of_a_shift_below_a_cell():
    """``circle_density_w2`` (the W2 of forgetful_pde.csv) reads a rotation of a smooth density
    by a third of a cell as the continuum does: for ``ρ ∝ 1 + a cos θ`` rotated by ``s`` the
    circle's first-order ``W2`` is ``s min_β ‖1 + β/ρ‖_μ = s (1 − √(1 − a²))^{1/2}``
    (circle_gradient_part: ``∫ dθ/ρ = 2π/√(1 − a²)`` per unit mass), 0.632 s for a = 0.8.
    Exact cell masses on 128 cells, s = h/3: measured 1.3e-3 relative from it with 32 atoms per
    cell (the O(s) and O(h/k) terms), asserted 5e-3; 4 atoms per cell read 9.6 % more, one atom
    at the centroid 98 % more."""
    from solver.experiments.linear_response import circle_density_w2

    N = 128
    h = 2 * np.pi / N
    edges = np.arange(N + 1) * h
    th = edges[:-1] + h / 2

    def mass(shift):  # exact cell integrals of 1 + 0.8 cos(θ - shift)
        return h + 0.8 * (np.sin(edges[1:] - shift) - np.sin(edges[:-1] - shift))

    s, a = h / 3, 0.8
    exact = s * np.sqrt(1 - np.sqrt(1 - a * a))
    assert circle_density_w2(th, mass(0.0), mass(s)) == pytest.approx(exact, rel=5e-3)
