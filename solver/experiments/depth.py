r"""Thm 4.6 of arXiv 2402.15415: the critical depth ``T*`` against ε, vs the point-mass law
``T* = ln(tan φ0 / tan(φ0 − Δθ)) / ε``.

Sweep: ``depth.csv`` (one row per d, θ0, ε, seed); figure ``depth.png``.
Command line: ``scripts/exp_depth.py``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..analysis import cluster_direction, crossing_times
from ..model import VonMisesFisher
from ..particles import sample_particles, simulate_particles
from ._common import e2_perturbation, identity_model, point_mass_depth
from ._experiment import Experiment, Sweep, run_experiment
from ._figures import figure, save_png
from ._params import positive, require
from ._stats import (
    angle,
    delta_distance,
    directions,
    loglog_fit,
    nanmax,
    nanmedian,
    nanmin,
    rows_where,
)
from ._sweep import as_columns

__all__ = ["PRESETS", "EXPERIMENT", "run_depth", "depth_case", "depth_fits", "plot_depth"]

PRESETS = {
    "tiny": {"dims": [2], "n": 20, "kappa": 20.0, "theta0_deg": [45.0], "eps_min": 0.05,
             "eps_max": 0.3, "n_eps": 3, "seeds": 1, "delta": 0.1, "dt": 0.1,
             "t_factor": 1.3},
    "small": {"dims": [2, 3], "n": 50, "kappa": 20.0, "theta0_deg": [20.0, 45.0],
              "eps_min": 0.003, "eps_max": 0.3, "n_eps": 7, "seeds": 2, "delta": 0.1,
              "dt": 0.1, "t_factor": 1.3},
    "paper": {"dims": [2, 3, 8], "n": 100, "kappa": 20.0, "theta0_deg": [10.0, 20.0, 45.0],
              "eps_min": 0.002, "eps_max": 0.3, "n_eps": 9, "seeds": 3, "delta": 0.1,
              "dt": 0.1, "t_factor": 1.3},
}  # fmt: skip

DEPTH_COLUMNS = ["T", "T_star_direction", "T_star_delta", "T_star_pointmass", "phi0"]


def depth_check(p: dict) -> None:
    positive(p, "n", "kappa", "eps_min", "eps_max", "n_eps", "delta", "dt", "t_factor", "seeds")
    require(p, "dims", all(d >= 2 for d in p["dims"]), "a list of dimensions >= 2")
    lo = math.degrees(2 * math.asin(min(1.0, p["delta"] / 2)))
    require(
        p,
        "theta0_deg",
        all(lo < t < 90 for t in p["theta0_deg"]),
        f"angles in ({lo:.3g}, 90) degrees (above the turn Δθ = 2 arcsin(δ/2))",
    )
    require(p, "eps_max", p["eps_max"] >= p["eps_min"], ">= eps_min")


def depth_cases(p: dict) -> list[dict]:
    eps = [float(e) for e in np.geomspace(p["eps_min"], p["eps_max"], p["n_eps"])]
    return [{"d": d, "theta0_deg": th, "eps": e, "seed": s} for d in p["dims"]
            for th in p["theta0_deg"] for e in eps for s in range(p["seeds"])]  # fmt: skip


def _depth_centre(d: int, theta0_deg: float) -> np.ndarray:
    c = np.zeros(d)
    th = math.radians(theta0_deg)
    c[0], c[1] = math.cos(th), math.sin(th)
    return c


def depth_case(p: dict, case: dict) -> dict:
    """Critical depth of ``Ṽ = I − ε e_2e_2ᵀ`` from a vMF cloud (κ) centred at angle θ0.

    ``T_star_direction``: first depth at which the cluster directions of the base and the
    perturbed flows are ``Δθ = 2 arcsin(δ/2)`` apart; ``T_star_delta``: exit time of the
    δ-cluster state around the base's final configuration; ``T_star_pointmass``: the
    point-mass law from the base cluster direction. Both crossings are interpolated linearly
    between saved times; the horizon is ``t_factor`` times the a-priori law, plus 10.
    """
    d, eps, seed = int(case["d"]), float(case["eps"]), int(case["seed"])
    centre = _depth_centre(d, float(case["theta0_deg"]))
    dtheta = 2 * math.asin(p["delta"] / 2)
    t0 = point_mass_depth(centre, eps, dtheta)
    dt = min(p["dt"], t0 / 200)
    T = math.ceil((p["t_factor"] * t0 + 10.0) / dt) * dt
    x0 = sample_particles(VonMisesFisher(tuple(centre), p["kappa"]), p["n"], d, seed=seed)
    base = identity_model(d)
    rb = simulate_particles(base, x0, T, dt=dt, save_every=dt)
    rp = simulate_particles(base.perturbed(e2_perturbation(d, eps)), x0, T, dt=dt, save_every=dt)
    ang = angle(directions(rb.positions), directions(rp.positions))
    t_dir = crossing_times(rp.times, -ang, -dtheta)[0]  # first time ang >= dtheta
    D = delta_distance(rp.positions, rb.positions[-1])
    _, t_delta = crossing_times(rp.times, D, p["delta"], strict=True)
    u = cluster_direction(rb.positions[-1])
    return {"T": T, "T_star_direction": t_dir, "T_star_delta": t_delta,
            "T_star_pointmass": point_mass_depth(u, eps, dtheta),
            "phi0": math.asin(min(1.0, abs(u[1])))}  # fmt: skip


def depth_fits(rows) -> dict:
    """Per (d, θ0): the exponent of ``T* = c ε^{−α}`` and ``T*`` over the point-mass law."""
    out = {}
    for d in sorted({r["d"] for r in rows}):
        for th in sorted({r["theta0_deg"] for r in rows}):
            c = as_columns(rows_where(rows, d=d, theta0_deg=th))
            if not c:
                continue
            a, _ = loglog_fit(c["eps"], c["T_star_direction"])
            ratio = c["T_star_direction"] / c["T_star_pointmass"]
            ratio_delta = c["T_star_delta"] / c["T_star_pointmass"]
            out[f"d={int(d)},theta0={th:g}"] = {
                "exponent": -a,
                "ratio_median": nanmedian(ratio),
                "ratio_min": nanmin(ratio), "ratio_max": nanmax(ratio),
                "delta_ratio_median": nanmedian(ratio_delta),
            }  # fmt: skip
    return out


def depth_summary(p: dict, rows: dict) -> dict:
    """:func:`depth_fits` and their report."""
    fits = depth_fits(rows["depth"])
    report = [
        f"Depth transition (delta = {p['delta']}, n = {p['n']}, kappa = {p['kappa']}): "
        f"T* = c eps^-alpha vs the point-mass law ln(tan phi0 / tan(phi0 - dtheta))/eps"
    ]
    for k, f in fits.items():
        report.append(f"  {k}: alpha = {f['exponent']:.3f}; T*/law = {f['ratio_median']:.3f} "
                      f"(range {f['ratio_min']:.3f}..{f['ratio_max']:.3f}); delta-exit/law = "
                      f"{f['delta_ratio_median']:.3f}")  # fmt: skip
    return {"fits": fits, "report": report}


def plot_depth(rows, p: dict, path: Path) -> Path:
    """T* against ε (top) and its ratio to the point-mass law (bottom), one column per d."""
    dims = p["dims"]
    fig = figure(4.8 * len(dims), 6.0)
    axs = np.array(fig.subplots(2, len(dims), sharex=True, height_ratios=[2, 1])).reshape(2, -1)
    for j, d in enumerate(dims):
        top, bot = axs[0, j], axs[1, j]
        for th in p["theta0_deg"]:
            c = as_columns(rows_where(rows, d=float(d), theta0_deg=th))
            o = np.argsort(c["eps"], kind="stable")
            eps = c["eps"][o]
            line, = top.plot(eps, c["T_star_pointmass"][o], "-", lw=1,
                             label=f"point-mass law, θ0 = {th:g}°")  # fmt: skip
            top.plot(eps, c["T_star_direction"][o], "o", ms=4, color=line.get_color(),
                     label="measured: cluster direction")  # fmt: skip
            top.plot(eps, c["T_star_delta"][o], "x", ms=5, color=line.get_color(),
                     label="measured: δ-state exit")  # fmt: skip
            bot.plot(eps, (c["T_star_direction"] / c["T_star_pointmass"])[o], "o", ms=3,
                     color=line.get_color())  # fmt: skip
            bot.plot(eps, (c["T_star_delta"] / c["T_star_pointmass"])[o], "x", ms=4,
                     color=line.get_color())  # fmt: skip
        top.set_xscale("log")
        top.set_yscale("log")
        top.set_ylabel("critical depth T* (one marker per seed)")
        top.set_title(f"d = {d}, Ṽ = I − ε e₂e₂ᵀ, Δθ = 2 arcsin(δ/2)", fontsize=10)
        top.legend(fontsize=7)
        bot.axhline(1.0, color="k", lw=0.8)
        bot.set_ylabel("T* / law (one marker per seed)")
        bot.set_xlabel("perturbation norm ε")
    return save_png(fig, path)


EXPERIMENT = Experiment(
    name="depth",
    module=__name__,
    presets=PRESETS,
    check=depth_check,
    sweeps=(Sweep("depth.csv", depth_cases, "depth_case", key=("d", "theta0_deg", "eps", "seed"),
                  columns=tuple(DEPTH_COLUMNS), desc="depth"),),
    summarize=depth_summary,
    plot=lambda p, rows, s, out: plot_depth(rows["depth"], p, out / "depth.png"),
)  # fmt: skip


def run_depth(p: dict, out, *, comm=None, progress=True, budget=None):
    """Thm 4.6: ``depth.csv`` (one row per d, θ0, ε, seed), ``depth.png``; the summary
    (``None``: stopped by the budget)."""
    return run_experiment(EXPERIMENT, p, out, comm=comm, progress=progress, budget=budget)
