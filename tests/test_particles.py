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
