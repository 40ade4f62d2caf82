r"""Thm 4.2 of arXiv 2402.15415: i.i.d. adapters per layer; final ``W2`` against
``η_L / √L`` for several depths ``L``.

Sweep: ``random_adapters.csv`` (one row per L, ratio, seed); figure ``random_adapters.png``.
Command line: ``scripts/exp_random_adapters.py``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..analysis import cluster_direction
from ..model import RandomLoRA, Uniform
from ..particles import sample_particles, simulate_particles
from ._common import identity_model, memo
from ._experiment import Experiment, Sweep, run_experiment
from ._figures import figure, save_png
from ._params import positive, require
from ._stats import angle, loglog_fit, w2

__all__ = [
    "PRESETS", "EXPERIMENT", "run_random_adapters", "random_adapter_case", "random_stats",
    "random_collapse", "random_walk_prediction", "plot_random_adapters",
]  # fmt: skip

PRESETS = {
    "tiny": {"d": 3, "n": 16, "x0_seed": 0, "T": 4.0, "dt": 0.05, "Ls": [2, 8],
             "ratio_min": 0.01, "ratio_max": 0.1, "n_ratio": 2, "seeds": 2, "s": [1.0],
             "linear_max": 0.5},
    "small": {"d": 3, "n": 32, "x0_seed": 0, "T": 10.0, "dt": 0.05, "Ls": [4, 16, 64],
              "ratio_min": 0.001, "ratio_max": 1.0, "n_ratio": 7, "seeds": 4, "s": [1.0],
              "linear_max": 0.5},
    "paper": {"d": 3, "n": 64, "x0_seed": 0, "T": 10.0, "dt": 0.025,
              "Ls": [1, 4, 16, 64, 256], "ratio_min": 0.001, "ratio_max": 3.0, "n_ratio": 13,
              "seeds": 16, "s": [1.0], "linear_max": 0.5},
}  # fmt: skip

RANDOM_COLUMNS = ["eta", "w2", "direction_drift"]


def random_check(p: dict) -> None:
    positive(p, "d", "n", "T", "dt", "Ls", "ratio_min", "ratio_max", "n_ratio", "seeds")
    require(p, "d", p["d"] >= 2, ">= 2")
    require(p, "ratio_max", p["ratio_max"] >= p["ratio_min"], ">= ratio_min")


def random_ratios(p: dict) -> list[float]:
    return [float(r) for r in np.geomspace(p["ratio_min"], p["ratio_max"], p["n_ratio"])]


def random_cases(p: dict) -> list[dict]:
    """(L, η_L/√L, seed) for every depth, ratio and seed."""
    return [{"L": L, "ratio": r, "seed": s} for L in p["Ls"] for r in random_ratios(p)
            for s in range(p["seeds"])]  # fmt: skip


def _random_base(p: dict):
    d = p["d"]
    x0 = sample_particles(Uniform(), p["n"], d, seed=p["x0_seed"])
    key = ("random-base", d, p["n"], p["x0_seed"], p["T"], p["dt"])
    return x0, memo(key, lambda: simulate_particles(identity_model(d), x0, p["T"], dt=p["dt"]))


def random_adapter_case(p: dict, case: dict) -> dict:
    """Final ``W2(μ_T, ν_T)`` with ``ΔV^ℓ = η_L Σ_a s_a u_a^ℓ (v_a^ℓ)ᵀ`` on ``L`` layers of
    length ``h = T/L`` (``η_L = ratio · √L``), base ``Q = K = V = I_d``."""
    L, ratio, seed = int(case["L"]), float(case["ratio"]), int(case["seed"])
    eta = ratio * math.sqrt(L)
    x0, rb = _random_base(p)
    d = p["d"]
    pert = RandomLoRA(d=d, eta=eta, h=p["T"] / L, s=tuple(p["s"]), seed=seed)
    r = simulate_particles(identity_model(d).perturbed(pert), x0, p["T"], dt=p["dt"])
    xb, xp = rb.positions[-1], r.positions[-1]
    return {
        "eta": eta,
        "w2": w2(xb, xp),
        "direction_drift": float(angle(cluster_direction(xb), cluster_direction(xp))),
    }


def random_walk_prediction(p: dict) -> float:
    """Point-mass estimate ``E W2 ≈ k ratio``: the cluster takes ``L`` independent tangent
    steps ``η h P_p u (vᵀp)``, RMS total ``ratio · T · ‖s‖ √(d−1)/d``; ``E|X|/RMS`` of a
    Gaussian in ``d − 1`` dimensions turns it into a mean. Returns ``k``."""
    d = p["d"]
    rms = p["T"] * float(np.linalg.norm(p["s"])) * math.sqrt(d - 1) / d
    mean_over_rms = math.sqrt(2 / (d - 1)) * math.exp(math.lgamma(d / 2) - math.lgamma((d - 1) / 2))
    return rms * mean_over_rms


def random_stats(rows) -> dict:
    """Mean and spread over seeds for every (L, ratio)."""
    out = {}
    for r in rows:
        out.setdefault((r["L"], r["ratio"]), []).append((r["eta"], r["w2"]))
    stats = {}
    for (L, ratio), v in sorted(out.items()):
        w = np.array([x[1] for x in v])
        stats[(L, ratio)] = {"eta": v[0][0], "mean": float(w.mean()),
                             "std": float(w.std(ddof=1)) if len(w) > 1 else 0.0,
                             "min": float(w.min()), "max": float(w.max())}  # fmt: skip
    return stats


def random_collapse(p: dict, stats: dict) -> dict:
    """Per depth, ``mean W2 ≈ c_L · ratio^a`` in the small-drift regime (mean W2 below
    ``linear_max``); collapse = the ``c_L`` agree. Also the spread the same curves would have
    against ``η`` alone (``c_L / √L``), for comparison."""
    Ls = sorted({k[0] for k in stats})
    fits = {}
    for L in Ls:
        pts = [(k[1], s["mean"]) for k, s in stats.items() if k[0] == L
               and s["mean"] < p["linear_max"]]  # fmt: skip
        a, c = loglog_fit([x[0] for x in pts], [x[1] for x in pts])
        ratios = np.array([x[0] for x in pts])
        cw = float(np.exp(np.mean(np.log([x[1] / x[0] for x in pts])))) if pts else float("nan")
        fits[L] = {"exponent": a, "c": cw, "n": len(ratios)}
    cs = np.array([fits[L]["c"] for L in Ls])
    raw = cs / np.sqrt(np.array(Ls, dtype=float))
    ok = np.isfinite(cs)
    return {
        "fits": fits,
        "spread_vs_ratio": float(cs[ok].max() / cs[ok].min()) if ok.sum() > 1 else float("nan"),
        "spread_vs_eta": float(raw[ok].max() / raw[ok].min()) if ok.sum() > 1 else float("nan"),
        "prediction_c": random_walk_prediction(p),
    }


def random_summary(p: dict, rows: dict) -> dict:
    """Mean ``W2`` per (L, ratio) and the collapse of the curves against ``η_L / √L``."""
    stats = random_stats(rows["random_adapters"])
    col = random_collapse(p, stats)
    report = [
        f"Random adapters (d = {p['d']}, n = {p['n']}, T = {p['T']}, {p['seeds']} seeds): final "
        f"W2 vs eta_L / sqrt(L)",
        "  small-drift fits mean W2 = c_L (eta_L/sqrt L)^a: " + ", ".join(
            f"L={int(L)}: c={f['c']:.3g}, a={f['exponent']:.2f}" for L, f in col["fits"].items()),
        f"  collapse: spread of c_L across L = {col['spread_vs_ratio']:.2f}x against "
        f"eta_L/sqrt(L), vs {col['spread_vs_eta']:.2f}x against eta_L alone; point-mass "
        f"random-walk prediction c = {col['prediction_c']:.3g}",
    ]  # fmt: skip
    return {
        "collapse": col,
        "stats": [{"L": k[0], "ratio": k[1], **v} for k, v in stats.items()],
        "report": report,
    }


def plot_random_adapters(stats: dict, p: dict, col: dict, path: Path) -> Path:
    """Final W2 against η_L (left) and η_L/√L (right), mean ± std over seeds."""
    fig = figure(10, 4.2)
    axs = fig.subplots(1, 2)
    Ls = sorted({k[0] for k in stats})
    for L in Ls:
        ks = sorted(k for k in stats if k[0] == L)
        r = np.array([k[1] for k in ks])
        eta = np.array([stats[k]["eta"] for k in ks])
        m = np.array([stats[k]["mean"] for k in ks])
        s = np.array([stats[k]["std"] for k in ks])
        for ax, x in zip(axs, (eta, r), strict=True):
            (line,) = ax.plot(x, m, "o-", ms=3, label=f"L = {int(L)}")
            ax.fill_between(x, np.clip(m - s, m * 0.05, None), m + s, color=line.get_color(),
                            alpha=0.2, lw=0)  # fmt: skip
    rr = np.geomspace(p["ratio_min"], p["ratio_max"], 50)
    axs[1].plot(rr, col["prediction_c"] * rr, "k--", lw=1, label="point-mass random walk")
    axs[1].axvline(1.0, color="0.5", lw=0.8, ls=":")
    for ax, xl in zip(axs, ("η_L", "η_L / √L"), strict=True):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xl)
        ax.set_ylabel("W2(μ_T, ν_T) (rad; band: mean ± 1 s.d. over seeds)")
        ax.legend(fontsize=8)
    axs[0].set_title("against the adapter norm", fontsize=10)
    axs[1].set_title(f"collapse: spread {col['spread_vs_ratio']:.2f}× (vs "
                     f"{col['spread_vs_eta']:.2f}× against η_L)", fontsize=10)  # fmt: skip
    return save_png(fig, path)


EXPERIMENT = Experiment(
    name="random_adapters",
    module=__name__,
    presets=PRESETS,
    check=random_check,
    sweeps=(Sweep("random_adapters.csv", random_cases, "random_adapter_case",
                  key=("L", "ratio", "seed"), columns=tuple(RANDOM_COLUMNS),
                  desc="random adapters"),),
    summarize=random_summary,
    plot=lambda p, rows, s, out: plot_random_adapters(random_stats(rows["random_adapters"]), p,
                                                      s["collapse"], out / "random_adapters.png"),
)  # fmt: skip


def run_random_adapters(p: dict, out, *, comm=None, progress=True, budget=None):
    """Thm 4.2: ``random_adapters.csv`` (one row per L, ratio, seed), ``random_adapters.png``;
    the summary (``None``: stopped by the budget)."""
    return run_experiment(EXPERIMENT, p, out, comm=comm, progress=progress, budget=budget)
