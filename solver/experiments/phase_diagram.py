r"""Fig 3 of arXiv 2402.15415: the δ-cluster state over (ε, t) on S^1 and S^2; the transition
curve ``t_exit(ε)`` and its exponent.

Sweep: ``phase.csv`` (one row per sphere and ε; ε = 0 is the base flow); figure
``phase_diagram.png``. Command line: ``scripts/exp_phase_diagram.py``.

``geometry = "euclidean-rescaled"`` runs the particle part in the authors' setting instead: the
time-rescaled Euclidean model of their public code (:func:`simulate_particles` with that
geometry: ``P_ij ∝ exp⟨Q e^{tV} z_i, K e^{tV} z_j⟩``), ``geometry = "euclidean"`` the static
one, ``ż_i = Σ_j P_ij Ṽ (z_j − z_i)``; both with ``x_0`` uniform in ``[−1, 1]^d``
(``d = sphere + 1``), ``Q = K = I``, ``Ṽ = diag(1, 1 − ε, 1, ...)``; the δ-criterion is the
same (final base positions). The point-mass law is a sphere law: ``nan`` there.

The PDE sweep (``pde.csv``, ``geometry = "sphere"`` only): for every sphere of
``pde_spheres`` and every ε, one :func:`solver.evolve` of the base and perturbed flows (DG0,
adaptive steps) to ``pde_T``, read through the measure-level δ-cluster state
(:class:`solver.run.ClusterState`, ``delta``, ``tol = pde_tol``). The uniform density, which
the particles' draw approximates, is a stationary state of the PDE (rotation invariance):
nothing would cluster. The initial density is instead (``pde_initial``)

* ``"mean"`` (default): ``ρ0(x) ∝ 1 + d ⟨m, x⟩`` with ``m = (1/n) Σ_i x_i(0)`` the mean of the
  particles' draw: the uniform density plus the draw's first moment (``∫ x ρ0 dσ = m``), the
  finite-n fluctuation that makes the particles cluster;
* ``"cube"``: ``ρ0(x) ∝ 1 / max_i |x_i|^d``, the law of ``z/|z|`` for ``z`` uniform in
  ``[−1, 1]^d`` (the authors' draw): cube-symmetric, so the base flow stays cube-symmetric
  and clusters only slowly (see docs/experiments.md).

Measure-level phases at time t of the perturbed flow ν, each read through the δ-cluster state
of ν (and of the base flow μ) against the clusters C of μ_t: not yet clustered (before ν
enters), no forgetting (``t_enter <= t < t_exit``), forgetting (``t >= t_exit``), and
*forgotten before clustering*: ν never enters within ``pde_T`` while μ is clustered
(``t >= t_base_enter``, μ's own entry); ``t_forgotten`` is then ``t_base_enter``.

The state (``pde_criterion``): ``"atoms_w2"`` (the default) is ``W_2(ν_t, P(C)) < δ``, the
Wasserstein distance to the measures on the base clusters' centres
(:func:`solver.analysis.atoms_distance`; columns ``atoms_w2``, ``atoms_w2_base``): continuous
in the data, its entry and exit move monotonically under refinement (S^1, 128 - 2,048
cells; S^2 levels 3 - 5; docs/experiments.md, tests/test_phase_convergence.py). ``"reach"``
(the default of :func:`solver.evolve` and ``solver run``) is ``m_δ <= tol`` (``mass_outside``,
``mass_outside_base``) placed by the snapped reach: not monotone under refinement once the
drifting cluster's wake outgrows the snap ring.

``pde_degree`` (0, the default; 1 or 2): the DG degree of the PDE runs (:func:`solver.evolve`'s
``degree``); on the tiny S^1 case DG1 gives entries that converge faster than DG0's and exits
that do not converge (docs/experiments.md).

Particles converging to the PDE (``particles.csv``, :func:`phase_particles_case`): for every
PDE sphere, ``n = conv_n[i]`` and draw ``seed < conv_seeds[i]``, ``n`` tokens drawn i.i.d. from
the PDE's ``ρ0`` (so that ``μ^n_0 → ρ0`` and, by the mean-field limit, the entry and exit
times converge to the PDE's as ``n → ∞``), read through the same measure-level criterion
(:func:`solver.analysis.cluster_mass_outside` ``<= pde_tol``, its crossings interpolated
through the reach :func:`solver.analysis.cluster_reach`). :func:`phase_convergence` gives per
``n`` the median and 10–90 % band over the draws and the median relative distance to the
PDE. ``t_exit(ε)`` is fitted as ``L/ε + b`` (:func:`inverse_fit`) and ``L`` set against the
point-mass law's ``ln(tan φ0 / tan(φ0 − Δθ))``: for the deterministic PDE runs without an
interval (their residual instead), for the particles with a percentile bootstrap over the
draws (the random units: whole draws resampled, the per-ε medians refitted). Each sweep's
measured wall time is in ``timing.json`` and in the
figure's titles.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..analysis import (
    atoms_distance,
    cluster_direction,
    cluster_reach,
    crossing_times,
    density_clusters,
    find_clusters,
)
from ..io._config import CLUSTER_CRITERIA
from ..model import Density, Uniform
from ..particles import GEOMETRIES, sample_particles, simulate_particles
from ._common import draw_density, e2_perturbation, identity_model, memo, point_mass_depth
from ._experiment import Experiment, Run, Sweep, run_experiment
from ._figures import figure, save_png
from ._params import positive, require
from ._stats import bootstrap, delta_distance, inverse_fit, loglog_fit, nanmedian, rows_where
from ._sweep import as_columns

__all__ = [
    "PRESETS",
    "EXPERIMENT",
    "run_phase_diagram",
    "phase_case",
    "phase_pde_case",
    "phase_pde_initial",
    "phase_particles_case",
    "phase_convergence",
    "quantile_circle",
    "quantile_sphere",
    "plot_phase_diagram",
]

_PDE = {
    "pde_spheres": [1],
    "pde_s2_eps": [0.0, 1.0],
    "conv_spheres": [1],
    "pde_cells": 128,
    "pde_refinement": 4,
    "pde_initial": "mean",
    "pde_tol": 0.01,
    "pde_save_every": 0.5,
    "pde_criterion": "atoms_w2",
    "pde_degree": 0,
    "conv_draw": "random",
}
PRESETS = {
    "tiny": {"spheres": [1, 2], "n": 20, "seed": 0, "eps_min": 0.008, "eps_max": 0.036,
             "n_eps": 4, "T": 80.0, "dt": 0.2, "delta": 0.1, "geometry": "sphere",
             **_PDE, "pde_T": 32.0,
             "conv_n": [20, 200], "conv_seeds": [8, 8], "conv_eps_min": 0.012,
             "conv_eps_max": 0.025, "conv_T": 32.0, "conv_dt": 0.25, "conv_save_every": 0.25},
    "small": {"spheres": [1, 2], "n": 20, "seed": 0, "eps_min": 0.001, "eps_max": 0.075,
              "n_eps": 10, "T": 300.0, "dt": 0.1, "delta": 0.1, "geometry": "sphere",
              **_PDE, "pde_spheres": [1, 2], "pde_s2_eps": [0.015, 0.05], "pde_T": 250.0,
              "conv_n": [20, 200, 2000], "conv_seeds": [4, 4, 2], "conv_eps_min": 0.006,
              "conv_eps_max": 0.02, "conv_T": 40.0, "conv_dt": 0.25, "conv_save_every": 0.25},
    "paper": {"spheres": [1, 2], "n": 20, "seed": 0, "eps_min": 0.001, "eps_max": 0.075,
              "n_eps": 16, "T": 600.0, "dt": 0.1, "delta": 0.1, "geometry": "sphere",
              **_PDE, "pde_spheres": [1, 2], "pde_s2_eps": [0.002, 0.05], "pde_T": 300.0,
              "conv_spheres": [1, 2], "conv_n": [20, 200, 2000, 20000],
              "conv_seeds": [8, 8, 4, 2], "conv_eps_min": 0.013, "conv_eps_max": 0.025,
              "conv_T": 50.0, "conv_dt": 0.25, "conv_save_every": 0.25},
}  # fmt: skip
PDE_INITIALS = ("mean", "cube")
#: the δ-cluster state of the PDE and of the particles drawn from its ρ0: ``"atoms_w2"`` (the
#: default: ``W_2(ν_t, P(C)) < δ``, the Wasserstein distance to the measures on the base
#: clusters' centres: continuous in the data, converging under refinement;
#: :func:`solver.analysis.atoms_distance`), ``"atoms_w2_hull"`` (the PDE's without the floor the
#: cells put under a cluster's spread, :func:`solver.analysis.hull_w2`; the particles' is
#: ``"atoms_w2"``'s) or ``"reach"`` (the snapped reach ``q_tol < δ``)
PDE_CRITERIA = CLUSTER_CRITERIA
#: how the particles of ``particles.csv`` are drawn from ρ0: ``"random"`` (i.i.d., ``conv_seeds``
#: draws per n) or ``"quantile"`` (one deterministic draw per n: on S^1 the angles at the
#: ``(i + 1/2)/n`` quantiles of ρ0 from the antipode of its first moment, ``W_1(μ^n_0, ρ0) =
#: O(1/n)``; on S^2 a Fibonacci lattice through the inverse Rosenblatt transform of ρ0,
#: :func:`quantile_sphere`; neither has the draws' ``n^{-1/2}`` noise)
CONV_DRAWS = ("random", "quantile")

PHASE_COLUMNS = ["t_enter", "t_exit", "t_exit_pointmass", "phi0", "final_distance"]
PDE_COLUMNS = ["t_enter", "t_exit", "t_base_enter", "t_base_exit", "t_forgotten",
               "t_exit_pointmass", "phi0", "clusters", "mass_outside_final", "cells",
               "t_end"]  # fmt: skip
CONV_COLUMNS = ["eps", "t_enter", "t_exit", "t_base_enter", "t_base_exit"]


def phase_check(p: dict) -> None:
    positive(p, "n", "T", "dt", "delta", "eps_min", "eps_max", "n_eps")
    require(p, "spheres", all(s in (1, 2, 3) for s in p["spheres"]), "a list of 1, 2 or 3")
    require(p, "eps_max", p["eps_max"] >= p["eps_min"], ">= eps_min")
    require(p, "geometry", p["geometry"] in GEOMETRIES, f"one of {GEOMETRIES}")
    positive(p, "pde_T", "pde_cells", "pde_refinement", "pde_save_every")
    require(p, "pde_spheres", all(s in (1, 2) for s in p["pde_spheres"]), "a list of 1 or 2")
    lo_hi = p["pde_s2_eps"]
    require(p, "pde_s2_eps", len(lo_hi) == 2 and 0 <= lo_hi[0] <= lo_hi[1],
            "[lo, hi] with 0 <= lo <= hi")  # fmt: skip
    require(p, "conv_spheres", all(s in p["pde_spheres"] for s in p["conv_spheres"]),
            f"a list of spheres of pde_spheres = {p['pde_spheres']}")  # fmt: skip
    require(p, "pde_initial", p["pde_initial"] in PDE_INITIALS, f"one of {PDE_INITIALS}")
    require(p, "pde_tol", 0 <= p["pde_tol"] < 1, "in [0, 1)")
    require(p, "pde_criterion", p["pde_criterion"] in PDE_CRITERIA, f"one of {PDE_CRITERIA}")
    deg = p["pde_degree"]
    ok = isinstance(deg, (int, np.integer)) and not isinstance(deg, bool) and deg in (0, 1, 2)
    require(p, "pde_degree", ok, "0, 1 or 2 (the DG degree of the PDE runs)")
    require(p, "conv_draw", p["conv_draw"] in CONV_DRAWS, f"one of {CONV_DRAWS}")

    positive(p, "conv_n", "conv_seeds", "conv_T", "conv_dt", "conv_save_every", "conv_eps_min",
             "conv_eps_max")  # fmt: skip
    require(p, "conv_seeds", len(p["conv_seeds"]) == len(p["conv_n"]),
            f"a list of {len(p['conv_n'])} draw counts, one per conv_n")  # fmt: skip
    require(p, "conv_eps_max", p["conv_eps_max"] >= p["conv_eps_min"], ">= conv_eps_min")
    require(p, "conv_save_every", p["conv_save_every"] >= p["conv_dt"], ">= conv_dt")


def phase_eps(p: dict) -> list[float]:
    return [float(e) for e in np.geomspace(p["eps_min"], p["eps_max"], p["n_eps"])]


def phase_cases(p: dict) -> list[dict]:
    """One case per sphere and ε (ε = 0: the base flow itself)."""
    return [{"sphere": s, "eps": e} for s in p["spheres"] for e in [0.0] + phase_eps(p)]


def phase_pde_cases(p: dict) -> list[dict]:
    """One PDE case per sphere of ``pde_spheres`` and ε (both flows in one run); none for a
    Euclidean ``geometry`` (the PDE is the sphere model)."""
    if p["geometry"] != "sphere":
        return []
    lo, hi = p["pde_s2_eps"]
    return [{"sphere": s, "eps": e} for s in p["pde_spheres"] for e in phase_eps(p)
            if s == 1 or lo <= e <= hi]  # fmt: skip


def _phase_x0(p: dict, d: int) -> np.ndarray:
    """Uniform on S^{d-1} (sphere) or in ``[−1, 1]^d`` (euclidean), seed ``p["seed"]``."""
    if p["geometry"] == "sphere":
        return sample_particles(Uniform(), p["n"], d, seed=p["seed"])
    return np.random.default_rng(p["seed"]).uniform(-1.0, 1.0, size=(p["n"], d))


def _phase_run(p: dict, model, x0: np.ndarray):
    return simulate_particles(model, x0, p["T"], dt=p["dt"], save_every=p["dt"],
                              geometry=p["geometry"])  # fmt: skip


def _phase_base(p: dict, d: int):
    x0 = _phase_x0(p, d)
    key = ("phase-base", p["geometry"], d, p["n"], p["seed"], p["T"], p["dt"])
    return x0, memo(key, lambda: _phase_run(p, identity_model(d), x0))


def phase_case(p: dict, case: dict) -> dict:
    """δ-cluster entry/exit times of the flow with ``Ṽ = I − ε e_2e_2ᵀ`` on S^{sphere}.

    C = final positions of the unperturbed run (same ``x0`` for every ε); ``t_exit_pointmass``
    is :func:`point_mass_depth` from the base cluster direction with
    ``Δθ = 2 arcsin(δ/2)`` (the turn at which a point mass leaves the δ-ball)."""
    d = int(case["sphere"]) + 1
    eps = float(case["eps"])
    x0, rb = _phase_base(p, d)
    C = rb.positions[-1]
    if eps == 0:
        r = rb
    else:
        model = identity_model(d).perturbed(e2_perturbation(d, eps))
        r = _phase_run(p, model, x0)
    D = delta_distance(r.positions, C)
    te, tx = crossing_times(r.times, D, p["delta"], strict=True)
    nan = float("nan")
    if p["geometry"] != "sphere":
        return {"t_enter": te, "t_exit": tx, "t_exit_pointmass": nan, "phi0": nan,
                "final_distance": float(D[-1])}  # fmt: skip
    u = cluster_direction(C)
    dtheta = 2 * math.asin(p["delta"] / 2)
    return {
        "t_enter": te,
        "t_exit": tx,
        "t_exit_pointmass": point_mass_depth(u, eps, dtheta) if eps > 0 else nan,
        "phi0": math.asin(min(1.0, abs(u[1]))),
        "final_distance": float(D[-1]),
    }


def phase_pde_initial(p: dict, d: int):
    """The PDE's initial density on S^{d−1} (unnormalised, ``f(x)`` for ``x`` (N, d)).

    ``"mean"``: ``1 + d ⟨m, x⟩``, ``m`` the mean of the particles' draw (its first moment is
    ``m``, since ``∫ x xᵀ dσ = I/d`` for the normalised surface measure σ; positive when
    ``d|m| < 1``). ``"cube"``: ``1 / max_i |x_i|^d`` (the law of ``z/|z|``, z uniform in the
    cube: the density of directions is ``∝ ∫_0^{r(x)} r^{d−1} dr``, ``r(x) = 1/max_i |x_i|``).
    """
    if p["pde_initial"] == "cube":
        return lambda x: np.max(np.abs(x), axis=1) ** (-d)
    x0 = sample_particles(Uniform(), p["n"], d, seed=p["seed"])
    return draw_density(x0, "pde_initial = 'mean'")


def phase_pde(p: dict, sphere: int, eps: float, comm, progress: bool = False):
    """Base and perturbed flow of the PDE in one :func:`solver.evolve` (DG of degree
    ``pde_degree``, 0 by default; adaptive), to
    ``pde_T`` or to the first saved time after ν's exit (``stop_after_exit``: from there on
    the phase is forgetting). The steps are held by the cells that hold all but
    ``ClusterState.LIGHT * pde_tol`` of the mass (``tail_mass``: what the cluster search also
    leaves out), so they grow as soon as the clusters have formed."""
    from ..mesh import sphere_mesh
    from ..run import ClusterState, evolve

    d = sphere + 1
    size = {"cells": p["pde_cells"]} if sphere == 1 else {"refinement": p["pde_refinement"]}
    sm = sphere_mesh(comm, sphere, **size)
    base = identity_model(d)
    return evolve(sm, base, phase_pde_initial(p, d), p["pde_T"],
                  perturbed=base.perturbed(e2_perturbation(d, eps)),
                  save_every=p["pde_save_every"], w2=False, vtx=False, progress=progress,
                  cluster_delta=p["delta"], cluster_tol=p["pde_tol"],
                  cluster_criterion=p["pde_criterion"], stop_after_exit=True,
                  tail_mass=ClusterState.LIGHT * p["pde_tol"],
                  degree=p["pde_degree"])  # fmt: skip


#: the point-mass law's prefactor (t_exit ≈ c / ε, fitted) and the base flow's entry time,
#: about the same on both spheres; for :func:`phase_pde_cost` only
_LAW_C, _T_ENTER = {1: 0.25, 2: 0.6}, 8.0


def phase_pde_cost(p: dict, case: dict) -> float:
    """A rough estimate of a PDE case's run time (the order in which the ranks take the cases,
    see :func:`run_sweep`): about 400 steps of collapse, then 2.2 steps per unit time (held
    by the clusters' contraction) to ``t_end``, at ``1 + cells / 2400`` times the cost of a
    step on 128 cells (measured on the presets' meshes); ``t_end`` the point-mass exit
    ``c / ε``, or ``pde_T`` where that comes before the base flow's entry (ν is then
    forgotten before clustering and never exits)."""
    s, eps = int(case["sphere"]), float(case["eps"])
    cells = p["pde_cells"] if s == 1 else 20 * 4 ** p["pde_refinement"]
    t_exit = _LAW_C[s] / eps if eps > 0 else math.inf
    t_end = p["pde_T"] if t_exit < _T_ENTER else min(p["pde_T"], t_exit)
    return (1 + cells / 2400) * (400 + 2.2 * t_end)


def phase_pde_case(p: dict, case: dict, run: Run) -> dict | None:
    """Measure-level entry/exit times of the PDE (all ranks; the row on rank 0).

    ``t_enter``/``t_exit``: ``mass_outside <= pde_tol`` (ν against μ_t's clusters);
    ``t_base_enter``/``t_base_exit``: ``mass_outside_base <= pde_tol``, each placed by the
    crossing of its reach through ``delta`` (``reach < delta``, interpolated between steps:
    :class:`solver.run.ClusterState`), or with ``pde_criterion = "atoms_w2"`` of
    ``atoms_w2`` / ``atoms_w2_base`` (each flow's ``W_2`` to the measures on μ_t's cluster
    centres) through ``delta``; ``t_forgotten``:
    ``t_base_enter`` when ν never enters (forgotten before clustering), else ``nan``;
    ``t_exit_pointmass``: :func:`point_mass_depth` from the base flow's final cluster
    direction (the heaviest cluster's centre), ``Δθ = 2 arcsin(δ/2)``; ``t_end``: where the
    run ended (``pde_T``, or the first saved time after ν's exit); ``clusters`` and
    ``mass_outside_final`` are at ``t_end``."""
    s, eps = int(case["sphere"]), float(case["eps"])
    res = phase_pde(p, s, eps, run.comm, progress=run.progress)
    base = res.column(f"{p['pde_criterion']}_base")
    tbe, tbx = crossing_times(res.step_times, base, p["delta"], strict=True)
    if run.comm.rank != 0:
        return None
    u = density_clusters(res.centroids, res.density[-1] * res.areas, res.areas).centres[0]
    nan = float("nan")
    return {
        "t_enter": res.t_enter, "t_exit": res.t_exit, "t_base_enter": tbe, "t_base_exit": tbx,
        "t_forgotten": tbe if math.isnan(res.t_enter) else nan,
        "t_exit_pointmass": point_mass_depth(u, eps, 2 * math.asin(p["delta"] / 2)),
        "phi0": math.asin(min(1.0, abs(u[1]))), "clusters": int(res.column("clusters")[-1]),
        "mass_outside_final": float(res.column("mass_outside")[-1]), "cells": len(res.areas),
        "t_end": float(res.step_times[-1]),
    }  # fmt: skip


def phase_conv_eps(p: dict) -> list[float]:
    """The ε of the PDE sweep in ``[conv_eps_min, conv_eps_max]`` (bit-identical floats)."""
    return [e for e in phase_eps(p) if p["conv_eps_min"] <= e <= p["conv_eps_max"]]


def phase_particles_cases(p: dict) -> list[dict]:
    """One case per PDE sphere, ``n = conv_n[i]`` and draw ``seed < conv_seeds[i]`` (none for a
    Euclidean ``geometry`` or without ε in the ``conv_eps`` range)."""
    if p["geometry"] != "sphere" or not phase_conv_eps(p):
        return []
    if p["conv_draw"] == "quantile":  # one deterministic draw per n
        return [{"sphere": s, "n": int(n), "seed": 0} for s in p["conv_spheres"]
                for n in p["conv_n"]]  # fmt: skip
    return [{"sphere": s, "n": int(n), "seed": k} for s in p["conv_spheres"]
            for n, k_n in zip(p["conv_n"], p["conv_seeds"], strict=True)
            for k in range(int(k_n))]  # fmt: skip


#: the lightest base cluster taken as an atom by the particles' ``atoms_w2`` criterion (the
#: PDE's :func:`density_clusters` default)
ATOM_MIN_MASS = 1e-3


@dataclass(frozen=True)
class _PDEInitial(Density):
    """The PDE's initial density :func:`phase_pde_initial` as a :class:`Density`: particles
    drawn i.i.d. from it (rejection sampling) converge to the PDE as ``n → ∞``."""

    f: Callable

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.f(x)


def _measure_times(p: dict, res, centres) -> tuple[float, float]:
    """Entry/exit of ``m_δ <= pde_tol`` (equal weights), the measure-level criterion of the
    PDE: the crossings of the reach ``q_tol < δ`` (:func:`cluster_reach`), or with
    ``pde_criterion = "atoms_w2"`` of ``W_2(μ^n_t, P(C)) < δ`` (:func:`atoms_distance`),
    interpolated between the saved times as the PDE's are between its steps."""
    if p["pde_criterion"] in ("atoms_w2", "atoms_w2_hull"):
        q = atoms_distance(res.positions, None, centres)
    else:
        q = cluster_reach(res.positions, None, centres, p["pde_tol"])
    return crossing_times(res.times, q, p["delta"], strict=True)


def quantile_circle(f: Callable, n: int, grid: int = 1 << 16) -> np.ndarray:
    """``n`` points on S^1 at the ``(i + 1/2)/n`` quantiles of the density ``f`` (of points
    ``(N, 2)``, unnormalised), the angle measured from the antipode of its first moment (for a
    density symmetric about its mode the points are symmetric too). The CDF is the
    trapezoidal rule on ``grid`` equal arcs, inverted by linear interpolation (error
    ``O(grid^{-2})``)."""
    th = np.linspace(-np.pi, np.pi, grid + 1)
    u = np.column_stack((np.cos(th), np.sin(th)))
    v = f(u)
    m = np.trapezoid(v[:, None] * u, th, axis=0)
    th = th + math.atan2(m[1], m[0]) + math.pi  # from the antipode of the first moment
    v = f(np.column_stack((np.cos(th), np.sin(th))))
    if not (np.all(np.isfinite(v)) and np.all(v >= 0) and v.sum() > 0):
        raise ValueError("the density must be finite, non-negative and not zero on S^1")
    cdf = np.concatenate(([0.0], np.cumsum(0.5 * (v[1:] + v[:-1]))))
    a = np.interp((np.arange(n) + 0.5) / n * cdf[-1], cdf, th)
    return np.column_stack((np.cos(a), np.sin(a)))


GOLDEN = (1 + math.sqrt(5)) / 2


def quantile_sphere(f: Callable, n: int, grid: int = 1024, azimuths: int = 128) -> np.ndarray:
    """``n`` points on S^2 placed by the density ``f`` (of points ``(N, 3)``, unnormalised): a
    Fibonacci lattice mapped by the inverse Rosenblatt transform of ``f`` about the axis ``a``
    of its first moment. With ``z = ⟨a, x⟩`` (the surface measure is ``dz dφ``), point ``i``
    has ``z_i`` at the ``(i + 1/2)/n`` quantile of the marginal ``∫ f dφ`` (counted from the
    antipode of the first moment) and its azimuth at the quantile ``frac(i/ϕ)`` (ϕ the golden
    ratio) of ``f(z_i, ·)``: for a density symmetric about ``a`` the azimuths are the golden
    angles and the points' mean lies on ``a`` up to the lattice's ``O(log n / n)``, without a
    random draw's ``n^{-1/2}`` noise. CDFs: trapezoidal rule on ``grid`` levels of ``z`` and
    ``azimuths`` equal arcs, inverted by linear interpolation."""
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n}")
    n = int(n)
    z = np.linspace(-1.0, 1.0, grid + 1)
    ph = np.linspace(0.0, 2 * np.pi, azimuths, endpoint=False)

    def points(zz, pp, frame):
        r = np.sqrt(np.clip(1 - zz * zz, 0.0, None))
        a, e1, e2 = frame
        return (zz[..., None] * a + (r * np.cos(pp))[..., None] * e1
                + (r * np.sin(pp))[..., None] * e2)  # fmt: skip

    eye = np.eye(3)
    Z, P = np.meshgrid(z, ph, indexing="ij")
    v = f(points(Z, P, eye).reshape(-1, 3)).reshape(Z.shape)
    if not (np.all(np.isfinite(v)) and np.all(v >= 0) and v.sum() > 0):
        raise ValueError("the density must be finite, non-negative and not zero on S^2")
    m = np.trapezoid(np.einsum("zp,zpd->zd", v, points(Z, P, eye)), z, axis=0)
    a = m / np.linalg.norm(m) if np.linalg.norm(m) > 0 else eye[2]
    e1 = np.cross(a, eye[np.argmin(np.abs(a))])
    e1 /= np.linalg.norm(e1)
    frame = (a, e1, np.cross(a, e1))
    Z, P = np.meshgrid(z, ph, indexing="ij")
    marg = f(points(Z, P, frame).reshape(-1, 3)).reshape(Z.shape).mean(axis=1)
    cdf = np.concatenate(([0.0], np.cumsum(0.5 * (marg[1:] + marg[:-1]))))
    zi = np.interp((np.arange(n) + 0.5) / n * cdf[-1], cdf, z)
    u = np.mod(np.arange(n) / GOLDEN, 1.0)
    phe = np.append(ph, 2 * np.pi)
    out = np.empty((n, 3))
    for s in range(0, n, 2048):
        zz, uu = zi[s : s + 2048], u[s : s + 2048]
        w = f(points(np.repeat(zz, azimuths), np.tile(ph, len(zz)), frame)).reshape(-1, azimuths)
        w = np.concatenate((w, w[:, :1]), axis=1)
        c = np.concatenate((np.zeros((len(zz), 1)), np.cumsum(0.5 * (w[:, 1:] + w[:, :-1]),
                                                              axis=1)), axis=1)  # fmt: skip
        t = uu * c[:, -1]
        k = np.clip(np.sum(c <= t[:, None], axis=1) - 1, 0, azimuths - 1)
        rows = np.arange(len(zz))
        lo, hi = c[rows, k], c[rows, k + 1]
        frac = np.where(hi > lo, (t - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0)
        pi = phe[k] + frac * (phe[k + 1] - phe[k])
        out[s : s + 2048] = points(zz, pi, frame)
    return out


def conv_points(p: dict, d: int, n: int, seed: int) -> np.ndarray:
    """The ``n`` particles of ``particles.csv`` on S^{d−1} drawn from the PDE's ρ0:
    ``conv_draw = "quantile"``: :func:`quantile_circle` (d = 2) or :func:`quantile_sphere`
    (d = 3), deterministic; ``"random"``: i.i.d. by rejection sampling with ``seed``."""
    f = phase_pde_initial(p, d)
    if p["conv_draw"] == "quantile":
        return (quantile_circle if d == 2 else quantile_sphere)(f, n)
    return _PDEInitial(f).sample(n, d, np.random.default_rng(seed))


def phase_particles_case(p: dict, case: dict) -> list[dict]:
    r"""Measure-level entry/exit times of ``n`` particles drawn i.i.d. (seed ``seed``) from
    the PDE's initial density, one row per ε of :func:`phase_conv_eps`.

    Base run ``μ^n`` (``Q = K = V = I``) and one perturbed run ``ν^n`` per ε
    (``Ṽ = I − ε e_2e_2ᵀ``), the same draw, to ``conv_T`` by :func:`simulate_particles`
    (whatever velocity evaluation it uses by default), saved every ``conv_save_every``.
    State: ``m_δ(ν^n_t) = #{i: min_c |x_i(t) − c| >= δ} / n <= pde_tol``
    (:func:`cluster_mass_outside`; its crossings from :func:`cluster_reach`, the PDE's
    criterion, with its ``tol``); ``C`` = the final base configuration (its atoms: the support of
    ``μ^n_{conv_T}``). With ``pde_criterion = "atoms_w2"``: ``W_2(ν^n_t, P(C)) < δ``
    (:func:`atoms_distance`), ``C`` the centres of the final base configuration's clusters
    (:func:`find_clusters`, radius ``δ/2``, at least ``ATOM_MIN_MASS`` each, as the PDE's
    modes): a straggler still crossing the sphere would otherwise be an atom. With
    ``conv_draw = "quantile"`` the draw is :func:`quantile_circle` (S^1) or
    :func:`quantile_sphere` (S^2) of ρ0 (``seed`` unused). The
    PDE takes ``C`` from ``μ_t`` at every saved time instead; both are the same single point
    in the limit, since ``ρ0 = 1 + d⟨m, x⟩`` is invariant under the
    rotations about ``m`` and so is the base flow (``Q = K = V = I`` commute with them): its
    only mode stays on the axis ``m``. ``t_base_*``: the same for ``μ^n``."""
    d = int(case["sphere"]) + 1
    n, seed = int(case["n"]), int(case["seed"])
    x0 = conv_points(p, d, n, seed)

    def run(model):
        return simulate_particles(model, x0, p["conv_T"], dt=p["conv_dt"],
                                  save_every=p["conv_save_every"])  # fmt: skip

    base = run(identity_model(d))
    C = base.positions[-1]
    if p["pde_criterion"] in ("atoms_w2", "atoms_w2_hull"):  # the base centres, as the PDE's
        C = find_clusters(C, None, radius=p["delta"] / 2, min_mass=ATOM_MIN_MASS).centres
    tbe, tbx = _measure_times(p, base, C)
    rows = []
    for eps in phase_conv_eps(p):
        te, tx = _measure_times(p, run(identity_model(d).perturbed(e2_perturbation(d, eps))), C)
        rows.append({"eps": eps, "t_enter": te, "t_exit": tx, "t_base_enter": tbe,
                     "t_base_exit": tbx})  # fmt: skip
    return rows


def _relative_distance(t, ref) -> np.ndarray:
    """``|t − ref| / ref``; ``inf`` where exactly one of them is finite (a missed entry or
    exit is far), ``nan`` where neither is."""
    t, ref = np.asarray(t, float), np.broadcast_to(np.asarray(ref, float), np.shape(t))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.abs(t - ref) / ref
    out[np.isfinite(t) != np.isfinite(ref)] = np.inf
    out[~np.isfinite(t) & ~np.isfinite(ref)] = np.nan
    return out


def phase_convergence(p: dict, conv_rows, pde_rows, sphere: int, n_boot: int = 2000) -> dict:
    """Particles against the PDE on ``S^{sphere}``, per ``n``.

    Per ε: median and 10–90 % quantiles over the draws of ``t_enter`` and ``t_exit``
    (draws without a finite time left out; ``missed``: their number). Per ``n``: the median
    over draws and ε of the relative distance ``|t − t_PDE| / t_PDE`` (a missed time counts
    as ``inf``; ε where both miss are left out) for ``t_exit`` and ``t_enter``; the fit
    ``t_exit ≈ L/ε + b`` of the per-ε medians (:func:`inverse_fit`) with a 90 % percentile
    bootstrap over the draws (``n_boot`` resamples of whole draws, seed 0; a resample whose
    medians leave fewer than two ε is dropped)."""
    pde = {r["eps"]: r for r in pde_rows if r["sphere"] == sphere}
    out = {}
    for n in p["conv_n"]:
        rows = [r for r in conv_rows if r["sphere"] == sphere and r["n"] == n]
        if not rows:
            continue
        eps = sorted({r["eps"] for r in rows})
        per = {k: [] for k in ("median_exit", "q10_exit", "q90_exit", "median_enter",
                               "q10_enter", "q90_enter", "missed_exit")}  # fmt: skip
        dx, de = [], []
        for e in eps:
            c = as_columns([r for r in rows if r["eps"] == e])
            for what, col in (("exit", "t_exit"), ("enter", "t_enter")):
                v = c[col][np.isfinite(c[col])]
                q = np.quantile(v, [0.5, 0.1, 0.9]) if v.size else [np.nan] * 3
                per[f"median_{what}"].append(float(q[0]))
                per[f"q10_{what}"].append(float(q[1]))
                per[f"q90_{what}"].append(float(q[2]))
            per["missed_exit"].append(int(np.sum(~np.isfinite(c["t_exit"]))))
            if e in pde:
                dx.append(_relative_distance(c["t_exit"], pde[e]["t_exit"]))
                de.append(_relative_distance(c["t_enter"], pde[e]["t_enter"]))
        dx = np.concatenate(dx) if dx else np.array([np.nan])
        de = np.concatenate(de) if de else np.array([np.nan])
        fit = inverse_fit(eps, per["median_exit"])
        seeds = sorted({r["seed"] for r in rows})
        tab = {(r["seed"], r["eps"]): r["t_exit"] for r in rows}
        grid = np.array([[tab.get((sd, e), np.nan) for e in eps] for sd in seeds])

        def L_of(idx, grid=grid, eps=eps):
            with np.errstate(all="ignore"):
                med = [np.median(v[np.isfinite(v)]) if np.isfinite(v).any() else np.nan
                       for v in grid[idx].T]  # fmt: skip
            return inverse_fit(eps, med)["L"]

        fit["L_lo"] = fit["L_hi"] = float("nan")  # one draw (quantiles): nothing to resample
        if len(seeds) > 1:
            _, fit["L_lo"], fit["L_hi"] = bootstrap(L_of, len(seeds), n_boot=n_boot, level=0.9)
        out[int(n)] = {
            "eps": eps, **per, "draws": len(rows) // len(eps),
            "distance_exit": float(np.median(dx[~np.isnan(dx)])) if (~np.isnan(dx)).any()
            else float("nan"),
            "distance_enter": float(np.median(de[~np.isnan(de)])) if (~np.isnan(de)).any()
            else float("nan"),
            "fit": fit,
        }  # fmt: skip
    return out


def phase_fit(rows, sphere) -> dict:
    """Transition curve ``t_exit ≈ c ε^{−α}`` fitted over the ε with a finite exit."""
    sel = [r for r in rows if r["sphere"] == sphere and r["eps"] > 0]
    c = as_columns(sel)
    slope, pref = loglog_fit(c["eps"], c["t_exit"])
    pm_slope, _ = loglog_fit(c["eps"], c["t_exit_pointmass"])
    base = rows_where(rows, sphere=sphere, eps=0.0)[0]
    far = c["t_exit"] >= 3 * base["t_enter"]  # exit well after the clustering (nan: False)
    slope_far, _ = loglog_fit(c["eps"][far], c["t_exit"][far])
    ratio = c["t_exit"] / c["t_exit_pointmass"]
    return {
        "alpha": -slope, "prefactor": pref, "pointmass_alpha": -pm_slope,
        "alpha_late_exits": -slope_far, "n_late_exits": int(far.sum()),
        "n_points": int(np.isfinite(c["t_exit"]).sum()),
        "base_t_enter": base["t_enter"], "base_t_exit": base["t_exit"],
        "median_ratio_to_pointmass": nanmedian(ratio),
        "eps": c["eps"], "t_enter": c["t_enter"], "t_exit": c["t_exit"],
    }  # fmt: skip


def phase_pde_fit(rows, sphere) -> dict:
    """The PDE's transition curve, deterministic (one run per ε: no interval). ``alpha``: the
    least-squares exponent of ``t_exit ≈ c ε^{−α}``; ``inverse``: ``t_exit ≈ L/ε + b``
    (:func:`inverse_fit`, with its residual), over all finite exits and over those later than
    3 ``t_base_enter``; ``L_pointmass``: the point-mass law's ``ε t_exit_pointmass``
    (``ln(tan φ0 / tan(φ0 − Δθ))``, median over ε) and ``L / L_pointmass``."""
    c = as_columns([r for r in rows if r["sphere"] == sphere])
    slope, pref = loglog_fit(c["eps"], c["t_exit"])
    with np.errstate(invalid="ignore"):
        late = c["t_exit"] >= 3 * c["t_base_enter"]  # well after the clustering (nan: False)
    inv = inverse_fit(c["eps"], c["t_exit"])
    Lpm = nanmedian(c["eps"] * c["t_exit_pointmass"])
    return {
        "alpha": -slope, "prefactor": pref, "n_points": int(np.isfinite(c["t_exit"]).sum()),
        "inverse": inv, "inverse_late_exits": inverse_fit(c["eps"][late], c["t_exit"][late]),
        "n_late_exits": int(late.sum()), "L_pointmass": Lpm, "L_over_pointmass": inv["L"] / Lpm,
        "base_t_enter": nanmedian(c["t_base_enter"]),
        "median_ratio_to_pointmass": nanmedian(c["t_exit"] / c["t_exit_pointmass"]),
        "eps": c["eps"], "t_enter": c["t_enter"], "t_exit": c["t_exit"],
        "eps_t_exit": c["eps"] * c["t_exit"], "t_forgotten": c["t_forgotten"],
        "t_exit_pointmass": c["t_exit_pointmass"],
    }  # fmt: skip


def phase_summary(p: dict, rows: dict) -> dict:
    """The fit per sphere and the table of entry/exit times (particles, then the PDE)."""
    fits = {f"S{s}": phase_fit(rows["phase"], float(s)) for s in p["spheres"]}
    pde_spheres = sorted({int(r["sphere"]) for r in rows["pde"]})
    pde_fits = {f"S{s}": phase_pde_fit(rows["pde"], float(s)) for s in pde_spheres}
    report = [f"Phase diagram ({p['geometry']}, delta = {p['delta']}, n = {p['n']}, "
              f"T = {p['T']}): transition curve t_exit(eps) = c eps^-alpha"]  # fmt: skip
    for name, f in fits.items():
        report.append(f"  {name}: alpha = {f['alpha']:.3f} (point-mass law: "
                      f"{f['pointmass_alpha']:.3f}), c = {f['prefactor']:.3g}, "
                      f"{f['n_points']} points; alpha = {f['alpha_late_exits']:.3f} over the "
                      f"{f['n_late_exits']} exits later than 3 t_enter(base); "
                      f"base flow t_enter = {f['base_t_enter']:.3g}, "
                      f"t_exit = {f['base_t_exit']:.3g}; median t_exit / point-mass = "
                      f"{f['median_ratio_to_pointmass']:.3f}")  # fmt: skip
        report.append("    eps       t_enter   t_exit")
        for e, a, b in zip(f["eps"], f["t_enter"], f["t_exit"], strict=True):
            report.append(f"    {e:<9.4g} {a:<9.4g} {b:.4g}")
    conv_spheres = sorted({int(r["sphere"]) for r in rows.get("particles", [])})
    conv = {f"S{s}": phase_convergence(p, rows["particles"], rows["pde"], float(s))
            for s in conv_spheres}  # fmt: skip
    for name, f in pde_fits.items():
        v, vl = f["inverse"], f["inverse_late_exits"]
        report.append(
            f"  PDE {name} (initial {p['pde_initial']!r}, state {p['pde_criterion']!r}, "
            f"tol = {p['pde_tol']}, "
            f"T = {p['pde_T']}): alpha = {f['alpha']:.3f}, c = {f['prefactor']:.3g}, "
            f"{f['n_points']} exits; base flow t_enter = {f['base_t_enter']:.3g}; "
            f"median t_exit / point-mass = {f['median_ratio_to_pointmass']:.3f}"
        )
        report.append(
            f"    t_exit = L/eps + b (deterministic runs: no interval): L = "
            f"{v['L']:.4f}, b = {v['b']:.3f}, rms residual {v['rms_residual']:.3g} over "
            f"{v['n_points']} exits; point-mass law L = {f['L_pointmass']:.4f} "
            f"(L/L_pm = {f['L_over_pointmass']:.4f}); over the {f['n_late_exits']} "
            f"exits after 3 t_base_enter: L = {vl['L']:.4f}, b = {vl['b']:.3f}"
        )
        report.append("    eps       t_enter   t_exit    eps*t_exit  point-mass  t_forgotten")
        for row in zip(f["eps"], f["t_enter"], f["t_exit"], f["eps_t_exit"],
                       f["t_exit_pointmass"], f["t_forgotten"], strict=True):  # fmt: skip
            report.append("    {:<9.4g} {:<9.4g} {:<9.4g} {:<11.4g} {:<11.4g} {:.4g}".format(*row))
    for name, per_n in conv.items():
        report.append(
            f"  particles -> PDE {name} (drawn from the PDE's rho0, tol = "
            f"{p['pde_tol']}, T = {p['conv_T']}, dt = {p['conv_dt']}): per n, median "
            "over draws and eps of |t - t_PDE| / t_PDE; fit of the median t_exit"
        )
        for n, c in per_n.items():
            b = c["fit"]
            report.append(
                f"    n = {n:<6} draws {c['draws']}: exit {c['distance_exit']:.4f}, "
                f"enter {c['distance_enter']:.4f}; median t_exit = L/eps + b: L = "
                f"{b['L']:.4f} "
                + (
                    f"[{b['L_lo']:.4f}, {b['L_hi']:.4f}] (90 %, bootstrap over the draws)"
                    if c["draws"] > 1
                    else "(one draw: no interval)"
                )
                + f", b = {b['b']:.3f}; missed exits {sum(c['missed_exit'])}"
            )
            for e, md, lo, hi in zip(c["eps"], c["median_exit"], c["q10_exit"], c["q90_exit"],
                                     strict=True):  # fmt: skip
                report.append(
                    f"      eps {e:<9.4g} t_exit median {md:<9.4g} 10-90 % [{lo:.4g}, {hi:.4g}]"
                )
    return {"fits": fits, "pde_fits": pde_fits, "convergence": conv, "report": report}


PHASE_COLOURS = ("#f4a582", "#a6dba0", "#92c5de", "#c2a5cf")
PHASE_NAMES = ("not yet clustered", "no forgetting (δ-close to base)", "forgetting",
               "forgotten before clustering")  # fmt: skip


def _eps_edges(eps: np.ndarray) -> np.ndarray:
    le = np.log(eps)
    step = (le[1] - le[0]) if len(le) > 1 else 0.5
    return np.exp(np.concatenate([[le[0] - step / 2], (le[1:] + le[:-1]) / 2,
                                  [le[-1] + step / 2]]))  # fmt: skip


def phase_map(t: np.ndarray, te, tx, tf=None, t_max: float = np.inf) -> np.ndarray:
    """Phase index (rows: times ``t``, columns: ε) from the entry/exit times: 0 not yet
    clustered, 1 no forgetting, 2 forgetting, 3 forgotten before clustering (``t >= tf`` with
    no entry); masked after ``t_max`` (not computed)."""
    T, te, tx = t[:, None], np.asarray(te)[None, :], np.asarray(tx)[None, :]
    with np.errstate(invalid="ignore"):
        ph = np.where(T >= te, 1, 0)
        ph = np.where(T >= tx, 2, ph)
        if tf is not None:
            tf = np.asarray(tf)[None, :]
            ph = np.where(np.isnan(te) & (T >= tf), 3, ph)
    return np.ma.masked_where(np.broadcast_to(T > t_max, ph.shape), ph)


CONV_COLOURS = ("#d7301f", "#2b8cbe", "#238443", "#6a51a3", "#525252")


def _cost(timing: dict | None, csv: str) -> str:
    t = (timing or {}).get(csv)
    return f"{t['wall_s']:.0f} s" if t else "?"


def plot_phase_diagram(rows, p: dict, fits: dict, path: Path, pde_rows=None, conv=None,
                       timing=None) -> Path:  # fmt: skip
    """Phases over (ε, t), log-log, one panel per sphere: where the PDE ran, its four phases
    (measure-level state), its exits and the point-mass law from its base cluster, with the
    particles drawn from the same ρ0 (``conv``); elsewhere the particles' three phases with
    their law and fit; ``conv`` (:func:`phase_convergence` per sphere): the medians
    over the draws of ``t_exit`` (solid) and ``t_enter`` (dashed) per ``n`` with their
    10–90 % bands. Titles: mesh, n, seeds, measured wall time of the sweeps (``timing``)."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    spheres = p["spheres"]
    fig = figure(5.0 * len(spheres), 4.6)
    axs = np.atleast_1d(fig.subplots(1, len(spheres)))
    t_lo = p["dt"]
    t_hi = max(p["T"], p["pde_T"]) if pde_rows else p["T"]
    tedges = np.geomspace(t_lo, t_hi, 401)
    t = np.sqrt(tedges[:-1] * tedges[1:])
    cmap = ListedColormap(PHASE_COLOURS)
    for ax, s in zip(axs, spheres, strict=True):
        f = fits[f"S{s}"]
        c = as_columns([r for r in rows if r["sphere"] == s and r["eps"] > 0])
        eps, te, tx = c["eps"], c["t_enter"], c["t_exit"]
        edges = _eps_edges(eps)
        pde = [r for r in (pde_rows or []) if r["sphere"] == s]
        if pde:
            q = as_columns(pde)
            ph = phase_map(t, q["t_enter"], q["t_exit"], q["t_forgotten"], p["pde_T"])
            ax.pcolormesh(_eps_edges(q["eps"]), tedges, ph, cmap=cmap, vmin=-0.5, vmax=3.5,
                          shading="flat")  # fmt: skip
            ax.plot(q["eps"], q["t_exit"], "ks", ms=4, label="PDE t_exit")
            # the particles of phase.csv start from another measure (the draw, not ρ0): only
            # the particles drawn from ρ0 (conv, below) are drawn over the PDE's phases
            if np.isfinite(q["t_exit_pointmass"]).any():
                ax.plot(q["eps"], q["t_exit_pointmass"], "k--", lw=1,
                        label="point-mass law (PDE's base cluster)")  # fmt: skip
            names = PHASE_NAMES
        else:
            ph = phase_map(t, te, tx)
            ax.pcolormesh(edges, tedges, ph, cmap=cmap, vmin=-0.5, vmax=3.5, shading="flat")
            ax.plot(eps, tx, "ko", ms=3, label="t_exit (measured)")
            ax.plot(eps, te, "k^", ms=3, label="t_enter (measured)")
            names = PHASE_NAMES[:3]
        if not pde and np.isfinite(c["t_exit_pointmass"]).any():
            ax.plot(eps, c["t_exit_pointmass"], "k--", lw=1, label="point-mass law")
        if not pde and np.isfinite(f["alpha"]):
            ax.plot(eps, f["prefactor"] * eps ** (-f["alpha"]), "k:", lw=1.5,
                    label=f"particles fit ε^(−{f['alpha']:.2f})")  # fmt: skip
        for k, (n, cv) in enumerate(((conv or {}).get(f"S{s}") or {}).items()):
            col = CONV_COLOURS[k % len(CONV_COLOURS)]
            e = np.asarray(cv["eps"])
            ax.fill_between(e, cv["q10_exit"], cv["q90_exit"], color=col, alpha=0.25, lw=0)
            ax.plot(e, cv["median_exit"], "-", color=col, lw=1.5,
                    label=f"n = {n} ({cv['draws']} draws): t_exit, t_enter")  # fmt: skip
            ax.fill_between(e, cv["q10_enter"], cv["q90_enter"], color=col, alpha=0.15, lw=0)
            ax.plot(e, cv["median_enter"], "--", color=col, lw=1)
        # the PDE panel: the PDE's own base flow (the particles of phase.csv start elsewhere)
        base_enter = nanmedian(as_columns(pde)["t_base_enter"]) if pde else f["base_t_enter"]
        if np.isfinite(base_enter):
            ax.axhline(base_enter, color="0.25", ls="-.", lw=1,
                       label="base flow t_enter" + (" (PDE)" if pde else ""))  # fmt: skip
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylim(t_lo, t_hi)
        ax.set_xlim(edges[0], edges[-1])
        ax.set_xlabel("perturbation norm ε")
        ax.set_ylabel("time (depth) t")
        where = {"sphere": f"S^{s}", "euclidean": f"R^{s + 1} (Euclidean, static)"}.get(
            p["geometry"], f"R^{s + 1} (Euclidean, time-rescaled)")  # fmt: skip
        what = f"n = {p['n']}, seed {p['seed']} (sweep {_cost(timing, 'phase.csv')})"
        if pde:
            what = (f"PDE {pde[0]['cells']} cells, state {p['pde_criterion']} (sweep "
                    f"{_cost(timing, 'pde.csv')}); particles "
                    f"{what}")  # fmt: skip
            cv = (conv or {}).get(f"S{s}")
            if cv:
                what += (
                    f";\nparticles from ρ0 ({p['conv_draw']}), n = {list(cv)}, draws "
                    f"{[c['draws'] for c in cv.values()]}, "
                    f"dt = {p['conv_dt']} (sweep {_cost(timing, 'particles.csv')})"
                )
        ax.set_title(f"{where}, δ = {p['delta']}: {what}", fontsize=8)
        handles, _ = ax.get_legend_handles_labels()
        patches = [Patch(color=c, label=nm) for c, nm in zip(PHASE_COLOURS, names, strict=False)]
        ax.legend(handles=patches + handles, fontsize=6, loc="lower left")
    return save_png(fig, path)


def plot_convergence(p: dict, conv: dict, pde_rows, path: Path, timing=None) -> Path:
    """Particles against the PDE, one panel per PDE sphere: ``t / t_PDE − 1`` over ε for
    ``t_exit`` (solid) and ``t_enter`` (dashed), per ``n`` the median over the draws and the
    10–90 % band; the legend gives the median relative distance of :func:`phase_convergence`."""
    spheres = [k for k, v in conv.items() if v]
    fig = figure(5.0 * max(1, len(spheres)), 4.0)
    axs = np.atleast_1d(fig.subplots(1, max(1, len(spheres))))
    for ax, name in zip(axs, spheres, strict=False):
        pde = {r["eps"]: r for r in pde_rows if f"S{int(r['sphere'])}" == name}
        for k, (n, cv) in enumerate(conv[name].items()):
            col = CONV_COLOURS[k % len(CONV_COLOURS)]
            e = np.asarray(cv["eps"])
            for what, ls, a in (("exit", "-", 0.25), ("enter", "--", 0.12)):
                ref = np.array([pde[x][f"t_{what}"] for x in e])
                lo, hi = (np.asarray(cv[f"q{q}_{what}"]) / ref - 1 for q in (10, 90))
                ax.fill_between(e, lo, hi, color=col, alpha=a, lw=0)
                lab = (
                    f"n = {n}, {cv['draws']} draws: median |Δt|/t exit "
                    f"{cv['distance_exit']:.3f}, enter {cv['distance_enter']:.3f}"
                )
                ax.plot(e, np.asarray(cv[f"median_{what}"]) / ref - 1, ls, color=col, marker="o",
                        ms=3, label=lab if what == "exit" else None)  # fmt: skip
        ax.axhline(0, color="k", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel("perturbation norm ε")
        ax.set_ylabel("t / t_PDE − 1 (solid: t_exit, dashed: t_enter)")
        ax.set_title(f"{name}: particles drawn from ρ0 vs the PDE (median, 10–90 % band); "
                     f"\nT = {p['conv_T']}, dt = {p['conv_dt']}, sweep "
                     f"{_cost(timing, 'particles.csv')}", fontsize=8)  # fmt: skip
        ax.legend(fontsize=6)
    return save_png(fig, path)


def _plot(p: dict, rows: dict, s: dict, out: Path) -> None:
    plot_phase_diagram(rows["phase"], p, s["fits"], out / "phase_diagram.png", rows["pde"],
                       s["convergence"], s.get("timing"))  # fmt: skip
    if any(s["convergence"].values()):
        plot_convergence(p, s["convergence"], rows["pde"], out / "phase_convergence.png",
                         s.get("timing"))  # fmt: skip


EXPERIMENT = Experiment(
    name="phase_diagram",
    module=__name__,
    presets=PRESETS,
    check=phase_check,
    sweeps=(Sweep("phase.csv", phase_cases, "phase_case", key=("sphere", "eps"),
                  columns=tuple(PHASE_COLUMNS), desc="phase diagram"),
            Sweep("pde.csv", phase_pde_cases, "phase_pde_case", key=("sphere", "eps"),
                  columns=tuple(PDE_COLUMNS), desc="phase diagram (PDE)", mode="cases",
                  needs_run=True, cost=phase_pde_cost),
            Sweep("particles.csv", phase_particles_cases, "phase_particles_case",
                  key=("sphere", "n", "seed"), columns=tuple(CONV_COLUMNS),
                  desc="particles -> PDE", cost=lambda p, case: case["n"])),
    summarize=phase_summary,
    plot=_plot,
    needs_comm=True,
)  # fmt: skip


def run_phase_diagram(p: dict, out, *, comm=None, progress=True, budget=None):
    """Fig 3: ``phase.csv`` (one row per sphere and ε), ``pde.csv`` (one PDE run per sphere of
    ``pde_spheres`` and ε), ``phase_diagram.png``; the summary
    (``None``: stopped by the budget)."""
    return run_experiment(EXPERIMENT, p, out, comm=comm, progress=progress, budget=budget)
