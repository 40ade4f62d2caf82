"""solver.nn: the mean-field transformer's forward pass is the particle system, heads add,
LoRA merges as PEFT does, training runs (seeded), the standard transformer's hidden states."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("jax")

from solver import simulate_particles  # noqa: E402
from solver.model import Model, ScheduledLoRA  # noqa: E402
from solver.nn import (  # noqa: E402
    MeanFieldTransformer,
    StandardTransformer,
    hidden_state_gap,
    lora_init,
    make_task,
    merge_lora,
    train,
)
from solver.nn._meanfield import jnp  # noqa: E402  (float64 JAX)

# Forward pass vs simulate_particles: the same RK4 stages and retractions, sums taken in
# another order (JAX einsum vs the compiled loops). Measured max difference 2.2e-16 over
# d = 2, 3, 5, 8, tied and per-layer; the tolerance is ~50 ulps of a unit vector.
ROUND_OFF = 1e-14


def _cloud(n, d, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _model_of(m: MeanFieldTransformer, p: dict) -> Model:
    """The project's Model of a one-head transformer: per-layer weights as a schedule with
    jumps at the layer boundaries ``ℓ h``."""
    A0, V0 = (M[0] for M in m.attention(p, 0))
    base = Model.from_AV(A0, V0)
    if m.tied:
        return base
    mats = [tuple(M[0] for M in m.attention(p, ell)) for ell in range(m.layers)]

    def fn(t):
        A, V = mats[min(int(np.floor(t / m.step + 1e-9)), m.layers - 1)]
        return A - A0, V - V0

    jumps = m.step * np.arange(1, m.layers)
    return base.perturbed(ScheduledLoRA(d=m.d, fn=fn, jumps=jumps))


@pytest.mark.parametrize("d", [2, 3, 5, 8])
@pytest.mark.parametrize("tied", [True, False])
def test_forward_is_simulate_particles(d, tied):
    m = MeanFieldTransformer(d=d, layers=4, step=0.25, tied=tied)
    p = m.init(seed=d)
    x0 = _cloud(40, d)
    ours = np.asarray(m.flow(p, jnp.asarray(x0), all_layers=True))
    ref = simulate_particles(_model_of(m, p), x0, m.depth, dt=m.step, save_every=m.step)
    assert ref.positions.shape == ours.shape
    assert np.abs(ours - ref.positions).max() < ROUND_OFF
    assert np.abs(ours[-1] - x0).max() > 0.05  # the tokens moved: the comparison means something


def test_per_layer_weights_differ_from_tied():
    """Guards the per-layer indexing: the flow with per-layer weights is not the flow of the
    first layer's weights repeated."""
    m = MeanFieldTransformer(d=3, layers=3, step=0.3, tied=False)
    p = m.init(seed=1)
    x0 = _cloud(30, 3)
    tied = MeanFieldTransformer(d=3, layers=3, step=0.3, tied=True)
    p1 = {k: (v[:1] if k in "qkvo" else v) for k, v in p.items()}
    diff = np.abs(np.asarray(m.flow(p, jnp.asarray(x0)) - tied.flow(p1, jnp.asarray(x0))))
    assert diff.max() > 1e-3


def test_heads_add():
    """Heads sharing A: the velocity is that of one head with V = Σ_a V_a (linearity in V)."""
    d, H = 3, 3
    m = MeanFieldTransformer(d=d, layers=3, step=0.3, heads=H)
    p = m.init(seed=2)
    q1 = p["q"][:, :d]
    k1 = p["k"][:, :d]
    p["q"], p["k"] = np.tile(q1, (1, H, 1)), np.tile(k1, (1, H, 1))
    A, V = m.attention(p, 0)
    x0 = _cloud(25, d)
    one = MeanFieldTransformer(d=d, layers=3, step=0.3, heads=1)
    p1 = dict(p, q=q1, k=k1, v=V.sum(axis=0)[None], o=np.eye(d)[None])
    a = np.asarray(m.flow(p, jnp.asarray(x0)))
    b = np.asarray(one.flow(p1, jnp.asarray(x0)))
    assert np.abs(a - b).max() < ROUND_OFF
    ref = simulate_particles(Model.from_AV(A[0], V.sum(axis=0)), x0, 0.9, dt=0.3)
    assert np.abs(a - ref.positions[-1]).max() < ROUND_OFF


def test_merge_lora_is_peft():
    m = MeanFieldTransformer(d=3, layers=2, tied=False, heads=2)
    p = m.init(seed=0)
    lora = lora_init(p, ["v", "q"], r=2, seed=1)
    assert np.all(merge_lora(p, lora, 16.0)["v"] == p["v"])  # B = 0: no change
    rng = np.random.default_rng(3)
    lora["v"]["B"] = rng.normal(size=lora["v"]["B"].shape)
    merged = merge_lora(p, lora, 16.0)
    for ell in range(2):
        want = p["v"][ell] + 16.0 / 2 * lora["v"]["B"][ell] @ lora["v"]["A"][ell]
        assert np.allclose(merged["v"][ell], want, rtol=0, atol=1e-14)
    assert np.all(merged["q"] == p["q"]) and np.all(merged["k"] == p["k"])
    with pytest.raises(ValueError, match="targets"):
        lora_init(p, ["w"], r=1)
    with pytest.raises(ValueError, match="rank"):
        lora_init(p, ["v"], r=0)


def test_readout_lipschitz_constant():
    """|r(μ) − r(ν)| <= Lip · W1(μ, ν) for two token clouds (W1 exact, Euclidean cost)."""
    import ot

    m = MeanFieldTransformer(d=3, layers=1, width=8, outputs=2)
    p = m.init(seed=4)
    x, y = _cloud(30, 3, 1), _cloud(30, 3, 2)
    w = np.full(30, 1 / 30)
    W1 = ot.emd2(w, w, ot.dist(x, y, metric="euclidean"))
    gap = np.linalg.norm(np.asarray(m.readout(p, jnp.asarray(x)) - m.readout(p, jnp.asarray(y))))
    assert 0 < gap <= m.readout_lipschitz(p) * W1
    # attained: W_1 = 3 I (width = d), no bias, δ_0 against δ_{εu} (u the top right singular
    # vector of W_2): the quotient is 3 ‖W_2‖ (1 − O(ε²)) = ‖W_2‖ ‖W_1‖
    m = MeanFieldTransformer(d=3, layers=1, width=3, outputs=2)
    p = dict(m.init(seed=5), r1=3.0 * np.eye(3), r1b=np.zeros(3))
    u = np.linalg.svd(p["r2"])[2][0]
    eps = 1e-4
    x, y = np.zeros((1, 3)), eps * u[None]
    gap = np.linalg.norm(np.asarray(m.readout(p, jnp.asarray(x)) - m.readout(p, jnp.asarray(y))))
    assert gap / eps == pytest.approx(m.readout_lipschitz(p), rel=1e-6)


def test_training_is_seeded_and_lowers_the_loss():
    import jax

    m = MeanFieldTransformer(d=2, layers=2, step=0.5, width=8)
    u, y = make_task("old", 64, 16, seed=0)
    f = m.batched()

    def loss(p, b):
        return jnp.mean(jax.nn.softplus(-(2 * b[1] - 1) * f(p, b[0])[:, 0]))

    def batches(i):
        s = slice(16 * (i % 4), 16 * (i % 4 + 1))
        return jnp.asarray(u[s]), jnp.asarray(y[s])

    p0 = m.init(seed=0)
    p1, l1 = train(loss, p0, batches, steps=30, lr=0.03)
    p2, l2 = train(loss, p0, batches, steps=30, lr=0.03)
    assert np.array_equal(l1, l2)
    full = (jnp.asarray(u), jnp.asarray(y))
    assert float(loss(p1, full)) < 0.8 * float(loss(p0, full))
    mask = {k: np.zeros_like(v) for k, v in p0.items()}
    p3, _ = train(loss, p0, batches, steps=3, lr=0.03, mask=mask)
    assert all(np.array_equal(p3[k], p0[k]) for k in p0)  # everything frozen


def test_standard_transformer_hidden_states():
    st = StandardTransformer(d=8, layers=3, heads=2, mlp=16)
    p = st.init(seed=0)
    u, _ = make_task("old", 1, 20, seed=1)
    hs = np.asarray(st.hidden_states(p, jnp.asarray(u[0])))
    assert hs.shape == (4, 20, 8)
    assert np.allclose(np.linalg.norm(hs, axis=-1), 1, atol=1e-14)
    gap = hidden_state_gap(st, p, u[0])
    assert gap.shape == (4,) and gap[0] == 0 and np.all(np.isfinite(gap)) and gap[-1] > 0
    with pytest.raises(ValueError, match="heads"):
        StandardTransformer(d=6, layers=1, heads=4)


@pytest.mark.serial  # a subprocess: under mpiexec it would inherit the rank's MPI set-up
def test_import_solver_needs_no_jax():
    code = ("import sys, solver, solver.nn, solver.cli; solver.cli.build_parser(); "
            "assert 'jax' not in sys.modules, 'jax imported'")  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_bad_arguments():
    with pytest.raises(ValueError, match="d must be"):
        MeanFieldTransformer(d=1, layers=1)
    with pytest.raises(ValueError, match="step"):
        MeanFieldTransformer(d=2, layers=1, step=0.0)
    with pytest.raises(ValueError, match="task"):
        make_task("other", 1, 1)
