"""Several attention heads (:class:`solver.model.MultiHeadModel`): the velocity is the sum of
the heads' projected softmax averages, in the direct sum, the compiled particle sum, the fast
expansion, the particle system and the PDE."""

import numpy as np
import pytest
from mpi4py import MPI

import solver
from solver.model import Model, MultiHeadModel, TiedLoRA
from solver.velocity import FastVelocity, attention_velocity, equal_weight_velocity

COMM = MPI.COMM_WORLD


def _unit(rng, n, d):
    x = rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _heads(rng, H, d, scale=1.0):
    return scale * rng.normal(size=(H, d, d)), rng.normal(size=(H, d, d))


def _formula(x, y, w, A, V):
    """``Σ_a P_x Σ_j w_j e^{y_jᵀ A_a x} V_a y_j / Σ_j w_j e^{y_jᵀ A_a x}``, target by target."""
    out = np.zeros_like(x)
    for i, xi in enumerate(x):
        for a in range(len(A)):
            e = w * np.exp(y @ A[a] @ xi)
            m = (e[:, None] * (y @ V[a].T)).sum(axis=0) / e.sum()
            out[i] += m - (m @ xi) * xi
    return out


@pytest.mark.parametrize("d", [2, 3, 5])
def test_stacked_heads_velocity_is_the_sum_of_the_heads(d):
    rng = np.random.default_rng(d)
    x, y = _unit(rng, 7, d), _unit(rng, 11, d)
    w = rng.uniform(0.1, 1.0, size=11)
    A, V = _heads(rng, 3, d)
    ref = _formula(x, y, w, A, V)
    np.testing.assert_allclose(attention_velocity(x, y, w, A, V), ref, rtol=0, atol=1e-13)
    ref_eq = _formula(x, y, np.full(11, 1 / 11), A, V)
    np.testing.assert_allclose(equal_weight_velocity(x, y, A, V), ref_eq, rtol=0, atol=1e-13)


def test_fast_velocity_sums_the_heads_within_its_tolerance():
    """The expansion, head by head, against the direct sum (tolerance 1e-10 relative to each
    head's largest velocity; the sum of 2 heads within twice that, times 10 of margin); the
    combined report."""
    rng = np.random.default_rng(4)
    x, y = _unit(rng, 300, 3), _unit(rng, 400, 3)
    w = rng.uniform(0.1, 1.0, size=400)
    A, V = _heads(rng, 2, 3, scale=0.5)
    fv = FastVelocity(MPI.COMM_SELF, x, y, tolerance=1e-10, cache=1)
    got = fv(w, A, V)
    ref = attention_velocity(x, y, w, A, V)
    scale = max(np.abs(attention_velocity(x, y, w, A[a], V[a])).max() for a in range(2))
    assert np.abs(got - ref).max() <= 20 * 1e-10 * scale
    assert fv.report["method"] == "fast" and fv.report["heads"] == 2
    assert fv.cache >= 2  # both heads' setups kept: the second call reuses them
    np.testing.assert_allclose(fv(w, A, V), got, rtol=0, atol=1e-14)


def test_multihead_model_parameters_breakpoints_and_speed_bound():
    rng = np.random.default_rng(1)
    A, V = _heads(rng, 2, 3)
    dV = rng.normal(size=(3, 3))
    m = MultiHeadModel.from_AV(A, V)
    assert m.d == 3 and len(m.heads) == 2
    pert = m.perturbed([None, TiedLoRA(np.zeros((3, 3)), dV)])
    Ap, Vp = pert.parameters(0.3)
    np.testing.assert_array_equal(Ap, A)
    np.testing.assert_array_equal(Vp[0], V[0])
    np.testing.assert_allclose(Vp[1], V[1] + dV, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(pert.base.parameters(0.3)[1], V)
    # the bound is the sum of the heads' norms, and it is needed: two heads with V = I on a
    # concentrated measure move a token orthogonal to it at nearly 2 = ‖V_1‖ + ‖V_2‖ > max
    two = MultiHeadModel.from_AV(np.zeros((2, 3, 3)), np.stack([np.eye(3)] * 2))
    assert two.speed_bound(1.0) == pytest.approx(2.0, abs=1e-12)
    y = np.array([[1.0, 0.0, 0.0], [np.cos(0.01), np.sin(0.01), 0.0]])
    x = np.array([[0.0, 0.0, 1.0]])
    speed = np.linalg.norm(attention_velocity(x, y, np.ones(2), *two.parameters(0.0)))
    assert 1.9 < speed <= two.speed_bound(1.0)
    jumps = MultiHeadModel(
        [
            Model.from_AV(A[0], V[0]),
            Model.from_AV(A[1], V[1], solver.RandomLoRA(d=3, eta=0.1, h=0.25)),
        ]
    )
    np.testing.assert_allclose(jumps.breakpoints(1.0), [0.25, 0.5, 0.75], rtol=0, atol=1e-15)


def test_multihead_model_rejects_bad_heads():
    with pytest.raises(TypeError, match="heads"):
        MultiHeadModel([])
    with pytest.raises(TypeError, match=r"heads\[1\]"):
        MultiHeadModel([Model.from_AV(np.eye(2), np.eye(2)), np.eye(2)])
    with pytest.raises(ValueError, match=r"heads\[1\] is 3-dimensional"):
        MultiHeadModel([Model.from_AV(np.eye(2), np.eye(2)), Model.from_AV(np.eye(3), np.eye(3))])
    with pytest.raises(ValueError, match="one entry per head"):
        MultiHeadModel.from_AV(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), [None])
    with pytest.raises(ValueError, match="sphere only"):
        m = MultiHeadModel.from_AV(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)))
        solver.simulate_particles(m, np.ones((3, 2)), 1.0, geometry="euclidean")


def test_particles_with_heads_equal_the_mean_field_transformer():
    """``simulate_particles`` of a two-head model (step h) = the JAX mean-field transformer with
    those heads (its layers are the same RK4 steps; tested alone in test_nn.py)."""
    pytest.importorskip("jax")
    from solver.nn import MeanFieldTransformer
    from solver.nn._meanfield import jnp

    mf = MeanFieldTransformer(d=3, layers=3, step=0.4, heads=2)
    params = mf.init(seed=2)
    A, V = mf.attention(params, 0)
    x0 = _unit(np.random.default_rng(0), 20, 3)
    got = solver.simulate_particles(MultiHeadModel.from_AV(A, V), x0, 1.2, dt=0.4).positions[-1]
    want = np.asarray(mf.flow(params, jnp.asarray(x0)))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-13)


def test_pde_with_shared_query_heads_is_one_head_with_the_summed_value():
    """Heads with the same ``A`` share their softmax, so ``Σ_a P_x avg(V_a y) = P_x avg((Σ V_a)
    y)``: the PDE of the two-head model (base and perturbed flow, ``W2``) equals the one-head
    run to round-off, on S^1 (fast expansion) and S^2 (direct sum). ``V_2 = V_1 / 2`` and the
    perturbation on ``A`` (both heads), so that the speed bounds, hence the fixed steps, are
    the same."""
    rng = np.random.default_rng(3)
    for sphere, kw, method in ((1, {"cells": 64}, "fast"), (2, {"refinement": 1}, "direct")):
        d = sphere + 1
        sm = solver.sphere_mesh(COMM, sphere, **kw)
        A = rng.normal(size=(d, d))
        V1, dA = rng.normal(size=(2, d, d))
        one = Model.from_AV(A, 1.5 * V1)
        two = MultiHeadModel([Model.from_AV(A, V1), Model.from_AV(A, 0.5 * V1)])
        pert = TiedLoRA(0.5 * dA, np.zeros((d, d)))
        init = solver.VonMisesFisher(np.eye(d)[0], 1.0)
        common = {"vtx": False, "progress": False, "cluster_delta": None, "stepping": "fixed",
                  "method": method}  # fmt: skip
        r1 = solver.evolve(sm, one, init, 0.5, perturbed=one.perturbed(pert), **common)
        r2 = solver.evolve(sm, two, init, 0.5, perturbed=two.perturbed([pert, pert]), **common)
        if COMM.rank == 0:
            np.testing.assert_allclose(r2.density, r1.density, rtol=0, atol=1e-9)
            np.testing.assert_allclose(r2.density_perturbed, r1.density_perturbed, rtol=0,
                                       atol=1e-9)  # fmt: skip
            np.testing.assert_allclose(r2.w2, r1.w2, rtol=0, atol=1e-9)
            assert r2.w2[-1] > 1e-3
