r"""Thm 4.2 of arXiv 2402.15415: i.i.d. adapters per layer; final ``W2(μ_T, ν_T)`` against
``η_L / √L`` for several depths ``L``, on particles and on the mean-field PDE (S^1).

Sweeps: ``random_adapters.csv`` (particles, one row per L, ratio, seed) and ``pde.csv`` (the
PDE, same cases; only for ``d = 2``); figure ``random_adapters.png``.
Command line: ``scripts/exp_random_adapters.py``.

Seed ``s`` fixes the adapters (:class:`~solver.model.RandomLoRA` ``seed = s``) and the initial
draw (``n`` uniform tokens, seed ``x0_seed + s``); the PDE of seed ``s`` starts from the
density that draw approximates (:func:`draw_density`: ``1 + d⟨m, x⟩``) with the same adapters,
DG0 on ``pde_cells`` cells, adaptive steps. The theorem's statement is that the curves against
``η_L/√L`` collapse: in the linear regime ``W2 ≈ c_L η_L/√L`` with ``c_L ∝ L^γ``, ``γ = 0``
(against ``η_L`` alone they would not: ``γ = 1/2``). ``γ`` is fitted with a bootstrap interval
over the seeds (:func:`random_fit`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..analysis import cluster_direction
from ..model import RandomLoRA, Uniform
from ..particles import sample_particles, simulate_particles
from ..velocity import attention_velocity
from ._common import draw_density, identity_model, memo
from ._experiment import Experiment, Run, Sweep, run_experiment
from ._figures import figure, save_png
from ._params import positive, require
from ._stats import angle, bootstrap, w2, w2_cells_s1

__all__ = [
    "PRESETS", "EXPERIMENT", "run_random_adapters", "random_adapter_case", "random_pde_case",
    "random_stats", "random_fit", "random_walk_prediction", "plot_random_adapters",
]  # fmt: skip

PRESETS = {
    "tiny": {"d": 2, "n": 32, "x0_seed": 0, "T": 6.0, "dt": 0.05, "Ls": [4, 64],
             "ratio_min": 0.02, "ratio_max": 0.02, "n_ratio": 1, "seeds": 48, "s": [1.0],
             "linear_max": 0.5, "pde_cells": 64, "pde_seeds": 8},
    "small": {"d": 2, "n": 32, "x0_seed": 0, "T": 10.0, "dt": 0.05, "Ls": [1, 8, 64],
              "ratio_min": 0.01, "ratio_max": 1.0, "n_ratio": 3, "seeds": 24, "s": [1.0],
              "linear_max": 0.5, "pde_cells": 64, "pde_seeds": 6},
    "paper": {"d": 2, "n": 64, "x0_seed": 0, "T": 10.0, "dt": 0.025,
              "Ls": [1, 4, 16, 64], "ratio_min": 0.003, "ratio_max": 1.0, "n_ratio": 5,
              "seeds": 48, "s": [1.0], "linear_max": 0.5, "pde_cells": 128, "pde_seeds": 12},
}  # fmt: skip

RANDOM_COLUMNS = ["eta", "w2", "direction_drift", "max_speed_T"]
#: a draw whose largest particle speed at T (base flow) exceeds this has not clustered by T
SPEED_TOL = 0.01
PDE_COLUMNS = ["eta", "w2", "direction_drift", "cells", "steps"]
#: bootstrap resamples and interval level of the fits
N_BOOT, LEVEL = 2000, 0.9
#: sub-atoms per cell in the PDE's ``W2`` (:func:`w2_cells_s1`)
SUB = 32


def random_check(p: dict) -> None:
    positive(p, "d", "n", "T", "dt", "Ls", "ratio_min", "ratio_max", "n_ratio", "seeds",
             "linear_max", "pde_cells", "pde_seeds")  # fmt: skip
    require(
        p,
        "pde_seeds",
        p["pde_seeds"] <= p["seeds"],
        "<= seeds (the PDE runs seeds 0..pde_seeds-1 of the particles)",
    )
    require(p, "d", p["d"] >= 2, ">= 2")
    require(p, "ratio_max", p["ratio_max"] >= p["ratio_min"], ">= ratio_min")


def random_ratios(p: dict) -> list[float]:
    return [float(r) for r in np.geomspace(p["ratio_min"], p["ratio_max"], p["n_ratio"])]


def random_cases(p: dict) -> list[dict]:
    """(L, η_L/√L, seed) for every depth, ratio and seed."""
    return [{"L": L, "ratio": r, "seed": s} for L in p["Ls"] for r in random_ratios(p)
            for s in range(p["seeds"])]  # fmt: skip


def random_pde_cases(p: dict) -> list[dict]:
    """The cases of the first ``pde_seeds`` seeds on the PDE (S^1 only: none for ``d != 2``)."""
    return [c for c in random_cases(p) if c["seed"] < p["pde_seeds"]] if p["d"] == 2 else []


def _x0(p: dict, seed: int) -> np.ndarray:
    return sample_particles(Uniform(), p["n"], p["d"], seed=p["x0_seed"] + seed)


def _perturbation(p: dict, case: dict) -> RandomLoRA:
    L, ratio = int(case["L"]), float(case["ratio"])
    return RandomLoRA(d=p["d"], eta=ratio * math.sqrt(L), h=p["T"] / L, s=tuple(p["s"]),
                      seed=int(case["seed"]))  # fmt: skip


def random_adapter_case(p: dict, case: dict) -> dict:
    """Final ``W2(μ_T, ν_T)`` of the particles with ``ΔV^ℓ = η_L Σ_a s_a u_a^ℓ (v_a^ℓ)ᵀ`` on
    ``L`` layers of length ``h = T/L`` (``η_L = ratio · √L``), base ``Q = K = V = I_d``."""
    seed = int(case["seed"])
    x0 = _x0(p, seed)
    key = ("random-base", p["d"], p["n"], p["x0_seed"] + seed, p["T"], p["dt"])
    base = identity_model(p["d"])
    rb = memo(key, lambda: simulate_particles(base, x0, p["T"], dt=p["dt"]))
    pert = _perturbation(p, case)
    r = simulate_particles(base.perturbed(pert), x0, p["T"], dt=p["dt"])
    xb, xp = rb.positions[-1], r.positions[-1]
    d = p["d"]
    v = attention_velocity(xb, xb, np.full(len(xb), 1.0 / len(xb)), np.eye(d), np.eye(d))
    return {
        "eta": pert.eta,
        "w2": w2(xb, xp),
        "direction_drift": float(angle(cluster_direction(xb), cluster_direction(xp))),
        "max_speed_T": float(np.linalg.norm(v, axis=1).max()),
    }


def random_pde_case(p: dict, case: dict, run: Run) -> dict | None:
    """The same case on the PDE (all ranks; the row on rank 0): base and perturbed flows in
    one :func:`solver.evolve` (DG0, adaptive) from :func:`draw_density` of the seed's draw;
    ``W2`` of the final densities with each cell's mass spread over its arc
    (:func:`w2_cells_s1`); ``steps``: the run's time steps (its cost)."""
    from ..mesh import sphere_mesh
    from ..run import evolve

    sm = sphere_mesh(run.comm, 1, cells=p["pde_cells"])
    base = identity_model(2)
    pert = _perturbation(p, case)
    init = draw_density(_x0(p, int(case["seed"])), f"seed {case['seed']}")
    res = evolve(sm, base, init, p["T"], perturbed=base.perturbed(pert), w2=False, vtx=False,
                 progress=False, cluster_delta=None)  # fmt: skip
    if run.comm.rank != 0:
        return None
    a, b = res.density[-1] * res.areas, res.density_perturbed[-1] * res.areas
    ub = cluster_direction(res.centroids, np.clip(a, 0, None))
    up = cluster_direction(res.centroids, np.clip(b, 0, None))
    return {"eta": pert.eta, "w2": w2_cells_s1(res.centroids, a, b, SUB),
            "direction_drift": float(angle(ub, up)), "cells": len(res.areas),
            "steps": len(res.step_times) - 1}  # fmt: skip


def random_walk_prediction(p: dict, rms: bool = False) -> float:
    """Point-mass estimate ``E W2 ≈ k ratio``: the cluster takes ``L`` independent tangent
    steps ``η h P_p u (vᵀp)``, RMS total ``ratio · T · ‖s‖ √(d−1)/d`` whatever ``L`` (so
    ``γ = 0``); ``E|X|/RMS`` of a Gaussian in ``d − 1`` dimensions turns it into a mean.
    Returns ``k`` (``rms``: the RMS constant ``T ‖s‖ √(d−1)/d`` itself)."""
    d = p["d"]
    rms_k = p["T"] * float(np.linalg.norm(p["s"])) * math.sqrt(d - 1) / d
    if rms:
        return rms_k
    mean_over_rms = math.sqrt(2 / (d - 1)) * math.exp(math.lgamma(d / 2) - math.lgamma((d - 1) / 2))
    return rms_k * mean_over_rms


def _grid(rows) -> dict:
    """``{(L, ratio): W2 over the seeds (seed order)}``."""
    out: dict = {}
    for r in sorted(rows, key=lambda r: (r["L"], r["ratio"], r["seed"])):
        out.setdefault((r["L"], r["ratio"]), []).append(r["w2"])
    return {k: np.array(v) for k, v in out.items()}


def random_stats(rows) -> dict:
    """Mean, RMS and spread over seeds for every (L, ratio)."""
    stats = {}
    for (L, ratio), w in _grid(rows).items():
        stats[(L, ratio)] = {"eta": ratio * math.sqrt(L), "mean": float(w.mean()),
                             "rms": float(np.sqrt(np.mean(w**2))),
                             "std": float(w.std(ddof=1)) if len(w) > 1 else 0.0,
                             "min": float(w.min()), "max": float(w.max())}  # fmt: skip
    return stats


def random_fit(p: dict, rows) -> dict:
    """``c_L`` and ``γ`` with bootstrap intervals over the seeds.

    Linear regime of depth ``L``: the ratios whose mean ``W2`` (all seeds) is below
    ``linear_max``. There ``W2 ≈ c_L r`` (``r = η_L/√L``) in the mean-square sense:
    ``log c_L`` is the mean over those ratios of ``log(rms_seeds W2 / r)`` (the slope of the
    line through the origin, fitted in log space so that every ratio counts alike). The RMS,
    not the mean: the drift is a sum of ``L`` independent layer steps, so its variance is
    ``ratio² T² Var(step)`` for every ``L`` (``γ = 0`` exactly for a point mass), whereas its
    mean also depends on the shape of the law (a product of two Gaussians at ``L = 1``,
    ``E|X|/RMS = 2/π``, a Gaussian for large ``L``, ``√(2/π)``). ``γ``: least-squares slope
    of ``log c_L`` against ``log L``. Intervals: :func:`bootstrap` resampling whole seeds (a
    seed's adapters and draw are shared by all its cases: the independent units), ``LEVEL``.
    One draw can dominate (a draw still spread at ``T`` responds more): ``not_clustered``
    names the seeds whose base flow's largest particle speed at ``T`` exceeds
    :data:`SPEED_TOL`, and ``gamma_clustered`` is γ with its interval without them.
    """
    grid = _grid(rows)
    Ls = sorted({k[0] for k in grid})
    lin = {L: [r for (LL, r), w in grid.items() if LL == L and w.mean() < p["linear_max"]]
           for L in Ls}  # fmt: skip
    n = min(len(w) for w in grid.values())

    def c_of(L, idx):
        if not lin[L]:
            return float("nan")
        rms = [math.sqrt(np.mean(grid[(L, r)][idx] ** 2)) / r for r in lin[L]]
        return float(np.exp(np.mean(np.log(rms))))

    def gamma(idx):
        c = np.array([c_of(L, idx) for L in Ls])
        ok = np.isfinite(c) & (c > 0)
        if ok.sum() < 2:
            return float("nan")
        return float(np.polyfit(np.log(np.array(Ls, float)[ok]), np.log(c[ok]), 1)[0])

    g, glo, ghi = bootstrap(gamma, n, n_boot=N_BOOT, level=LEVEL)
    cs = {L: bootstrap(lambda idx, L=L: c_of(L, idx), n, n_boot=N_BOOT, level=LEVEL) for L in Ls}
    # robust: the draws not clustered by T (largest base speed > SPEED_TOL) named, and γ
    # without them (the same bootstrap over the remaining seeds)
    moving = sorted({int(r["seed"]) for r in rows if r.get("max_speed_T", 0.0) > SPEED_TOL})
    seeds = sorted({int(r["seed"]) for r in rows})
    keep = np.array([i for i, sd in enumerate(seeds) if sd not in moving])
    if not moving:
        g_kept = (g, glo, ghi)
    elif len(keep) >= 2:
        g_kept = bootstrap(lambda idx: gamma(keep[idx]), len(keep), n_boot=N_BOOT, level=LEVEL)
    else:  # (almost) every draw still moving at T: nothing left to fit
        g_kept = (float("nan"),) * 3
    return {"gamma": g, "gamma_lo": glo, "gamma_hi": ghi, "seeds": n, "level": LEVEL,
            "not_clustered": moving, "gamma_clustered": list(g_kept),
            "c": {L: v[0] for L, v in cs.items()}, "c_lo": {L: v[1] for L, v in cs.items()},
            "c_hi": {L: v[2] for L, v in cs.items()},
            "linear_ratios": {L: len(v) for L, v in lin.items()}}  # fmt: skip


def random_summary(p: dict, rows: dict) -> dict:
    """Mean ``W2`` per (L, ratio), ``c_L`` and ``γ`` per solver, PDE over particles."""
    solvers = {"particles": rows["random_adapters"]}
    if rows.get("pde"):
        solvers["pde"] = rows["pde"]
    fits = {k: random_fit(p, v) for k, v in solvers.items()}
    stats = {k: random_stats(v) for k, v in solvers.items()}
    pct = f"{100 * LEVEL:g}%"
    report = [
        f"Random adapters (d = {p['d']}, n = {p['n']}, T = {p['T']}; seeds over draw and "
        f"adapters: {p['seeds']} particles, {p['pde_seeds']} PDE): RMS final W2 = "
        f"c_L eta_L/sqrt(L), c_L ~ L^gamma"
    ]
    for k, f in fits.items():
        report.append(
            f"  {k} ({f['seeds']} seeds): gamma = {f['gamma']:.3f}, {pct} CI [{f['gamma_lo']:.3f}, "
            f"{f['gamma_hi']:.3f}] (theory 0; eta_L alone would give 0.5); draws not "
            f"clustered by T (speed > {SPEED_TOL}): {f['not_clustered'] or 'none'}, without "
            f"them gamma = {f['gamma_clustered'][0]:.3f} [{f['gamma_clustered'][1]:.3f}, "
            f"{f['gamma_clustered'][2]:.3f}]; c_L: " + ", ".join(
                f"L={int(L)}: {c:.3g} [{f['c_lo'][L]:.3g}, {f['c_hi'][L]:.3g}]"
                for L, c in f["c"].items()))  # fmt: skip
    out = {"fits": fits, "prediction_c": random_walk_prediction(p),
           "prediction_c_rms": random_walk_prediction(p, rms=True),
           "stats": {k: [{"L": kk[0], "ratio": kk[1], **v} for kk, v in s.items()]
                     for k, s in stats.items()}}  # fmt: skip
    if "pde" in stats:
        # the same seeds (adapters, and the draw the PDE's density comes from) on both
        same = random_stats([r for r in rows["random_adapters"] if r["seed"] < p["pde_seeds"]])
        q = np.array(
            [
                stats["pde"][k]["rms"] / same[k]["rms"]
                for k in stats["pde"]
                if stats["pde"][k]["mean"] < p["linear_max"]
            ]
        )
        out["pde_over_particles"] = {"median": float(np.median(q)), "min": float(q.min()),
                                     "max": float(q.max()), "n": len(q)}  # fmt: skip
        steps = [r["steps"] for r in rows["pde"]]
        out["pde_steps"] = {"median": float(np.median(steps)), "max": int(max(steps))}
        report.append(f"  PDE ({p['pde_cells']} cells, DG0, adaptive; median "
                      f"{out['pde_steps']['median']:.0f} steps/run) over particles (same "
                      f"{p['pde_seeds']} seeds), RMS W2 in the linear regime: median "
                      f"{out['pde_over_particles']['median']:.3f}, "
                      f"range {q.min():.3f}..{q.max():.3f}")  # fmt: skip
    report.append(
        f"  point-mass random walk: c = {out['prediction_c_rms']:.3g} (RMS), mean W2 "
        f"= {out['prediction_c']:.3g} eta_L/sqrt(L)"
    )
    out["report"] = report
    return out


def plot_random_adapters(p: dict, s: dict, path: Path) -> Path:
    """Final W2 against η_L (left, particles) and η_L/√L (middle, particles and PDE; mean ±
    std over seeds), and ``c_L`` against ``L`` with bootstrap intervals (right)."""
    fig = figure(14, 4.4)
    axs = fig.subplots(1, 3)
    colours = {}
    for solver, style in (("particles", "o-"), ("pde", "s--")):
        st = {(r["L"], r["ratio"]): r for r in s["stats"].get(solver, [])}
        for L in sorted({k[0] for k in st}):
            ks = sorted(k for k in st if k[0] == L)
            r = np.array([k[1] for k in ks])
            m = np.array([st[k]["mean"] for k in ks])
            sd = np.array([st[k]["std"] for k in ks])
            axes = (axs[0], axs[1]) if solver == "particles" else (axs[1],)
            xs = (r * math.sqrt(L), r) if solver == "particles" else (r,)
            for ax, x in zip(axes, xs, strict=True):
                (line,) = ax.plot(x, m, style, ms=3, color=colours.get(L),
                                  label=f"{solver}, L = {int(L)}")  # fmt: skip
                colours[L] = line.get_color()
                ax.fill_between(x, np.clip(m - sd, m * 0.05, None), m + sd, color=colours[L],
                                alpha=0.15, lw=0)  # fmt: skip
    rr = np.geomspace(p["ratio_min"], p["ratio_max"], 50)
    axs[1].plot(rr, s["prediction_c"] * rr, "k:", lw=1, label="point-mass random walk")
    for ax, xl in zip(axs[:2], ("η_L", "η_L / √L"), strict=True):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xl)
        ax.set_ylabel("W2(μ_T, ν_T) (rad)")
        ax.legend(fontsize=6)
    axs[0].set_title("particles against the adapter norm", fontsize=9)
    axs[1].set_title("against η_L/√L: particles (o) and PDE (s)", fontsize=9)
    ax = axs[2]
    for solver, mk in (("particles", "o"), ("pde", "s")):
        f = s["fits"].get(solver)
        if f is None:
            continue
        Ls = np.array(sorted(f["c"]), float)
        c = np.array([f["c"][L] for L in sorted(f["c"])])  # RMS over seeds / ratio
        err = np.array([[c[i] - f["c_lo"][L], f["c_hi"][L] - c[i]]
                        for i, L in enumerate(sorted(f["c"]))]).T  # fmt: skip
        ax.errorbar(Ls, c, yerr=err, fmt=mk, ms=4, capsize=3,
                    label=f"{solver}: γ = {f['gamma']:.2f} [{f['gamma_lo']:.2f}, "
                          f"{f['gamma_hi']:.2f}]")  # fmt: skip
    ax.axhline(s["prediction_c_rms"], color="k", ls=":", lw=1, label="point-mass walk (γ = 0)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("depth L (layers)")
    ax.set_ylabel("c_L = RMS W2 / (η_L/√L) (rad)")
    ax.legend(fontsize=7)
    ax.set_title(f"c_L ∝ L^γ, {100 * LEVEL:g}% bootstrap CI over seeds", fontsize=9)
    cost = ""
    if "pde_steps" in s:
        cost = (
            f"; PDE: S^1, {p['pde_cells']} cells, DG0, adaptive, median "
            f"{s['pde_steps']['median']:.0f} steps/run"
        )
    fig.suptitle(f"Thm 4.2, random adapters: d = {p['d']}, n = {p['n']} particles (RK4, dt = "
                 f"{p['dt']:g}), T = {p['T']:g}; seeds (draw + adapters): {p['seeds']} "
                 f"particles, {p['pde_seeds']} PDE{cost}",
                 fontsize=10)  # fmt: skip
    return save_png(fig, path)


EXPERIMENT = Experiment(
    name="random_adapters",
    module=__name__,
    presets=PRESETS,
    check=random_check,
    sweeps=(Sweep("random_adapters.csv", random_cases, "random_adapter_case",
                  key=("L", "ratio", "seed"), columns=tuple(RANDOM_COLUMNS),
                  desc="random adapters"),
            Sweep("pde.csv", random_pde_cases, "random_pde_case", key=("L", "ratio", "seed"),
                  columns=tuple(PDE_COLUMNS), desc="random adapters (PDE)", mode="cases",
                  needs_run=True)),
    summarize=random_summary,
    plot=lambda p, rows, s, out: plot_random_adapters(p, s, out / "random_adapters.png"),
    needs_comm=True,
)  # fmt: skip


def run_random_adapters(p: dict, out, *, comm=None, progress=True, budget=None):
    """Thm 4.2: ``random_adapters.csv`` (particles, one row per L, ratio, seed), ``pde.csv``
    (the PDE, same cases), ``random_adapters.png``; the summary (``None``: stopped by the
    budget)."""
    return run_experiment(EXPERIMENT, p, out, comm=comm, progress=progress, budget=budget)
