"""The pieces of real_models that put trained transformers on the PDE: the token law of one
input as a density on the sphere, and a standard transformer's attention as a multi-head,
layer-by-layer flow model."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("jax")

import solver  # noqa: E402
from solver.experiments.real_models import (  # noqa: E402
    projected_normal_density,
    standard_flow_model,
)


def test_projected_normal_density_on_the_circle_is_the_law_of_z_over_abs_z():
    """Mass 1 (trapezoid on 20,000 angles: error far below 1e-6) and the CDF of the angle
    against 40,000 samples: DKW gives P(sup gap > 0.012) <= 2 exp(-2 n 0.012²) < 1e-4."""
    mean, cov = np.array([0.7, -0.4]), np.array([[0.8, 0.3], [0.3, 0.5]])
    f = projected_normal_density(mean, cov)
    th = np.linspace(-np.pi, np.pi, 20001)
    dens = f(np.stack([np.cos(th), np.sin(th)], axis=1))
    assert np.trapezoid(dens, th) == pytest.approx(1.0, abs=1e-6)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(th))])
    z = np.random.default_rng(0).multivariate_normal(mean, cov, size=40000)
    a = np.sort(np.arctan2(z[:, 1], z[:, 0]))
    emp = np.arange(1, len(a) + 1) / len(a)
    assert np.abs(np.interp(a, th, cdf) - emp).max() < 0.012


def test_projected_normal_density_on_the_sphere_has_the_samples_mean():
    """S^2: mass 1 and first moment ∫ x f dσ against the mean of 40,000 samples of z/|z|
    (quadrature on a 400 x 800 latitude-longitude grid, error < 1e-4; sampling: 5 standard
    errors of a coordinate of a unit vector, 5/sqrt(40,000) = 0.025)."""
    mean = np.array([0.5, 1.0, -0.3])
    B = np.array([[1.0, 0.2, 0.0], [0.0, 0.7, 0.3], [0.1, 0.0, 0.9]])
    cov = B @ B.T
    f = projected_normal_density(mean, cov)
    th = (np.arange(400) + 0.5) * np.pi / 400
    ph = (np.arange(800) + 0.5) * 2 * np.pi / 800
    T, P = np.meshgrid(th, ph, indexing="ij")
    x = np.stack([np.sin(T) * np.cos(P), np.sin(T) * np.sin(P), np.cos(T)], axis=-1).reshape(-1, 3)
    w = (np.sin(T) * (np.pi / 400) * (2 * np.pi / 800)).ravel()
    fx = f(x)
    assert np.sum(w * fx) == pytest.approx(1.0, abs=1e-4)
    z = np.random.default_rng(1).multivariate_normal(mean, cov, size=40000)
    u = z / np.linalg.norm(z, axis=1, keepdims=True)
    np.testing.assert_allclose((w * fx) @ x, u.mean(axis=0), rtol=0, atol=0.025)
    with pytest.raises(ValueError, match="cov"):
        projected_normal_density(mean, np.zeros((3, 3)))


def test_standard_flow_model_steps_layer_by_layer_as_hidden_state_gap():
    """simulate_particles of the flow model (dt = 1) = one RK4 step of each layer's
    mean_field_matrices in turn (the flow hidden_state_gap measures against), all heads."""
    from solver.nn import MeanFieldTransformer, StandardTransformer, mean_field_matrices
    from solver.nn._meanfield import jnp

    st = StandardTransformer(d=3, layers=3, heads=3, mlp=6)
    params = st.init(seed=1)
    params["g1"] = params["g1"] * np.array([1.0, 1.3, 0.8])  # gains enter A and V
    flow = standard_flow_model(st, params)
    assert len(flow.heads) == 3 and list(flow.breakpoints(3.0)) == [1.0, 2.0]
    x0 = np.random.default_rng(2).normal(size=(30, 3))
    x0 /= np.linalg.norm(x0, axis=1, keepdims=True)
    got = solver.simulate_particles(flow, x0, 3.0, dt=1.0, save_every=1.0).positions
    mf = MeanFieldTransformer(d=3, layers=1, step=1.0, heads=3)
    x = jnp.asarray(x0)
    for ell in range(3):
        A, V = mean_field_matrices(st, params, ell)
        x = mf.layer_step(x, jnp.asarray(A), jnp.asarray(V))
        np.testing.assert_allclose(got[ell + 1], np.asarray(x), rtol=0, atol=1e-12)
