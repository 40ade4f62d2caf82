"""The measure-level δ-cluster state ``W_2(ν_t, P(C)) < δ`` (``pde_criterion = "atoms_w2"``)
of the phase diagram's PDE under mesh refinement, against particles from the same ρ0.

The tiny preset's S^1 case ε = 0.0218 (ρ0 = 1 + 2⟨m, x⟩, δ = 0.1) on 128, 256 and 512 cells
(``h`` halved each time), and ``n = 2000`` particles at the quantiles of ρ0
(:func:`quantile_circle`: ``W_1(μ^n_0, ρ0) = O(1/n)``, no draw noise). Measured 2026-12-08
(DG0 cluster thresholds widening as h^{1/2}; 2-core box, loaded): entry of ν 6.9872 / 6.8761 /
6.8247, exit 12.3514 / 12.4068 / 12.4390, base entry 6.6191 / 6.5365 / 6.4904 (1,024 cells:
6.8009, 12.4437, 6.4687). Richardson: entry 6.7803 ± 0.044, base entry 6.4322 ± 0.058, exit
12.484 ± 0.045. Particles (n = 2000, dt = 0.1): entry 6.7804, exit 12.4107, base entry
6.4467 (dt = 0.05 moves them by at most 1e-3, n = 4000 by at most 1e-3). With the fixed
thresholds of 2026-12-07 the exit was 12.3753 / 12.4703 / 12.524 / 12.5494 (2,048: 12.5808).

DG1 (``pde_degree = 1``, measured 2026-12-08): the entries converge faster (ν 7.2188 / 6.8717
/ 6.8036 / 6.7877 / 6.7813 / 6.7808 at 64 … 2,048 cells) and to the particles'; the exit does
not (12.1822 / 12.3323 / 12.3547 / 12.5329 / 12.4585 at 128 … 2,048): DG1's cluster zone
switches off for a drifting cluster on fine meshes (tests/test_dg1_cluster_zone.py), so the
exit's strict xfail stays with DG0.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI

from solver.experiments._experiment import Run
from solver.experiments._params import load_presets
from solver.experiments.phase_diagram import (
    phase_eps,
    phase_particles_case,
    phase_pde_case,
    phase_pde_initial,
    quantile_circle,
)

CELLS = (128, 256, 512)
#: first order: the differences of successive times halve with h (ratio 2); accepted within a
#: factor 1.45 either way (measured 1.71 - 2.03)
RATIO = (2 / 1.45, 2 * 1.45)
#: the particles' own error at n = 2000, dt = 0.1: n = 4000 and dt = 0.05 each move the times by
#: at most 0.001 (measured), counted 10 times
PARTICLE_ERROR = 0.01


def richardson(t) -> tuple[float, float, float]:
    """``(t_∞, error bar, ratio)`` from times at ``h``, ``h/2``, ``h/4``: the observed ratio
    ``r = (t_1 - t_2) / (t_2 - t_3)`` and ``t_∞ = t_3 + (t_3 - t_2) / (r - 1)`` (the geometric
    tail of the differences), with the correction ``|t_∞ - t_3|`` as the error bar."""
    d1, d2 = t[0] - t[1], t[1] - t[2]
    r = d1 / d2
    t_inf = t[2] - d2 / (r - 1)
    return t_inf, abs(t_inf - t[2]), r


def _case() -> tuple[dict, float]:
    p = load_presets("phase_diagram")["tiny"]
    eps = phase_eps(p)[2]
    p.update(pde_criterion="atoms_w2", conv_draw="quantile", pde_T=13.0, conv_T=13.0,
             conv_dt=0.1, conv_save_every=0.1, conv_eps_min=eps, conv_eps_max=eps)  # fmt: skip
    return p, eps


def _pde(cells, degree: int = 0) -> list[dict]:
    p, eps = _case()
    run = Run(Path("."), MPI.COMM_SELF, False, {})  # every rank its own serial runs
    return [phase_pde_case({**p, "pde_cells": c, "pde_degree": degree},
                           {"sphere": 1, "eps": eps}, run) for c in cells]  # fmt: skip


@pytest.fixture(scope="module")
def particles():
    p, _ = _case()
    (part,) = phase_particles_case(p, {"sphere": 1, "n": 2000, "seed": 0})
    return part


@pytest.fixture(scope="module")
def measured(particles):
    return _pde(CELLS), particles


@pytest.mark.slow
@pytest.mark.parametrize("what", ["t_enter", "t_exit", "t_base_enter"])
def test_atoms_w2_times_converge_under_refinement(measured, what):
    """Entry and exit of ``W_2(ν_t, P(C)) < δ`` (and the base flow's entry) move
    monotonically under refinement at first order; the Richardson limit is what the report
    gives with its error bar. Entries: the particles from the same ρ0 agree within that bar
    (plus their own error)."""
    pde, part = measured
    t = [r[what] for r in pde]
    assert all(math.isfinite(v) for v in t), t
    t_inf, err, r = richardson(t)
    assert RATIO[0] < r < RATIO[1], (t, r)
    assert err < 0.1  # a bar small against the times (measured 0.054 - 0.070)
    if what != "t_exit":
        assert abs(part[what] - t_inf) <= err + PARTICLE_ERROR, (part[what], t_inf, err)


#: DG1 (``pde_degree = 1``): meshes coarse enough for the default suite
CELLS_DG1 = (64, 128, 256)
#: better than first order: the differences shrink by more than 2 per halving of h (second
#: order: 4); accepted within a factor 1.45 below 4 and 2 above (measured 5.10 for ν's entry,
#: 6.92 for μ's: the base entry's 64-cell error is still pre-asymptotic)
RATIO_DG1 = (4 / 1.45, 4 * 2)


@pytest.fixture(scope="module")
def dg1():
    return _pde(CELLS_DG1, degree=1)


@pytest.mark.parametrize("what", ["t_enter", "t_base_enter"])
def test_atoms_w2_entries_converge_faster_with_dg1(dg1, particles, what):
    """DG1 (``pde_degree = 1``; cluster zones as DG0 cells, the limiter elsewhere) on 64 / 128 /
    256 cells: the entries of ν and μ move monotonically at better than first order
    (measured: ν 7.2188 / 6.8717 / 6.8036, ratio 5.10; μ 6.6949 / 6.4908 / 6.4613, ratio
    6.92), and their Richardson limit (ν 6.7870 ± 0.0166, μ 6.4563 ± 0.0050) meets the
    particles' (6.7804, 6.4467) within its bar plus the particles' own error (measured
    distances 0.0066 and 0.0096). Finer meshes, measured (not run here): ν 6.7877 / 6.7813 /
    6.7808, μ 6.4477 / 6.4465 / 6.4462 at 512 / 1,024 / 2,048 cells. DG1's exit does *not*
    converge (docs/experiments.md: its cluster zone switches off on fine meshes)."""
    t = [r[what] for r in dg1]
    assert all(math.isfinite(v) for v in t), t
    t_inf, err, r = richardson(t)
    assert RATIO_DG1[0] < r < RATIO_DG1[1], (t, r)
    assert abs(particles[what] - t_inf) <= err + PARTICLE_ERROR, (particles[what], t_inf, err)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="DG0 collapse lag: the cluster trails the particles' "
                   "by a lag that falls only as h^(1/4) (tests/test_collapse.py)")  # fmt: skip
def test_atoms_w2_exit_matches_the_particles(measured):
    """The exit's Richardson limit (12.484 +- 0.045) against the particles' (12.411): apart
    by more than the bar. ν's cluster in the PDE trails the particles' from the collapse on
    (t ≈ 4 - 7) by 8.9e-4 / 5.6e-4 / 5.1e-4 rad at 256 / 1,024 / 2,048 cells (the first
    moment's O(h / σ) error while the cluster is a few cells wide, transport/_dg0.py); the
    drift (0.0089 rad per unit time) turns it into +0.06 of exit time, on top of the O(h)
    error of the other sign: the exit is not first order, so Richardson's bar is not its
    error. Strict: passes (and so fails) once fixed. DG1 does not fix it (its exit is not
    monotone: 12.35 / 12.53 / 12.46 at 512 / 1,024 / 2,048 cells; docs/experiments.md)."""
    pde, part = measured
    t_inf, err, _ = richardson([r["t_exit"] for r in pde])
    assert abs(part["t_exit"] - t_inf) <= err + PARTICLE_ERROR


def test_quantile_circle():
    """Equal arcs for the uniform density; for ρ0 = 1 + 2⟨m, x⟩ the exact CDF
    ``F(ψ) = (ψ - 2|m| sin ψ) / (2π)`` (ψ from the antipode of ``m``) at the points is
    ``(i + 1/2)/n`` to the trapezoidal error; symmetric about ``m``; bad density refused."""
    n = 64
    x = quantile_circle(lambda y: np.ones(len(y)), n)
    a = np.sort(np.mod(np.arctan2(x[:, 1], x[:, 0]), 2 * np.pi))
    np.testing.assert_allclose(np.diff(a), 2 * np.pi / n, atol=1e-9)
    p = load_presets("phase_diagram")["tiny"]
    f = phase_pde_initial(p, 2)
    u = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    m = np.array([f(u[:1]) - f(u[1:2]), f(u[2:3]) - f(u[3:4])]).ravel() / 4  # 1 + 2<m, x>
    x = quantile_circle(f, n)
    # ψ from the antipode of m: density 1 - 2|m| cos ψ, CDF (ψ - 2|m| sin ψ) / (2π)
    psi = np.mod(np.arctan2(x[:, 1], x[:, 0]) - math.atan2(m[1], m[0]) - math.pi, 2 * np.pi)
    F = (psi - 2 * np.linalg.norm(m) * np.sin(psi)) / (2 * math.pi)
    np.testing.assert_allclose(np.sort(F), (np.arange(n) + 0.5) / n, atol=1e-8)
    mean = x.mean(axis=0)
    assert abs(mean[0] * m[1] - mean[1] * m[0]) < 1e-9  # on the axis of m
    with pytest.raises(ValueError, match="density"):
        quantile_circle(lambda y: y[:, 0], n)


def test_quantile_sphere():
    """The Fibonacci lattice through the inverse Rosenblatt transform of ρ0 = 1 + 3⟨m, x⟩
    (the small preset's S^2 density, |m| = 0.168): unit points; ``z = ⟨m̂, x⟩`` at the
    ``(i + 1/2)/n`` quantiles of its exact marginal ``F(z) = (z + 1)/2 + 3|m|(z² − 1)/4`` (to
    the CDF grid's error: measured 2.7e-7, asserted 1e-6); the points' mean is ``m`` (the first
    moment of ρ0) up to the lattice's error: measured 6.9e-6 at n = 2,000 (its direction 4e-5
    rad off m; an i.i.d. draw of the same n: 0.0076 and 0.032 rad), asserted 1e-4. The uniform
    density gives the plain lattice (mean below 1/n); a density without an axis of symmetry
    gets its moments; a negative density is refused."""
    from solver.experiments.phase_diagram import quantile_sphere
    from solver.model import Uniform
    from solver.particles import sample_particles

    p = load_presets("phase_diagram")["small"]
    m = sample_particles(Uniform(), p["n"], 3, seed=p["seed"]).mean(axis=0)
    n = 2000
    x = quantile_sphere(phase_pde_initial(p, 3), n)
    assert x.shape == (n, 3) and np.abs(np.linalg.norm(x, axis=1) - 1).max() < 1e-12
    a, z = np.linalg.norm(m), x @ (m / np.linalg.norm(m))
    F = (z + 1) / 2 + 3 * a * (z * z - 1) / 4
    np.testing.assert_allclose(np.sort(F), (np.arange(n) + 0.5) / n, atol=1e-6)
    assert np.linalg.norm(x.mean(axis=0) - m) < 1e-4
    u = quantile_sphere(lambda y: np.ones(len(y)), n)
    assert np.linalg.norm(u.mean(axis=0)) < 1 / n
    # not symmetric about an axis: the azimuths follow f(z_i, ·); moments of f = 1 + x/2 +
    # 0.4 y z: mean (1/6, 0, 0), E[yz] = 0.4/15 (measured 7e-6 and 4e-5 off; i.i.d.: ~0.01)
    g = quantile_sphere(lambda y: 1 + 0.5 * y[:, 0] + 0.4 * y[:, 1] * y[:, 2], n)
    assert np.linalg.norm(g.mean(axis=0) - [1 / 6, 0, 0]) < 1e-4
    assert abs(np.mean(g[:, 1] * g[:, 2]) - 0.4 / 15) < 2e-4
    with pytest.raises(ValueError, match="density"):
        quantile_sphere(lambda y: y[:, 0], n)


def test_phase_options_checked_and_dealt():
    """``pde_criterion``, ``pde_degree`` (0, 1 or 2; not a bool or a float) and ``conv_draw``
    are checked; a quantile draw (S^1 and S^2) is one
    case per sphere and n (seed 0), the random draws ``conv_seeds`` cases per n."""
    from solver import ConfigError
    from solver.experiments.phase_diagram import phase_check, phase_particles_cases

    p = load_presets("phase_diagram")["tiny"]
    phase_check(p)
    for bad, match in (({"pde_criterion": "mass"}, "pde_criterion"),
                       ({"conv_draw": "sobol"}, "conv_draw"), ({"pde_degree": 3}, "pde_degree"),
                       ({"pde_degree": True}, "pde_degree"),
                       ({"pde_degree": 1.0}, "pde_degree")):  # fmt: skip
        with pytest.raises(ConfigError, match=match):
            phase_check({**p, **bad})
    q = {**p, "conv_draw": "quantile"}
    phase_check(q)
    assert phase_particles_cases(q) == [{"sphere": 1, "n": n, "seed": 0} for n in p["conv_n"]]
    q2 = {**q, "pde_spheres": [1, 2], "conv_spheres": [1, 2]}
    phase_check(q2)
    assert phase_particles_cases(q2) == [{"sphere": s, "n": n, "seed": 0} for s in (1, 2)
                                         for n in p["conv_n"]]  # fmt: skip
    from solver.experiments.phase_diagram import conv_points, quantile_sphere

    f3 = phase_pde_initial(q2, 3)
    np.testing.assert_array_equal(conv_points(q2, 3, 50, 0), quantile_sphere(f3, 50))
    np.testing.assert_array_equal(conv_points(q2, 2, 50, 0),
                                  quantile_circle(phase_pde_initial(q2, 2), 50))  # fmt: skip
    r = conv_points(p, 3, 50, 1)  # random: a draw of the seed, not the lattice
    assert r.shape == (50, 3) and not np.allclose(r, conv_points(p, 3, 50, 2))
    assert len(phase_particles_cases(p)) == sum(p["conv_seeds"])
