r"""Fig 4 of arXiv 2402.15415: ``Q̃ = K̃ = √β e_1e_1ᵀ``, ``V = I``: two-point clustering,
on S^1 and S^2 (``dims``).

Sweeps: ``clusters.csv`` (cluster counts over time, every model, dimension and seed), then
``trajectories.csv`` (the angles of seed ``plot_seed``, d = 2); figure ``two_clusters.png``.

The antipodal two-cluster state is a saddle; its growth rate is
:func:`saddle_growth_rate` (derivation in its docstring and ``docs/experiments.md``).
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
    "two_cluster_summary", "plot_two_clusters", "saddle_growth_rate",
]  # fmt: skip

PRESETS = {
    "tiny": {"n": 20, "seeds": 2, "T": 20.0, "dt": 0.1, "save_every": 1.0, "betas": [4.0],
             "radius": 0.05, "plot_seed": 0, "dims": [2, 3]},
    "small": {"n": 20, "seeds": 8, "T": 100.0, "dt": 0.1, "save_every": 0.5,
              "betas": [1.0, 4.0], "radius": 0.05, "plot_seed": 0, "dims": [2, 3]},
    "paper": {"n": 20, "seeds": 16, "T": 400.0, "dt": 0.1, "save_every": 1.0,
              "betas": [1.0, 2.0, 4.0, 9.0], "radius": 0.05, "plot_seed": 0,
              "dims": [2, 3]},
}  # fmt: skip

CLUSTER_COLUMNS = ["t", "n_clusters", "mass1", "mass2", "x1_1", "x1_2"]


def clusters_check(p: dict) -> None:
    positive(p, "n", "T", "dt", "save_every", "seeds", "betas", "radius")
    require(p, "plot_seed", 0 <= p["plot_seed"] < p["seeds"], "in [0, seeds)")
    require(p, "dims", len(p["dims"]) > 0 and all(int(d) == d and d >= 2 for d in p["dims"]),
            "a non-empty list of dimensions d >= 2")  # fmt: skip


def saddle_growth_rate(beta: float, mass: float = 0.5) -> float:
    r"""Growth rate of the antipodal two-cluster state ``±e_1`` for ``A = β e_1e_1ᵀ``, ``V = I``.

    Point masses ``m_a = mass`` at ``x_a`` (angle ``α`` from ``e_1``) and ``m_b = 1 − mass``
    at ``x_b`` (angle ``γ`` from ``−e_1``, same orientation, in a plane through ``e_1``). The
    self term of ``X[μ](x_a)`` is projected away, so
    ``α' = w_ab sin(α − γ)``, ``γ' = w_ba sin(γ − α)`` with
    ``w_ab = m_b e^{−β c_a c_b} / (m_a e^{β c_a²} + m_b e^{−β c_a c_b})`` (``c = cos``), and
    ``w_ba`` likewise. Any antipodal pair is at rest; the antipodality defect ``Δ = α − γ``
    obeys ``Δ' = (w_ab + w_ba) sin Δ``, so at ``±e_1``

    .. math::

        λ(β) = rac{m_b e^{-β}}{m_a e^{β} + m_b e^{-β}}
             + rac{m_a e^{-β}}{m_b e^{β} + m_a e^{-β}}
             \;\overset{m_a = m_b}{=}\; rac{2}{1 + e^{2β}},

    in each of the ``d − 1`` tangent directions (``A`` is invariant under rotations fixing
    ``e_1``); ``α + γ`` (turning the pair) is neutral at first order.
    """
    if not (0 < mass < 1):
        raise ValueError(f"mass must be in (0, 1), got {mass}")
    ma, mb = float(mass), 1.0 - float(mass)
    em, ep = math.exp(-beta), math.exp(beta)
    return mb * em / (ma * ep + mb * em) + ma * em / (mb * ep + ma * em)


def cluster_models(p: dict) -> list[dict]:
    """``identity`` (Q = K = I, the base) and ``e1e1`` (Q = K = √β e_1e_1ᵀ) per β."""
    return [{"model": "identity", "beta": 1.0}] + [{"model": "e1e1", "beta": b}
                                                   for b in p["betas"]]  # fmt: skip


def cluster_cases(p: dict) -> list[dict]:
    """Every model, dimension and seed."""
    return [{**m, "d": int(d), "seed": s} for d in p["dims"] for m in cluster_models(p)
            for s in range(p["seeds"])]  # fmt: skip


def _cluster_run(p: dict, model: str, beta: float, seed: int, d: int = 2):
    def go():
        s = math.sqrt(beta)
        M = np.eye(d) if model == "identity" else np.diag([1.0] + [0.0] * (d - 1))
        x0 = sample_particles(Uniform(), p["n"], d, seed=seed)
        return simulate_particles(Model(s * M, s * M, np.eye(d)), x0, p["T"], dt=p["dt"],
                                  save_every=p["save_every"])  # fmt: skip

    return memo(("clusters", model, beta, seed, d, p["n"], p["T"], p["dt"], p["save_every"]), go)


def two_cluster_case(p: dict, case: dict) -> list[dict]:
    """Number of clusters (quick shift, geodesic radius) over time; the two heaviest
    clusters' masses and first coordinates."""
    r = _cluster_run(p, case["model"], float(case["beta"]), int(case["seed"]), int(case["d"]))
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


def _label(m: dict, d: int) -> str:
    """Summary key: ``"<model> beta=<β>"`` for d = 2, ``"... d=<d>"`` otherwise."""
    return f"{m['model']} beta={m['beta']:g}" + ("" if d == 2 else f" d={d}")


def two_cluster_summary(p: dict, rows) -> dict:
    """Per model and dimension, at the final time: fractions of seeds with one and two
    clusters, mean count, smallest ``|x_1|`` of the two-cluster centres; for ``e1e1`` the
    saddle's growth rate :func:`saddle_growth_rate` (equal masses) and ``1/λ``."""
    T = max(r["t"] for r in rows)
    out = {}
    for d in p["dims"]:
        for m in cluster_models(p):
            fin = [r for r in rows if r["model"] == m["model"] and r["beta"] == m["beta"]
                   and r["d"] == d and r["t"] == T]  # fmt: skip
            n = np.array([r["n_clusters"] for r in fin])
            two = [r for r in fin if r["n_clusters"] == 2]
            lam = saddle_growth_rate(m["beta"]) if m["model"] == "e1e1" else float("nan")
            out[_label(m, d)] = {
                "fraction_one": float(np.mean(n == 1)), "fraction_two": float(np.mean(n == 2)),
                "mean_clusters": float(n.mean()),
                "min_abs_x1_two": float(min((min(abs(r["x1_1"]), abs(r["x1_2"])) for r in two),
                                            default=float("nan"))),
                "saddle_rate": lam, "saddle_time": 1.0 / lam,
            }  # fmt: skip
    return out


def clusters_summary(p: dict, rows: dict) -> dict:
    """:func:`two_cluster_summary` and its report."""
    stats = two_cluster_summary(p, rows["clusters"])
    report = [
        f"Two-point clustering (d = {p['dims']}, n = {p['n']}, T = {p['T']}, {p['seeds']} "
        f"initial conditions): clusters at T (quick shift, radius {p['radius']}); "
        "saddle growth rate of ±e1 (equal masses) lambda = 2/(1 + e^(2 beta))"
    ]
    for k, s in stats.items():
        rate = "" if not np.isfinite(s["saddle_rate"]) else \
            f", lambda = {s['saddle_rate']:.3g} (1/lambda = {s['saddle_time']:.3g})"  # fmt: skip
        report.append(f"  {k:<22} 1 cluster: {s['fraction_one']:.2f}, 2 clusters: "
                      f"{s['fraction_two']:.2f}, min |x1| of two-cluster centres: "
                      f"{s['min_abs_x1_two']:.3f}{rate}")  # fmt: skip
    return {"models": stats, "report": report}


def plot_two_clusters(crows, trows, p: dict, path: Path) -> Path:
    """Trajectories of the plotted seed per model, d = 2 (top); mean cluster count with its
    min–max band over the seeds, per model and dimension (bottom)."""
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
            ax.set_ylabel(f"θ (radians), d = 2, seed {p['plot_seed']}")
    ax = fig.add_subplot(gs[1, :])
    styles = ("-", "--", ":", "-.")
    for j, m in enumerate(models):
        for k, d in enumerate(p["dims"]):
            sel = [r for r in crows if r["model"] == m["model"] and r["beta"] == m["beta"]
                   and r["d"] == d]  # fmt: skip
            c = as_columns(sel)
            times = np.unique(c["t"])
            counts = c["n_clusters"].reshape(-1, len(times))
            lab = "Q = K = I" if m["model"] == "identity" else f"e₁e₁ᵀ, β = {m['beta']:g}"
            ax.plot(
                times,
                counts.mean(0),
                color=f"C{j}",
                ls=styles[k % len(styles)],
                label=f"{lab}, d = {d} (mean of {counts.shape[0]}, band: min–max)",
            )
            ax.fill_between(times, counts.min(0), counts.max(0), color=f"C{j}", alpha=0.12,
                            lw=0)  # fmt: skip
    ax.axhline(2, color="0.5", ls=":", lw=0.8)
    ax.set_yscale("log")
    ax.set_xscale("log")
    ax.set_xlabel("t (depth)")
    ax.set_ylabel("number of clusters")
    ax.legend(fontsize=8)
    fig.suptitle(f"particles only (no mesh): n = {p['n']} tokens, {p['seeds']} uniform draws "
                 f"per d, T = {p['T']:g}, dt = {p['dt']:g}", fontsize=10)  # fmt: skip
    return save_png(fig, path)


EXPERIMENT = Experiment(
    name="two_clusters",
    module=__name__,
    presets=PRESETS,
    check=clusters_check,
    sweeps=(
        Sweep("clusters.csv", cluster_cases, "two_cluster_case",
              key=("model", "beta", "d", "seed"),
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
