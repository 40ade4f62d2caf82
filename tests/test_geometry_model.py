"""Pure NumPy layers: meshes generators, model and LoRA schedules, initial densities."""

import numpy as np
import pytest

import solver
from solver.model import Expression, VonMisesFisher, sphere_area


@pytest.mark.parametrize("level", range(5))
def test_icosphere_counts_and_on_sphere(level):
    x, c = solver.icosphere(level)
    assert len(c) == 20 * 4**level
    assert len(x) == 10 * 4**level + 2
    assert np.abs(np.linalg.norm(x, axis=1) - 1).max() < 1e-15
    # every edge is shared by exactly two triangles (closed surface)
    e = np.sort(np.concatenate([c[:, [0, 1]], c[:, [1, 2]], c[:, [2, 0]]]), axis=1)
    _, counts = np.unique(e, axis=0, return_counts=True)
    assert np.all(counts == 2)
    # outward orientation: (b - a) x (c - a) points away from the origin
    a, b, cc = x[c[:, 0]], x[c[:, 1]], x[c[:, 2]]
    assert np.all(np.einsum("ij,ij->i", np.cross(b - a, cc - a), a + b + cc) > 0)


def test_icosphere_rejects_bad_level():
    with pytest.raises(ValueError, match="0..7"):
        solver.icosphere(8)


def test_circle_mesh():
    x, c = solver.circle_mesh(12)
    assert np.allclose(np.linalg.norm(x, axis=1), 1)
    assert np.array_equal(c[-1], [11, 0])


def test_model_and_lora():
    V = np.diag([1.0, 0.5, 0.2])
    B, A = np.array([[0.0], [0.0], [1.0]]), np.array([[1.0], [0.0], [0.0]])
    dV = solver.low_rank(B, A)
    assert np.linalg.matrix_rank(dV) == 1
    m = solver.Model(np.eye(3), 2 * np.eye(3), V, solver.TiedLoRA(np.zeros((3, 3)), dV))
    Ap, Vp = m.parameters(3.0)
    assert np.allclose(Ap, 2 * np.eye(3)) and np.allclose(Vp, V + dV)
    assert m.base.perturbation is None
    assert m.speed_bound(1.0) == pytest.approx(np.linalg.norm(V + dV, 2))


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(Q=np.eye(3)[:2], K=np.eye(3), V=np.eye(3)), "model.Q"),
        (dict(Q=np.eye(2), K=np.eye(2), V=np.eye(3)), "model.Q must be 3 x 3"),
        (dict(Q=np.eye(3), K=np.eye(3), V=np.full((3, 3), np.nan)), "NaN"),
    ],
)
def test_model_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        solver.Model(**kw)


def test_random_adapters_are_per_layer_and_seeded():
    p = solver.RandomLoRA(d=4, eta=0.3, h=0.25, s=(1.0, 0.5), seed=7)
    q = solver.RandomLoRA(d=4, eta=0.3, h=0.25, s=(1.0, 0.5), seed=7)
    assert np.array_equal(p.at(0.1)[1], q.at(0.2)[1])  # same layer, same seed
    assert not np.allclose(p.at(0.1)[1], p.at(0.3)[1])  # next layer: new draw
    assert np.linalg.matrix_rank(p.at(0.1)[1]) == 2
    assert np.allclose(p.breakpoints(1.0), [0.25, 0.5, 0.75])
    # E|ΔV|_F^2 = η^2 Σ s_a^2 (E|u|^2 E|v|^2 = 1): check on many layers
    f2 = np.mean([np.sum(p.at(0.25 * k + 0.1)[1] ** 2) for k in range(4000)])
    assert f2 == pytest.approx(0.09 * 1.25, rel=0.1)


def test_time_grid_lands_on_events():
    from solver.transport import time_grid

    t, saved = time_grid(1.0, 0.07, save_every=0.25, breakpoints=[0.1, 0.33])
    assert t[0] == 0 and t[-1] == 1.0 and np.all(np.diff(t) <= 0.07 + 1e-15)
    for e in (0.1, 0.25, 0.33, 0.5, 0.75):
        assert np.min(np.abs(t - e)) < 1e-14
    assert np.allclose(t[saved], [0, 0.25, 0.5, 0.75, 1.0])


@pytest.mark.parametrize("d", [2, 3, 5])
def test_vmf_density_normalised_and_sampler_matches(d):
    f = VonMisesFisher(tuple(np.eye(d)[0]), 3.0)
    rng = np.random.default_rng(0)
    g = rng.normal(size=(400_000, d))
    u = g / np.linalg.norm(g, axis=1, keepdims=True)
    # ∫ f dσ = |S^{d-1}| E_uniform[f]; Monte Carlo with 4e5 points: a few 1e-3
    assert sphere_area(d) * f(u).mean() == pytest.approx(1.0, rel=1e-2)
    # sampler mean <x, m> vs importance-weighted uniform estimate of the same quantity
    s = f.sample(200_000, d, rng)
    assert s[:, 0].mean() == pytest.approx(sphere_area(d) * np.mean(f(u) * u[:, 0]), abs=1e-2)


def test_expression_validation():
    with pytest.raises(ValueError, match="unknown function"):
        Expression("__import__('os')")
    with pytest.raises(ValueError, match="negative"):
        Expression("x")(np.array([[-1.0, 0.0, 0.0]]))
    e = Expression("exp(2*z) + theta*0")
    assert np.allclose(e(np.array([[0, 0, 1.0]])), np.exp(2))


def test_attention_velocity_matches_formula_and_never_overflows():
    rng = np.random.default_rng(1)
    x = solver.normalize(rng.normal(size=(50, 3)))
    y = solver.normalize(rng.normal(size=(70, 3)))
    w = rng.random(70)
    A, V = rng.normal(size=(3, 3)), rng.normal(size=(3, 3))
    k = w * np.exp(x @ A.T @ y.T)  # (i, j): w_j exp(y_jᵀ A x_i)
    ref = (k @ (y @ V.T)) / k.sum(1, keepdims=True)
    ref -= np.einsum("ij,ij->i", ref, x)[:, None] * x
    assert np.allclose(solver.attention_velocity(x, y, w, A, V), ref, rtol=1e-12, atol=1e-14)
    big = solver.attention_velocity(x, y, w, 1e4 * A, V)  # exp(1e4) would overflow
    assert np.all(np.isfinite(big))
    assert np.abs(np.einsum("ij,ij->i", big, x)).max() < 1e-13  # tangent
    assert np.all(np.linalg.norm(big, axis=1) <= np.linalg.norm(V, 2) + 1e-12)  # |X| <= |V|
    # blocking does not change the answer
    small = solver.attention_velocity(x, y, w, A, V, block_bytes=8 * 70 * 3)
    assert np.allclose(small, solver.attention_velocity(x, y, w, A, V), rtol=0, atol=1e-15)


@pytest.mark.parametrize("d,m,n", [(2, 20, 20), (3, 50, 70), (8, 9, 64)])
def test_equal_weight_velocity_is_the_direct_sum(d, m, n):
    """The compiled equal-weight sum against :func:`attention_velocity` with ``w = 1/n``: the
    same softmax in another summation order, so equal to a few ulps of ``|V|`` (each output
    is a convex combination of the ``V y_j``, ``|V y_j| <= |V|``); never overflows."""
    from solver.velocity import equal_weight_velocity

    rng = np.random.default_rng(d)
    x = solver.normalize(rng.normal(size=(m, d)))
    y = solver.normalize(rng.normal(size=(n, d)))
    V = rng.normal(size=(d, d))
    scale = np.linalg.norm(V, 2)
    for A in (rng.normal(size=(d, d)), 1e4 * rng.normal(size=(d, d)), np.zeros((d, d))):
        ref = solver.attention_velocity(x, y, np.full(n, 1.0 / n), A, V)
        out = equal_weight_velocity(x, y, A, V)
        assert out.shape == (m, d) and np.all(np.isfinite(out))
        assert np.abs(out - ref).max() <= 1e-14 * scale * max(1.0, np.abs(A).max() / 1e2)
        assert np.abs(np.einsum("ij,ij->i", out, x)).max() < 1e-13 * scale  # tangent


@pytest.mark.parametrize("on", ["A", "both"])
def test_random_adapters_on_A_and_both_are_independent_draws(on):
    """``on = "A"`` perturbs A only, ``"both"`` perturbs A and V with independent draws: the
    same ΔV as ``on = "V"`` and the same ΔA as ``on = "A"`` (streams keyed by the kind), no
    correlation between the entries of ΔA and ΔV over 2000 layers (|r| < 4/√32000 = 0.022,
    measured -0.005), and each with E|Δ|_F² = η² Σ s_a² (measured within 1.1 %; asserted 10 %)."""
    kw = dict(d=4, eta=0.3, h=0.25, s=(1.0, 0.5), seed=7)
    p = solver.RandomLoRA(on=on, **kw)
    onlyV, onlyA = solver.RandomLoRA(on="V", **kw), solver.RandomLoRA(on="A", **kw)
    ts = 0.25 * np.arange(2000) + 0.1
    dA = np.array([p.at(t)[0] for t in ts])
    dV = np.array([p.at(t)[1] for t in ts])
    np.testing.assert_array_equal(dA, [onlyA.at(t)[0] for t in ts])
    if on == "A":
        assert not dV.any()
        return
    np.testing.assert_array_equal(dV, [onlyV.at(t)[1] for t in ts])
    assert np.linalg.matrix_rank(dA[0]) == 2
    r = np.corrcoef(dA.ravel(), dV.ravel())[0, 1]
    assert abs(r) < 4 / np.sqrt(dA.size)
    for D in (dA, dV):
        assert np.mean(np.sum(D**2, axis=(1, 2))) == pytest.approx(0.09 * 1.25, rel=0.1)


def test_expression_node_limit():
    """A balanced sum of 300 leaves (599 syntax nodes, depth 10, 1,197 characters) is refused
    by the node limit alone (MAX_NODES = 500); 240 leaves (479 nodes) pass."""
    from solver.model import parse_expression
    from solver.model._initial import MAX_DEPTH, MAX_LENGTH, MAX_NODES

    def balanced(n):
        return "x" if n == 1 else f"({balanced(n // 2)}+{balanced(n - n // 2)})"

    big, ok = balanced(300), balanced(240)
    assert len(big) < MAX_LENGTH and 2 * 300 - 1 > MAX_NODES > 2 * 240 - 1 and MAX_DEPTH > 12
    with pytest.raises(ValueError, match="more than 500 syntax nodes"):
        parse_expression(big)
    assert parse_expression(ok).body is not None
