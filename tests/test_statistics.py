"""Honest statistics (solver.experiments._stats): the fit t_exit = L/ε + b on deterministic data
(no interval: its residual), against the point-mass law; intervals only over random units."""

from __future__ import annotations

import math

import numpy as np
import pytest

from solver.analysis import cluster_direction, crossing_times
from solver.experiments._common import e2_perturbation, identity_model, point_mass_depth
from solver.experiments._stats import angle, bootstrap, directions, inverse_fit
from solver.model import VonMisesFisher
from solver.particles import sample_particles, simulate_particles


def test_inverse_fit_exact_data():
    eps = np.array([0.01, 0.02, 0.05, np.nan])
    t = 0.25 / eps + 1.5
    f = inverse_fit(eps, t)
    assert f["L"] == pytest.approx(0.25, rel=1e-12) and f["b"] == pytest.approx(1.5, rel=1e-10)
    assert f["rms_residual"] < 1e-12 and f["n_points"] == 3
    assert math.isnan(inverse_fit([0.1], [3.0])["L"])  # one point: no fit
    with pytest.raises(ValueError, match="same length"):
        inverse_fit([0.1, 0.2], [1.0])


def test_exit_fit_against_the_point_mass_law():
    """t_exit = L/ε + b on particles: a tight cloud (vMF κ = 1e4, n = 8, S^1) under
    Ṽ = I − ε e2e2ᵀ, T* = first time the cluster directions are Δθ = 0.1 apart, for four ε.
    The point mass has T* = L_pm/ε exactly, L_pm = ln(tan φ0 / tan(φ0 − Δθ)); the cloud's
    width (1/√κ = 0.01), RK4 and the linear interpolation of the crossing move L by 5.3e-6
    relative and b by 6.0e-5 (measured); asserted L within 2.5e-5 of L_pm and |b| < 3e-4
    (5x)."""
    d, dth = 2, 0.1
    base = identity_model(d)
    x0 = sample_particles(VonMisesFisher((math.cos(0.7), math.sin(0.7)), 1e4), 8, d, seed=0)
    p0 = cluster_direction(x0)
    eps = np.array([0.05, 0.1, 0.2, 0.4])
    ts = []
    for e in eps:
        T = 1.5 * point_mass_depth(p0, e, dth)
        rb = simulate_particles(base, x0, T, dt=0.05, save_every=0.05)
        rp = simulate_particles(base.perturbed(e2_perturbation(d, e)), x0, T, dt=0.05,
                                save_every=0.05)  # fmt: skip
        ang = angle(directions(rb.positions), directions(rp.positions))
        ts.append(crossing_times(rp.times, -ang, -dth)[0])
    f = inverse_fit(eps, ts)
    Lpm = point_mass_depth(p0, 1.0, dth)
    assert abs(f["L"] / Lpm - 1) < 2.5e-5, (f, Lpm)
    assert abs(f["b"]) < 3e-4, f


def test_bootstrap_interval_covers_and_degenerates():
    """Over random units the percentile interval covers the mean of i.i.d. N(0, 1) draws in
    about 90 % of replicates (measured 89 %, and 81 % and 88 % for the next generator draws,
    20 units, 200 replicates: the percentile interval under-covers a little; asserted
    78-96 %); one unit gives a zero-width interval (no sampling error can be estimated)."""
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(200):
        x = rng.normal(size=20)
        _, lo, hi = bootstrap(lambda i, x=x: float(np.mean(x[i])), 20, n_boot=400, level=0.9)
        hits += lo <= 0 <= hi
    assert 0.78 <= hits / 200 <= 0.96
    est, lo, hi = bootstrap(lambda i: 3.0, 1)
    assert est == lo == hi == 3.0


def test_random_fit_names_and_drops_the_draws_not_clustered():
    """Thm 4.2's γ (random_adapters.random_fit) with one dominating draw: 10 seeds with
    W2 = 5 r at L = 1 and 64 (γ = 0) except seed 0, 20x larger at L = 64 and still moving at T
    (base speed 0.5 > SPEED_TOL). γ over all seeds is pulled up (log of the RMS: 0.446); the
    draw is named, and without it γ = 0 with a zero-width interval (the rest is exact)."""
    from solver.experiments.random_adapters import SPEED_TOL, random_fit

    rows = []
    for seed in range(10):
        for L in (1, 64):
            w = 0.05 * (20 if (seed == 0 and L == 64) else 1)
            rows.append({"L": L, "ratio": 0.01, "seed": seed, "w2": w,
                         "max_speed_T": 0.5 if seed == 0 else SPEED_TOL / 10})  # fmt: skip
    f = random_fit({"linear_max": 0.5}, rows)
    assert f["not_clustered"] == [0]
    assert f["gamma"] > 0.4
    g, lo, hi = f["gamma_clustered"]
    assert abs(g) < 1e-12 and abs(lo) < 1e-12 and abs(hi) < 1e-12
