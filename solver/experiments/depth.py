r"""Thm 4.6 of arXiv 2402.15415: the critical depth ``T*`` against ε, for tied and for random
adapters, on particles and on the mean-field PDE (S^1).

* tied: ``Ṽ = I − ε e_2e_2ᵀ`` at every layer; the point-mass law
  ``T* = ln(tan φ0 / tan(φ0 − Δθ)) / ε`` (:func:`point_mass_depth`): ``T* ∝ 1/ε``;
* random: layer ``ℓ`` of length ``h`` (``layer``) gets its own ``ΔV^ℓ = ε u^ℓ (v^ℓ)ᵀ``,
  ``u, v ~ N(0, I_d/d)`` (:class:`~solver.model.RandomLoRA`, ``η = ε``): the cluster takes
  independent tangent steps ``ε h P_p u (vᵀp)`` of mean square ``ε² h² (d−1)/d²``, a random
  walk, and leaves the angle ``Δθ`` after the mean first-exit time
  ``E T* = d² Δθ² / ((d−1) ε² h)`` (:func:`random_depth_law`, a Brownian motion in the
  ``d − 1`` tangent dimensions, valid while a step ``ε h ≪ Δθ``): ``T* ∝ 1/ε²``, diffusive.

``T*`` is the first depth at which the cluster directions (first moments) of the base and
perturbed flows are ``Δθ = 2 arcsin(δ/2)`` apart. Particles: ``n`` tokens from a von
Mises-Fisher cloud (κ) centred at angle θ0, seed ``s`` for the draw and (random) the adapters.
PDE (``d = 2`` only): the same vMF density, DG0 on ``pde_cells`` cells, adaptive steps, the
angle between the two flows' first moments at every step; random adapters with seed ``s``
(the particles' adapters of the same seed), ``s < pde_seeds``; tied once (deterministic).
The exponent ``α`` of ``T* = c ε^{−α}`` comes with a bootstrap interval over the seeds, none
for a single seed (:func:`depth_fits`).

Sweeps: ``depth.csv`` (particles, one row per kind, d, θ0, ε, seed) and ``pde.csv``; figure
``depth.png``. Command line: ``scripts/exp_depth.py``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..analysis import cluster_direction, crossing_times
from ..model import RandomLoRA, VonMisesFisher
from ..particles import sample_particles, simulate_particles
from ._common import e2_perturbation, identity_model, memo, point_mass_depth
from ._experiment import Experiment, Run, Sweep, run_experiment
from ._figures import figure, save_png
from ._params import positive, require
from ._stats import angle, bootstrap, delta_distance, directions, nanmax, nanmedian, nanmin
from ._sweep import as_columns

__all__ = ["PRESETS", "EXPERIMENT", "run_depth", "depth_case", "depth_pde_case", "depth_fits",
           "random_depth_law", "plot_depth"]  # fmt: skip

_RANDOM = {"kinds": ["tied", "random"], "layer": 0.1, "random_dims": [2], "r_factor": 4.0}
PRESETS = {
    "tiny": {"dims": [2], "n": 20, "kappa": 20.0, "theta0_deg": [45.0], "eps_min": 0.05,
             "eps_max": 0.3, "n_eps": 3, "seeds": 1, "delta": 0.1, "dt": 0.1,
             "t_factor": 1.3, **_RANDOM, "random_eps_min": 0.15, "random_eps_max": 0.3,
             "random_n_eps": 2, "random_seeds": 4, "pde_cells": 64, "pde_seeds": 2},
    "small": {"dims": [2, 3], "n": 50, "kappa": 20.0, "theta0_deg": [20.0, 45.0],
              "eps_min": 0.006, "eps_max": 0.3, "n_eps": 5, "seeds": 2, "delta": 0.1,
              "dt": 0.1, "t_factor": 1.3, **_RANDOM, "random_eps_min": 0.12,
              "random_eps_max": 0.3, "random_n_eps": 3, "random_seeds": 8, "pde_cells": 128,
              "pde_seeds": 4},
    "paper": {"dims": [2, 3, 8], "n": 64, "kappa": 20.0, "theta0_deg": [20.0, 45.0],
              "eps_min": 0.003, "eps_max": 0.3, "n_eps": 6, "seeds": 2, "delta": 0.1,
              "dt": 0.1, "t_factor": 1.3, **_RANDOM, "random_eps_min": 0.1,
              "random_eps_max": 0.3, "random_n_eps": 3, "random_seeds": 24,
              "pde_cells": 128, "pde_seeds": 6},
}  # fmt: skip
KINDS = ("tied", "random")

DEPTH_COLUMNS = ["T", "T_star_direction", "T_star_delta", "T_star_law", "phi0"]
PDE_COLUMNS = ["T", "T_star_direction", "T_star_law", "phi0", "cells", "steps"]
#: bootstrap resamples and interval level of the fits
N_BOOT, LEVEL = 2000, 0.9


def depth_check(p: dict) -> None:
    positive(p, "n", "kappa", "eps_min", "eps_max", "n_eps", "delta", "dt", "t_factor", "seeds",
             "layer", "r_factor", "random_eps_min", "random_eps_max", "random_n_eps",
             "random_seeds", "pde_cells", "pde_seeds")  # fmt: skip
    require(p, "dims", all(d >= 2 for d in p["dims"]), "a list of dimensions >= 2")
    require(p, "random_dims", all(d in p["dims"] for d in p["random_dims"]),
            f"a sublist of dims = {p['dims']}")  # fmt: skip
    require(p, "kinds", all(k in KINDS for k in p["kinds"]), f"a list of {KINDS}")
    lo = math.degrees(2 * math.asin(min(1.0, p["delta"] / 2)))
    require(
        p,
        "theta0_deg",
        all(lo < t < 90 for t in p["theta0_deg"]),
        f"angles in ({lo:.3g}, 90) degrees (above the turn Δθ = 2 arcsin(δ/2))",
    )
    require(p, "eps_max", p["eps_max"] >= p["eps_min"], ">= eps_min")
    require(p, "random_eps_max", p["random_eps_max"] >= p["random_eps_min"], ">= random_eps_min")
    require(p, "pde_seeds", p["pde_seeds"] <= p["random_seeds"], "<= random_seeds")
    step = p["random_eps_max"] * p["layer"] / _dtheta(p)
    require(p, "random_eps_max", step <= 0.5, f"small enough that one layer's turn ε h is "
            f"<= Δθ/2 (random walk; now {step:.3g} Δθ)")  # fmt: skip


def _dtheta(p: dict) -> float:
    return 2 * math.asin(p["delta"] / 2)


def _eps(p: dict, kind: str) -> list[float]:
    pre = "" if kind == "tied" else "random_"
    return [float(e) for e in np.geomspace(p[pre + "eps_min"], p[pre + "eps_max"],
                                           p[pre + "n_eps"])]  # fmt: skip


def depth_cases(p: dict) -> list[dict]:
    """Tied: every d, θ0, ε, seed; random: every d of ``random_dims``, the first θ0 (the law
    does not depend on it), every ε of the random range and ``random_seeds`` seeds."""
    out = []
    for kind in p["kinds"]:
        dims = p["dims"] if kind == "tied" else p["random_dims"]
        ths = p["theta0_deg"] if kind == "tied" else p["theta0_deg"][:1]
        seeds = p["seeds"] if kind == "tied" else p["random_seeds"]
        out += [{"kind": kind, "d": d, "theta0_deg": th, "eps": e, "seed": s} for d in dims
                for th in ths for e in _eps(p, kind) for s in range(seeds)]  # fmt: skip
    return out


def depth_pde_cases(p: dict) -> list[dict]:
    """The ``d = 2`` cases on the PDE: tied with seed 0 (no randomness), random with the
    seeds ``< pde_seeds``."""
    return [c for c in depth_cases(p) if c["d"] == 2
            and c["seed"] < (1 if c["kind"] == "tied" else p["pde_seeds"])]  # fmt: skip


def _depth_centre(d: int, theta0_deg: float) -> np.ndarray:
    c = np.zeros(d)
    th = math.radians(theta0_deg)
    c[0], c[1] = math.cos(th), math.sin(th)
    return c


def random_depth_law(d: int, eps: float, h: float, dtheta: float) -> float:
    """Mean first-exit depth of the angle ``Δθ`` for random rank-one adapters of norm scale
    ``ε`` on layers of length ``h``: ``d² Δθ² / ((d−1) ε² h)`` (see the module doc)."""
    return d * d * dtheta**2 / ((d - 1) * eps**2 * h)


def _setup(p: dict, case: dict):
    """(base, perturbed model, horizon T, particle step) of a case. ``T`` is rounded to 1e-9:
    :class:`~solver.transport.Clock` rounds its save times to 1e-12 and would miss an end
    time like ``15.200000000000001`` (``152 * 0.1``)."""
    d, eps, kind = int(case["d"]), float(case["eps"]), case["kind"]
    base = identity_model(d)
    dth = _dtheta(p)
    if kind == "tied":
        law = point_mass_depth(_depth_centre(d, float(case["theta0_deg"])), eps, dth)
        dt = min(p["dt"], law / 200)
        T = round(math.ceil((p["t_factor"] * law + 10.0) / dt) * dt, 9)
        return base, base.perturbed(e2_perturbation(d, eps)), T, dt
    pert = RandomLoRA(d=d, eta=eps, h=p["layer"], seed=int(case["seed"]))
    law = random_depth_law(d, eps, p["layer"], dth)
    dt = min(p["dt"], p["layer"])
    T = round(math.ceil((p["r_factor"] * law + 10.0) / p["layer"]) * p["layer"], 9)
    return base, base.perturbed(pert), T, dt


def _law(p: dict, case: dict, u: np.ndarray) -> float:
    """The case's law from the base flow's final cluster direction ``u`` (tied) or the
    random-walk law (random)."""
    if case["kind"] == "tied":
        return point_mass_depth(u, float(case["eps"]), _dtheta(p))
    return random_depth_law(int(case["d"]), float(case["eps"]), p["layer"], _dtheta(p))


def depth_cost(p: dict, case: dict) -> float:
    """The particle steps of a case, ``T / dt`` (the order in which the ranks take the cases;
    :func:`run_sweep`)."""
    _, _, T, dt = _setup(p, case)
    return T / dt


def depth_case(p: dict, case: dict) -> dict:
    """Critical depth of one case on the particles.

    ``T_star_direction``: first depth at which the cluster directions of the base and the
    perturbed flows are ``Δθ = 2 arcsin(δ/2)`` apart; ``T_star_delta``: exit time of the
    δ-cluster state around the base's final configuration; ``T_star_law``: the tied
    point-mass law from the base cluster direction, or :func:`random_depth_law`. Crossings are
    interpolated linearly between saved times; the horizon is ``t_factor`` (tied) or
    ``r_factor`` (random) times the a-priori law, plus 10 (``nan``: no crossing by then).
    """
    d, seed = int(case["d"]), int(case["seed"])
    centre = _depth_centre(d, float(case["theta0_deg"]))
    base, pert, T, dt = _setup(p, case)
    x0 = sample_particles(VonMisesFisher(tuple(centre), p["kappa"]), p["n"], d, seed=seed)
    key = ("depth-base", d, p["n"], p["kappa"], float(case["theta0_deg"]), seed, T, dt)
    rb = memo(key, lambda: simulate_particles(base, x0, T, dt=dt, save_every=dt))
    rp = simulate_particles(pert, x0, T, dt=dt, save_every=dt)
    if not np.allclose(rb.times, rp.times):  # saved times differ (layer breakpoints)
        raise RuntimeError("base and perturbed saved times differ: choose dt dividing layer")
    ang = angle(directions(rb.positions), directions(rp.positions))
    t_dir = crossing_times(rp.times, -ang, -_dtheta(p))[0]  # first time ang >= dtheta
    D = delta_distance(rp.positions, rb.positions[-1])
    _, t_delta = crossing_times(rp.times, D, p["delta"], strict=True)
    u = cluster_direction(rb.positions[-1])
    return {"T": T, "T_star_direction": t_dir, "T_star_delta": t_delta,
            "T_star_law": _law(p, case, u), "phi0": math.asin(min(1.0, abs(u[1])))}  # fmt: skip


def depth_pde_case(p: dict, case: dict, run: Run) -> dict | None:
    """Critical depth of one case on the PDE (S^1; all ranks, the row on rank 0): both flows
    in one :func:`solver.evolve` (DG0, adaptive) from the vMF density; the angle between the
    flows' first moments at every step, its first crossing of ``Δθ`` interpolated linearly;
    ``steps``: the run's time steps (its cost)."""
    from ..mesh import sphere_mesh
    from ..run import evolve

    centre = _depth_centre(2, float(case["theta0_deg"]))
    base, pert, T, _ = _setup(p, case)
    sm = sphere_mesh(run.comm, 1, cells=p["pde_cells"])
    res = evolve(sm, base, VonMisesFisher(tuple(centre), p["kappa"]), T, perturbed=pert,
                 w2=False, vtx=False, progress=False, cluster_delta=None)  # fmt: skip
    if run.comm.rank != 0:
        return None
    mb = np.stack([res.column("moment_x"), res.column("moment_y")], axis=1)
    mp = np.stack([res.column("moment_perturbed_x"), res.column("moment_perturbed_y")], axis=1)
    mb /= np.linalg.norm(mb, axis=1, keepdims=True)
    mp /= np.linalg.norm(mp, axis=1, keepdims=True)
    t_dir = crossing_times(res.step_times, -angle(mb, mp), -_dtheta(p))[0]
    u = mb[-1]
    return {"T": T, "T_star_direction": t_dir, "T_star_law": _law(p, case, u),
            "phi0": math.asin(min(1.0, abs(u[1]))), "cells": len(res.areas),
            "steps": len(res.step_times) - 1}  # fmt: skip


def _exponent(eps: np.ndarray, tstar: np.ndarray):
    """``α`` of ``T* = c ε^{−α}`` with its bootstrap interval: ``tstar`` (seeds, ε); log of the
    mean over the seeds against log ε; the interval resamples the seeds (their adapters and
    draws, shared by all ε, are the random units). One seed (a deterministic run, or a single
    draw): no interval (``nan``): resampling the ε points of one run would measure the
    curvature of the curve, not an uncertainty."""
    ok = np.isfinite(tstar).all(axis=0)
    eps, tstar = eps[ok], tstar[:, ok]
    if len(eps) < 2:
        return float("nan"), float("nan"), float("nan")

    def stat(idx):
        return -np.polyfit(np.log(eps), np.log(tstar[idx].mean(axis=0)), 1)[0]

    if tstar.shape[0] == 1:
        return float(stat(np.arange(1))), float("nan"), float("nan")
    return bootstrap(stat, tstar.shape[0], n_boot=N_BOOT, level=LEVEL)


def depth_fits(rows) -> dict:
    """Per (kind, d, θ0): ``α`` with its interval (:func:`_exponent`), ``T*`` over the law
    (each seed's own law, mean over seeds; median and range over ε), and the crossings missed
    (censored)."""
    out = {}
    for kind in KINDS:
        for d in sorted({r["d"] for r in rows if r["kind"] == kind}):
            for th in sorted({r["theta0_deg"] for r in rows if r["kind"] == kind}):
                sel = [r for r in rows if r["kind"] == kind and r["d"] == d
                       and r["theta0_deg"] == th]  # fmt: skip
                if not sel:
                    continue
                eps = np.array(sorted({r["eps"] for r in sel}))
                seeds = sorted({r["seed"] for r in sel})
                tab = {(r["seed"], r["eps"]): r for r in sel}
                ts = np.array([[tab[(s, e)]["T_star_direction"] for e in eps] for s in seeds])
                laws = np.array([[tab[(s, e)]["T_star_law"] for e in eps] for s in seeds])
                a, lo, hi = _exponent(eps, ts)
                ratio = np.nanmean(ts / laws, axis=0)  # tied: each seed's own φ0
                f = {"exponent": a, "exponent_lo": lo, "exponent_hi": hi, "level": LEVEL,
                     "seeds": len(seeds), "censored": int(np.isnan(ts).sum()),
                     "ratio_median": nanmedian(ratio), "ratio_min": nanmin(ratio),
                     "ratio_max": nanmax(ratio), "eps": eps, "T_star_mean": np.nanmean(ts, 0),
                     "law": laws.mean(axis=0)}  # fmt: skip
                if "T_star_delta" in sel[0]:  # particles: the δ-state exit (median over all)
                    td = np.array([[tab[(s, e)]["T_star_delta"] for e in eps] for s in seeds])
                    f["delta_ratio_median"] = nanmedian(td / laws)
                out[f"{kind},d={int(d)},theta0={th:g}"] = f
    return out


def depth_summary(p: dict, rows: dict) -> dict:
    """:func:`depth_fits` of the particles and of the PDE, and their report."""
    fits = {"particles": depth_fits(rows["depth"]), "pde": depth_fits(rows.get("pde", []))}
    pct = f"{100 * LEVEL:g}%"
    report = [
        f"Depth transition (delta = {p['delta']}, n = {p['n']}, kappa = {p['kappa']}): "
        f"T* = c eps^-alpha; tied law ln(tan phi0 / tan(phi0 - dtheta))/eps (alpha = 1), "
        f"random law d^2 dtheta^2 / ((d-1) eps^2 h), h = {p['layer']} (alpha = 2)"
    ]
    for solver, fs in fits.items():
        for k, f in fs.items():
            report.append(
                f"  {solver} {k} ({f['seeds']} seeds): alpha = {f['exponent']:.3f}, {pct} CI "
                f"[{f['exponent_lo']:.3f}, {f['exponent_hi']:.3f}]; mean T*/law = "
                f"{f['ratio_median']:.3f} (range {f['ratio_min']:.3f}..{f['ratio_max']:.3f})"
                + (f"; {f['censored']} censored" if f["censored"] else ""))  # fmt: skip
    out = {"fits": fits, "report": report}
    if rows.get("pde"):
        steps = [r["steps"] for r in rows["pde"]]
        out["pde_steps"] = {"median": float(np.median(steps)), "max": int(max(steps))}
        pairs = _pde_vs_particles(rows["depth"], rows["pde"])
        out["pde_over_particles"] = pairs
        report.append(f"  PDE ({p['pde_cells']} cells, DG0, adaptive; median "
                      f"{out['pde_steps']['median']:.0f} steps/run) over particles, same case "
                      "and seed: " + ", ".join(f"{k}: median {v['median']:.3f}, range "
                                               f"{v['min']:.3f}..{v['max']:.3f}"
                                               for k, v in pairs.items()))  # fmt: skip
    return out


def _pde_vs_particles(prows, qrows) -> dict:
    """``T*`` of the PDE over the particles' for the same case (kind, θ0, ε, seed), per kind."""
    key = ("kind", "d", "theta0_deg", "eps", "seed")
    part = {tuple(r[k] for k in key): r["T_star_direction"] for r in prows}
    out = {}
    for kind in KINDS:
        q = np.array([r["T_star_direction"] / part[tuple(r[k] for k in key)] for r in qrows
                      if r["kind"] == kind and tuple(r[k] for k in key) in part])  # fmt: skip
        q = q[np.isfinite(q)]
        if len(q):
            out[kind] = {"median": float(np.median(q)), "min": float(q.min()),
                         "max": float(q.max()), "n": len(q)}  # fmt: skip
    return out


def plot_depth(rows: dict, p: dict, s: dict, path: Path) -> Path:
    """Mean T* over seeds against ε, one panel per kind (particles per d and θ0, PDE on S^1;
    bars: min..max over seeds), with the laws; the fitted exponents with their intervals."""
    kinds = p["kinds"]
    fig = figure(5.5 * len(kinds), 4.8)
    axs = np.atleast_1d(fig.subplots(1, len(kinds)))
    for ax, kind in zip(axs, kinds, strict=True):
        for solver, mk in (("particles", "o"), ("pde", "s")):
            sel = [r for r in rows.get("depth" if solver == "particles" else "pde", [])
                   if r["kind"] == kind]  # fmt: skip
            for k, f in s["fits"][solver].items():
                if not k.startswith(kind + ","):
                    continue
                _, dd, th = k.split(",")
                c = as_columns([r for r in sel if f"d={int(r['d'])}" == dd
                                and f"theta0={r['theta0_deg']:g}" == th])  # fmt: skip
                eps = f["eps"]
                lo = [np.nanmin(c["T_star_direction"][c["eps"] == e]) for e in eps]
                hi = [np.nanmax(c["T_star_direction"][c["eps"] == e]) for e in eps]
                m = f["T_star_mean"]
                label = (f"{solver} {dd}, θ0 = {th[7:]}°: α = {f['exponent']:.2f} "
                         f"[{f['exponent_lo']:.2f}, {f['exponent_hi']:.2f}]")  # fmt: skip
                (line,) = ax.plot(eps, m, mk, ms=5 if solver == "pde" else 4, mfc="none"
                                  if solver == "pde" else None, label=label)  # fmt: skip
                ax.vlines(eps, lo, hi, color=line.get_color(), lw=0.8)
                if solver == "particles":
                    ax.plot(eps, f["law"], "-", lw=1, color=line.get_color())
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("perturbation norm ε")
        ax.set_ylabel("critical depth T* (mean over seeds)")
        what = (
            "tied Ṽ = I − ε e₂e₂ᵀ; line: point-mass law ∝ 1/ε"
            if kind == "tied"
            else f"random ε u vᵀ per layer (h = {p['layer']:g}); line: d²Δθ²/((d−1)ε²h)"
        )
        ax.set_title(what, fontsize=9)
        ax.legend(fontsize=6)
    cost = ""
    if "pde_steps" in s:
        cost = (
            f"; PDE: S^1, {p['pde_cells']} cells, DG0, adaptive, median "
            f"{s['pde_steps']['median']:.0f} steps/run, {p['pde_seeds']} random seeds"
        )
    fig.suptitle(f"Thm 4.6, critical depth (Δθ = 2 arcsin(δ/2), δ = {p['delta']}): n = "
                 f"{p['n']} particles (vMF κ = {p['kappa']:g}, RK4 dt ≤ {p['dt']:g}), seeds "
                 f"tied {p['seeds']} / random {p['random_seeds']}; {100 * LEVEL:g}% bootstrap "
                 f"CI\n{cost.lstrip('; ')}", fontsize=9)  # fmt: skip
    return save_png(fig, path)


EXPERIMENT = Experiment(
    name="depth",
    module=__name__,
    presets=PRESETS,
    check=depth_check,
    sweeps=(Sweep("depth.csv", depth_cases, "depth_case",
                  key=("kind", "d", "theta0_deg", "eps", "seed"), columns=tuple(DEPTH_COLUMNS),
                  desc="depth", cost=depth_cost),
            Sweep("pde.csv", depth_pde_cases, "depth_pde_case",
                  key=("kind", "d", "theta0_deg", "eps", "seed"), columns=tuple(PDE_COLUMNS),
                  desc="depth (PDE)", mode="cases", needs_run=True,
                  cost=lambda p, case: _setup(p, case)[2])),
    summarize=depth_summary,
    plot=lambda p, rows, s, out: plot_depth(rows, p, s, out / "depth.png"),
    needs_comm=True,
)  # fmt: skip


def run_depth(p: dict, out, *, comm=None, progress=True, budget=None):
    """Thm 4.6: ``depth.csv`` (particles, one row per kind, d, θ0, ε, seed), ``pde.csv`` (the
    PDE, d = 2), ``depth.png``; the summary (``None``: stopped by the budget)."""
    return run_experiment(EXPERIMENT, p, out, comm=comm, progress=progress, budget=budget)
