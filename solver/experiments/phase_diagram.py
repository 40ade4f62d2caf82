r"""Fig 3 of arXiv 2402.15415: the δ-cluster state over (ε, t) on S^1 and S^2; the transition
curve ``t_exit(ε)`` and its exponent.

Sweep: ``phase.csv`` (one row per sphere and ε; ε = 0 is the base flow); figure
``phase_diagram.png``. Command line: ``scripts/exp_phase_diagram.py``.

``geometry = "euclidean"`` runs the particle part in the authors' setting instead: the
time-rescaled Euclidean model ``ż_i = Σ_j P_ij Ṽ (z_j − z_i)`` (:func:`simulate_particles`
with ``geometry="euclidean"``), ``x_0`` uniform in ``[−1, 1]^d`` (``d = sphere + 1``),
``Q = K = I``, ``Ṽ = diag(1, 1 − ε, 1, ...)``; the δ-criterion is the same (final base
positions). The point-mass law is a sphere law (in R^d a collapsed cluster is at rest for any
``Ṽ``): ``nan`` there.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..analysis import cluster_direction, crossing_times
from ..model import Uniform
from ..particles import GEOMETRIES, sample_particles, simulate_particles
from ._common import e2_perturbation, identity_model, memo, point_mass_depth
from ._experiment import Experiment, Sweep, run_experiment
from ._figures import figure, save_png
from ._params import positive, require
from ._stats import delta_distance, loglog_fit, nanmedian, rows_where
from ._sweep import as_columns

__all__ = ["PRESETS", "EXPERIMENT", "run_phase_diagram", "phase_case", "plot_phase_diagram"]

PRESETS = {
    "tiny": {"spheres": [1, 2], "n": 20, "seed": 0, "eps_min": 0.01, "eps_max": 0.04,
             "n_eps": 3, "T": 80.0, "dt": 0.2, "delta": 0.1, "geometry": "sphere"},
    "small": {"spheres": [1, 2], "n": 20, "seed": 0, "eps_min": 0.001, "eps_max": 0.075,
              "n_eps": 10, "T": 400.0, "dt": 0.1, "delta": 0.1, "geometry": "sphere"},
    "paper": {"spheres": [1, 2], "n": 20, "seed": 0, "eps_min": 0.001, "eps_max": 0.075,
              "n_eps": 24, "T": 1000.0, "dt": 0.05, "delta": 0.1, "geometry": "sphere"},
}  # fmt: skip

PHASE_COLUMNS = ["t_enter", "t_exit", "t_exit_pointmass", "phi0", "final_distance"]


def phase_check(p: dict) -> None:
    positive(p, "n", "T", "dt", "delta", "eps_min", "eps_max", "n_eps")
    require(p, "spheres", all(s in (1, 2, 3) for s in p["spheres"]), "a list of 1, 2 or 3")
    require(p, "eps_max", p["eps_max"] >= p["eps_min"], ">= eps_min")
    require(p, "geometry", p["geometry"] in GEOMETRIES, f"one of {GEOMETRIES}")


def phase_eps(p: dict) -> list[float]:
    return [float(e) for e in np.geomspace(p["eps_min"], p["eps_max"], p["n_eps"])]


def phase_cases(p: dict) -> list[dict]:
    """One case per sphere and ε (ε = 0: the base flow itself)."""
    return [{"sphere": s, "eps": e} for s in p["spheres"] for e in [0.0] + phase_eps(p)]


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


def phase_summary(p: dict, rows: dict) -> dict:
    """The fit per sphere and the table of entry/exit times."""
    fits = {f"S{s}": phase_fit(rows["phase"], float(s)) for s in p["spheres"]}
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
    return {"fits": fits, "report": report}


PHASE_COLOURS = ("#f4a582", "#a6dba0", "#92c5de")
PHASE_NAMES = ("not yet clustered", "no forgetting (δ-close to base)", "forgetting")


def plot_phase_diagram(rows, p: dict, fits: dict, path: Path) -> Path:
    """Three phases over (ε, t), log-log, one panel per sphere."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    spheres = p["spheres"]
    fig = figure(5.0 * len(spheres), 4.4)
    axs = np.atleast_1d(fig.subplots(1, len(spheres)))
    t_lo = p["dt"]
    tedges = np.geomspace(t_lo, p["T"], 401)
    t = np.sqrt(tedges[:-1] * tedges[1:])
    for ax, s in zip(axs, spheres, strict=True):
        f = fits[f"S{s}"]
        c = as_columns([r for r in rows if r["sphere"] == s and r["eps"] > 0])
        eps, te, tx = c["eps"], c["t_enter"], c["t_exit"]
        le = np.log(eps)
        step = (le[1] - le[0]) if len(le) > 1 else 0.5
        edges = np.exp(np.concatenate([[le[0] - step / 2], (le[1:] + le[:-1]) / 2,
                                       [le[-1] + step / 2]]))  # fmt: skip
        with np.errstate(invalid="ignore"):
            ph = np.where(t[:, None] >= te[None, :], 1, 0)
            ph = np.where(t[:, None] >= tx[None, :], 2, ph)
        ax.pcolormesh(edges, tedges, ph, cmap=ListedColormap(PHASE_COLOURS), vmin=-0.5,
                      vmax=2.5, shading="flat")  # fmt: skip
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.plot(eps, tx, "ko", ms=3, label="t_exit (measured)")
        ax.plot(eps, te, "k^", ms=3, label="t_enter (measured)")
        if np.isfinite(c["t_exit_pointmass"]).any():
            ax.plot(eps, c["t_exit_pointmass"], "k--", lw=1, label="point-mass law")
        if np.isfinite(f["alpha"]):
            ax.plot(eps, f["prefactor"] * eps ** (-f["alpha"]), "k:", lw=1.5,
                    label=f"fit ε^(−{f['alpha']:.2f})")  # fmt: skip
        if np.isfinite(f["base_t_enter"]):
            ax.axhline(f["base_t_enter"], color="0.25", ls="-.", lw=1,
                       label="base flow t_enter")  # fmt: skip
        ax.set_ylim(t_lo, p["T"])
        ax.set_xlim(edges[0], edges[-1])
        ax.set_xlabel("perturbation norm ε")
        ax.set_ylabel("time (depth) t")
        where = f"S^{s}" if p["geometry"] == "sphere" else f"R^{s + 1} (Euclidean, rescaled)"
        ax.set_title(f"{where}, d = {s + 1}, n = {p['n']}, δ = {p['delta']}", fontsize=10)
        handles, _ = ax.get_legend_handles_labels()
        patches = [Patch(color=col, label=nm) for col, nm in zip(PHASE_COLOURS, PHASE_NAMES,
                                                                  strict=True)]  # fmt: skip
        ax.legend(handles=patches + handles, fontsize=7, loc="lower left")
    return save_png(fig, path)


EXPERIMENT = Experiment(
    name="phase_diagram",
    module=__name__,
    presets=PRESETS,
    check=phase_check,
    sweeps=(Sweep("phase.csv", phase_cases, "phase_case", key=("sphere", "eps"),
                  columns=tuple(PHASE_COLUMNS), desc="phase diagram"),),
    summarize=phase_summary,
    plot=lambda p, rows, s, out: plot_phase_diagram(rows["phase"], p, s["fits"],
                                                    out / "phase_diagram.png"),
)  # fmt: skip


def run_phase_diagram(p: dict, out, *, comm=None, progress=True, budget=None):
    """Fig 3: ``phase.csv`` (one row per sphere and ε), ``phase_diagram.png``; the summary
    (``None``: stopped by the budget)."""
    return run_experiment(EXPERIMENT, p, out, comm=comm, progress=progress, budget=budget)
