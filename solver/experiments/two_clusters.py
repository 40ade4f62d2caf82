r"""Fig 4 of arXiv 2402.15415: ``Q̃ = K̃ = √β e_1e_1ᵀ``, ``V = I``: two-point clustering.

Sweeps: ``clusters.csv`` (cluster counts over time, every model and seed), then
``trajectories.csv`` (the angles of seed ``plot_seed``); figure ``two_clusters.png``.
Command line: ``scripts/exp_two_clusters.py``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..analysis import find_clusters
from ..model import Model, Uniform
from ..particles import sample_particles, simulate_particles
from ._common import TRAJECTORY_COLUMNS, memo, trajectory_rows
from ._experiment import Experiment, Sweep, run_experiment
from ._figures import figure, save_png, theta_lines, trajectories
from ._params import positive, require
from ._stats import rows_where
from ._sweep import as_columns

__all__ = [
    "PRESETS", "EXPERIMENT", "run_two_clusters", "two_cluster_case", "cluster_models",
    "two_cluster_summary", "plot_two_clusters",
]  # fmt: skip

PRESETS = {
    "tiny": {"n": 20, "seeds": 2, "T": 20.0, "dt": 0.1, "save_every": 1.0, "betas": [4.0],
             "radius": 0.05, "plot_seed": 0},
    "small": {"n": 20, "seeds": 8, "T": 100.0, "dt": 0.1, "save_every": 0.5,
              "betas": [1.0, 4.0], "radius": 0.05, "plot_seed": 0},
    "paper": {"n": 20, "seeds": 32, "T": 400.0, "dt": 0.1, "save_every": 1.0,
              "betas": [1.0, 2.0, 4.0, 9.0], "radius": 0.05, "plot_seed": 0},
}  # fmt: skip

CLUSTER_COLUMNS = ["t", "n_clusters", "mass1", "mass2", "x1_1", "x1_2"]


def clusters_check(p: dict) -> None:
    positive(p, "n", "T", "dt", "save_every", "seeds", "betas", "radius")
    require(p, "plot_seed", 0 <= p["plot_seed"] < p["seeds"], "in [0, seeds)")


def cluster_models(p: dict) -> list[dict]:
    """``identity`` (Q = K = I, the base) and ``e1e1`` (Q = K = √β e_1e_1ᵀ) per β."""
    return [{"model": "identity", "beta": 1.0}] + [{"model": "e1e1", "beta": b}
                                                   for b in p["betas"]]  # fmt: skip


def cluster_cases(p: dict) -> list[dict]:
    """Every model and seed."""
    return [{**m, "seed": s} for m in cluster_models(p) for s in range(p["seeds"])]


def _cluster_run(p: dict, model: str, beta: float, seed: int):
    def go():
        s = math.sqrt(beta)
        M = np.eye(2) if model == "identity" else np.diag([1.0, 0.0])
        x0 = sample_particles(Uniform(), p["n"], 2, seed=seed)
        return simulate_particles(Model(s * M, s * M, np.eye(2)), x0, p["T"], dt=p["dt"],
                                  save_every=p["save_every"])  # fmt: skip

    return memo(("clusters", model, beta, seed, p["n"], p["T"], p["dt"], p["save_every"]), go)


def two_cluster_case(p: dict, case: dict) -> list[dict]:
    """Number of clusters (quick shift, geodesic radius) over time; the two heaviest
    clusters' masses and first coordinates."""
    r = _cluster_run(p, case["model"], float(case["beta"]), int(case["seed"]))
    rows = []
    for t, x in zip(r.times, r.positions, strict=True):
        cl = find_clusters(x, radius=p["radius"])
        m = list(cl.masses[:2]) + [0.0] * (2 - min(2, len(cl)))
        x1 = list(cl.centres[:2, 0]) + [float("nan")] * (2 - min(2, len(cl)))
        rows.append(
            {
                "t": float(t),
                "n_clusters": len(cl),
                "mass1": float(m[0]),
                "mass2": float(m[1]),
                "x1_1": float(x1[0]),
                "x1_2": float(x1[1]),
            }
        )
    return rows


def two_cluster_trajectory(p: dict, case: dict) -> list[dict]:
    """Trajectory rows of one model, seed ``plot_seed`` (the run is shared with its case)."""
    return trajectory_rows(_cluster_run(p, case["model"], float(case["beta"]), p["plot_seed"]))


def two_cluster_summary(p: dict, rows) -> dict:
    """Per model, at the final time: fractions of seeds with one and two clusters, mean
    count, smallest ``|x_1|`` of the two-cluster centres."""
    T = max(r["t"] for r in rows)
    out = {}
    for m in cluster_models(p):
        fin = [r for r in rows if r["model"] == m["model"] and r["beta"] == m["beta"]
               and r["t"] == T]  # fmt: skip
        n = np.array([r["n_clusters"] for r in fin])
        two = [r for r in fin if r["n_clusters"] == 2]
        out[f"{m['model']} beta={m['beta']:g}"] = {
            "fraction_one": float(np.mean(n == 1)), "fraction_two": float(np.mean(n == 2)),
            "mean_clusters": float(n.mean()),
            "min_abs_x1_two": float(min((min(abs(r["x1_1"]), abs(r["x1_2"])) for r in two),
                                        default=float("nan"))),
        }  # fmt: skip
    return out


def clusters_summary(p: dict, rows: dict) -> dict:
    """:func:`two_cluster_summary` and its report."""
    stats = two_cluster_summary(p, rows["clusters"])
    report = [
        f"Two-point clustering (d = 2, n = {p['n']}, T = {p['T']}, {p['seeds']} initial "
        f"conditions): clusters at T (quick shift, radius {p['radius']})"
    ]
    for k, s in stats.items():
        report.append(f"  {k:<18} 1 cluster: {s['fraction_one']:.2f}, 2 clusters: "
                      f"{s['fraction_two']:.2f}, min |x1| of two-cluster centres: "
                      f"{s['min_abs_x1_two']:.3f}")  # fmt: skip
    return {"models": stats, "report": report}


def plot_two_clusters(crows, trows, p: dict, path: Path) -> Path:
    """Trajectories of the plotted seed per model (top); mean cluster count (bottom)."""
    models = cluster_models(p)
    fig = figure(3.6 * len(models), 6.0)
    gs = fig.add_gridspec(2, len(models), height_ratios=[1.4, 1])
    for j, m in enumerate(models):
        ax = fig.add_subplot(gs[0, j])
        times, theta = trajectories(rows_where(trows, model=m["model"], beta=m["beta"]))
        theta = np.mod(theta + np.pi / 2, 2 * np.pi) - np.pi / 2  # ±e1 well inside the range
        for i in range(theta.shape[1]):
            ax.plot(*theta_lines(times, theta[:, i]), lw=0.8)
        ax.set_xscale("log")
        name = "Q = K = I" if m["model"] == "identity" else \
            f"Q̃ = K̃ = {math.sqrt(m['beta']):g} e₁e₁ᵀ"  # fmt: skip
        ax.set_title(f"{name}, V = I", fontsize=10)
        ax.set_ylim(-np.pi / 2, 3 * np.pi / 2)
        ax.set_yticks([-np.pi / 2, 0, np.pi / 2, np.pi, 3 * np.pi / 2],
                      ["−π/2", "0 (e₁)", "π/2", "π (−e₁)", "3π/2"])  # fmt: skip
        ax.set_xlabel("t (depth)")
        if j == 0:
            ax.set_ylabel(f"θ (seed {p['plot_seed']})")
    ax = fig.add_subplot(gs[1, :])
    for m in models:
        sel = [r for r in crows if r["model"] == m["model"] and r["beta"] == m["beta"]]
        c = as_columns(sel)
        times = np.unique(c["t"])
        counts = c["n_clusters"].reshape(-1, len(times))
        lab = "Q = K = I" if m["model"] == "identity" else f"e₁e₁ᵀ, β = {m['beta']:g}"
        ax.plot(times, counts.mean(0), label=f"{lab} (mean of {counts.shape[0]})")
    ax.axhline(2, color="0.5", ls=":", lw=0.8)
    ax.set_yscale("log")
    ax.set_xscale("log")
    ax.set_xlabel("t (depth)")
    ax.set_ylabel("number of clusters")
    ax.legend(fontsize=8)
    return save_png(fig, path)


EXPERIMENT = Experiment(
    name="two_clusters",
    module=__name__,
    presets=PRESETS,
    check=clusters_check,
    sweeps=(
        Sweep("clusters.csv", cluster_cases, "two_cluster_case", key=("model", "beta", "seed"),
              columns=tuple(CLUSTER_COLUMNS), desc="two clusters"),
        Sweep("trajectories.csv", cluster_models, "two_cluster_trajectory",
              key=("model", "beta"), columns=tuple(TRAJECTORY_COLUMNS), progress=False),
    ),
    summarize=clusters_summary,
    plot=lambda p, rows, s, out: plot_two_clusters(rows["clusters"], rows["trajectories"], p,
                                                   out / "two_clusters.png"),
)  # fmt: skip


def run_two_clusters(p: dict, out, *, comm=None, progress=True, budget=None):
    """Fig 4: ``clusters.csv`` (cluster counts over time, every seed), ``trajectories.csv``
    (the plotted seed), ``two_clusters.png``; the summary (``None``: stopped by the budget)."""
    return run_experiment(EXPERIMENT, p, out, comm=comm, progress=progress, budget=budget)
