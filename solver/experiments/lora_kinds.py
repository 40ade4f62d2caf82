r"""Tied, per-layer random, orthogonal (``P_⊥ ΔV P_⊥``), aligned (``u_2 u_1ᵀ``, the
smallest gap) and worst-case (:func:`~solver.analysis.worst_rank_one_drift`) LoRA of one norm
(Prop 3.3 of arXiv 2402.15415): ``W2`` and cluster drift over time.

Sweep: ``lora_kinds.csv`` (rows per kind, ε, seed and saved time); figure ``lora_kinds.png``.
Command line: ``scripts/exp_lora_kinds.py``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..analysis import spectral_criterion, worst_rank_one_drift
from ..model import Model, ScheduledLoRA, TiedLoRA, VonMisesFisher
from ..particles import sample_particles, simulate_particles
from ._common import memo
from ._experiment import Experiment, Sweep, run_experiment
from ._figures import figure, save_png
from ._params import positive, require
from ._stats import directions, nanmean, w2

__all__ = [
    "PRESETS", "EXPERIMENT", "KINDS", "run_lora_kinds", "lora_kind_case", "kinds_cases",
    "lora_kind_perturbation", "kinds_table", "plot_lora_kinds",
]  # fmt: skip

KINDS = ("tied", "random", "orthogonal", "aligned", "worst")

PRESETS = {
    "tiny": {"V_diag": [1.0, 0.8, 0.3], "n": 12, "kappa": 2.0, "x0_seed": 0, "T": 10.0,
             "dt": 0.1, "save_every": 2.0, "eps": [0.1], "seeds": 1, "layer_length": 1.0,
             "rank": 1, "kinds": list(KINDS)},
    "small": {"V_diag": [1.0, 0.8, 0.3], "n": 32, "kappa": 2.0, "x0_seed": 0, "T": 40.0,
              "dt": 0.05, "save_every": 1.0, "eps": [0.05, 0.1, 0.2], "seeds": 3,
              "layer_length": 1.0, "rank": 1, "kinds": list(KINDS)},
    "paper": {"V_diag": [1.0, 0.8, 0.3], "n": 64, "kappa": 2.0, "x0_seed": 0, "T": 60.0,
              "dt": 0.05, "save_every": 1.0, "eps": [0.02, 0.05, 0.1, 0.2], "seeds": 6,
              "layer_length": 1.0, "rank": 1, "kinds": list(KINDS)},
}  # fmt: skip

KIND_COLUMNS = ["t", "w2", "direction_drift"]


def kinds_check(p: dict) -> None:
    positive(p, "n", "kappa", "T", "dt", "save_every", "eps", "seeds", "layer_length", "rank")
    v = p["V_diag"]
    ok = len(v) >= 2 and bool(np.all(np.diff(v) <= 0)) and v[-1] >= 0 and v[0] > v[1]
    require(p, "V_diag", ok, "non-negative, decreasing, with v[0] > v[1] (a gap)")
    require(p, "kinds", all(k in KINDS for k in p["kinds"]), f"a list of {KINDS}")


def kinds_cases(p: dict) -> list[dict]:
    """Every kind, norm and seed (``aligned`` and ``worst`` are deterministic: seed 0)."""
    return [{"kind": k, "eps": e, "seed": s} for k in p["kinds"] for e in p["eps"]
            for s in range(1 if k in ("aligned", "worst") else p["seeds"])]  # fmt: skip


def _scaled(M: np.ndarray, eps: float) -> np.ndarray:
    return eps * M / np.linalg.norm(M, 2)


def lora_kind_perturbation(p: dict, kind: str, eps: float, seed: int):
    """The perturbation of one kind, operator norm ``ε`` (every layer, for ``random``).

    ``V = diag(V_diag)``, eigenvectors ``u_j = e_j``; LoRA factors ``B, A ∈ R^{d×r}`` with
    i.i.d. N(0, 1) entries from ``default_rng([seed, ...])``:
    tied ``B Aᵀ``; random: a new ``B_ℓ A_ℓᵀ`` on every layer of length ``layer_length``;
    orthogonal ``P_⊥ B Aᵀ P_⊥`` (``P_⊥ = I − u_1u_1ᵀ``); aligned ``u_2 u_1ᵀ`` (the pair with
    the smallest gap ``λ1 − λ2``); worst: the rank-one ``ε u vᵀ`` that turns the dominant
    eigenvector furthest (:func:`~solver.analysis.worst_rank_one_drift`, ``u ⟂ v``); each of
    norm ``ε``.
    """
    d, r = len(p["V_diag"]), p["rank"]
    zero = np.zeros((d, d))

    def draw(*tag):
        g = np.random.default_rng([seed, *tag])
        return g.normal(size=(d, r)) @ g.normal(size=(d, r)).T

    if kind == "tied":
        return TiedLoRA(zero, _scaled(draw(0), eps))
    if kind == "orthogonal":
        P = np.eye(d) - np.outer(np.eye(d)[0], np.eye(d)[0])
        return TiedLoRA(zero, _scaled(P @ draw(0) @ P, eps))
    if kind == "aligned":
        return TiedLoRA(zero, eps * np.outer(np.eye(d)[1], np.eye(d)[0]))
    if kind == "worst":
        V = np.diag(p["V_diag"])
        w = memo(("worst-rank-one", tuple(p["V_diag"]), eps),
                 lambda: worst_rank_one_drift(V, eps))  # fmt: skip
        return TiedLoRA(zero, w.dV)
    h = p["layer_length"]
    cache: dict = {}

    def fn(t):
        ell = int(math.floor(t / h + 1e-12))
        if ell not in cache:
            cache[ell] = _scaled(draw(1, ell), eps)
        return zero, cache[ell]

    return ScheduledLoRA(d, fn, jumps=tuple(h * np.arange(1, math.ceil(p["T"] / h))))


def _kinds_x0(p: dict) -> np.ndarray:
    """vMF cloud around (1, ..., 1)/√d, reflected into the half-space <x, u_1> > 0
    (the assumption of Prop 3.3)."""
    d = len(p["V_diag"])
    x = sample_particles(VonMisesFisher(tuple(np.ones(d) / math.sqrt(d)), p["kappa"]), p["n"], d,
                         seed=p["x0_seed"])  # fmt: skip
    x[:, 0] = np.abs(x[:, 0])
    return x


def _kinds_base_model(p: dict) -> Model:
    V = np.diag(p["V_diag"])
    return Model.from_AV(V, V)


def lora_kind_case(p: dict, case: dict) -> list[dict]:
    """``W2(μ_t, ν_t)`` and ``|u(t) − ũ(t)|`` (cluster directions) at the saved times."""
    x0 = _kinds_x0(p)
    base = _kinds_base_model(p)
    key = ("kinds-base", tuple(p["V_diag"]), p["n"], p["kappa"], p["x0_seed"], p["T"], p["dt"],
           p["save_every"])  # fmt: skip
    rb = memo(key, lambda: simulate_particles(base, x0, p["T"], dt=p["dt"],
                                              save_every=p["save_every"]))  # fmt: skip
    pert = lora_kind_perturbation(p, case["kind"], float(case["eps"]), int(case["seed"]))
    rp = simulate_particles(base.perturbed(pert), x0, p["T"], dt=p["dt"],
                            save_every=p["save_every"])  # fmt: skip
    ub, up = directions(rb.positions), directions(rp.positions)
    return [{"t": float(t), "w2": w2(a, b), "direction_drift": float(np.linalg.norm(u - v))}
            for t, a, b, u, v in zip(rp.times, rb.positions, rp.positions, ub, up,
                                     strict=True)]  # fmt: skip


def kinds_table(p: dict, rows) -> list[dict]:
    """Final W2 and drift per (kind, ε): mean, min, max over seeds, with (means over seeds;
    not for ``random``) the eigenvector prediction ``|u_1 − ũ_1|`` (``ũ_1`` the dominant
    eigenvector of ``V + ΔV``, where a single cluster of the perturbed flow sits) and the
    Prop 3.3 bound ``(2‖b‖ + ‖E‖) / (gap + a)`` (``inf`` when ``gap + a ≤ 0``)."""
    T = max(r["t"] for r in rows)
    table = []
    for k in p["kinds"]:
        for e in p["eps"]:
            fin = [r for r in rows if r["kind"] == k and r["eps"] == e and r["t"] == T]
            w = np.array([r["w2"] for r in fin])
            dr = np.array([r["direction_drift"] for r in fin])
            pred, bound, stable = float("nan"), float("nan"), None
            if k != "random":
                crit = [spectral_criterion(np.diag(p["V_diag"]),
                                           lora_kind_perturbation(p, k, e, int(r["seed"])).dV)
                        for r in fin]  # fmt: skip
                pred = nanmean([c.predicted_drift for c in crit])
                bound = float(np.mean([c.drift_bound for c in crit]))
                stable = all(c.stable for c in crit)
            table.append({"kind": k, "eps": e, "w2_mean": float(w.mean()),
                          "w2_min": float(w.min()), "w2_max": float(w.max()),
                          "drift_mean": float(dr.mean()), "predicted_drift": pred,
                          "prop33_bound": bound, "prop33_stable": stable})  # fmt: skip
    return table


def kinds_summary(p: dict, rows: dict) -> dict:
    """:func:`kinds_table` and its report."""
    table = kinds_table(p, rows["lora_kinds"])
    lam = p["V_diag"]
    report = [
        f"LoRA kinds (V = A = diag{tuple(lam)}, gap = {lam[0] - lam[1]:g}, n = {p['n']}, "
        f"T = {p['T']}): final W2 and cluster drift |u1 - u1~|, same norm ||dV|| = eps",
        "  kind        eps     W2 mean [min, max]         drift   |u1 - u1~|  "
        "Prop 3.3 bound  stable",
    ]
    for r in table:
        st = {None: "-", True: "yes", False: "no"}[r["prop33_stable"]]
        report.append(
            f"  {r['kind']:<11} {r['eps']:<7g} {r['w2_mean']:.4f} [{r['w2_min']:.4f}, "
            f"{r['w2_max']:.4f}]  {r['drift_mean']:.4f}  {r['predicted_drift']:.4f}      "
            f"{r['prop33_bound']:.4f}          {st}"
        )
    return {"table": table, "report": report}


def plot_lora_kinds(rows, p: dict, table, path: Path) -> Path:
    """W2 (top) and cluster drift (bottom) over time per kind; mean and min–max band over
    the seeds. Bottom, per kind: dotted the eigenvector prediction ``|u_1 − ũ_1|``, dashed
    the Prop 3.3 bound ``(2‖b‖ + ‖E‖)/(gap + a)`` (where finite and below 2)."""
    from matplotlib.lines import Line2D

    eps_list = p["eps"]
    fig = figure(4.8 * len(eps_list), 6.4)
    axs = np.array(fig.subplots(2, len(eps_list), sharex=True)).reshape(2, -1)
    for j, e in enumerate(eps_list):
        for k in p["kinds"]:
            sel = [r for r in rows if r["kind"] == k and r["eps"] == e]
            seeds = sorted({r["seed"] for r in sel})
            for i, col in enumerate(("w2", "direction_drift")):
                ax = axs[i, j]
                ys = np.array([[r[col] for r in sel if r["seed"] == s] for s in seeds])
                t = np.array([r["t"] for r in sel if r["seed"] == seeds[0]])
                (line,) = ax.plot(t, ys.mean(0), label=k)
                if len(seeds) > 1:
                    ax.fill_between(t, ys.min(0), ys.max(0), color=line.get_color(), alpha=0.2,
                                    lw=0)  # fmt: skip
                tab = [r for r in table if r["kind"] == k and r["eps"] == e]
                if i == 1 and tab and np.isfinite(tab[0]["predicted_drift"]):
                    ax.axhline(tab[0]["predicted_drift"], color=line.get_color(), ls=":", lw=1)
                if i == 1 and tab and tab[0]["prop33_bound"] < 2:
                    ax.axhline(tab[0]["prop33_bound"], color=line.get_color(), ls="--", lw=0.8)
        axs[0, j].set_title(f"‖ΔV‖ = ε = {e:g}", fontsize=10)
        axs[0, j].set_ylabel("W2(μ_t, ν_t) (chordal)")
        axs[1, j].set_ylabel("cluster drift |u(t) − ũ(t)| (chordal)")
        proxies = [Line2D([], [], color="k", ls=":", lw=1,
                          label="|u₁ − ũ₁|, ũ₁ = top eigenvector of V + ΔV"),
                   Line2D([], [], color="k", ls="--", lw=0.8,
                          label="Prop 3.3 bound (2‖b‖ + ‖E‖)/(gap + a)")]  # fmt: skip
        axs[1, j].legend(handles=proxies, fontsize=7, loc="center right")
        axs[1, j].set_xlabel("t (depth)")
        axs[0, j].legend(fontsize=8)
    fig.suptitle(f"particles only (no mesh): n = {p['n']} tokens (one draw, seed "
                 f"{p['x0_seed']}), T = {p['T']:g}, dt = {p['dt']:g}; lines: mean, bands: "
                 f"min–max over {p['seeds']} adapter seeds; distances chordal on the unit "
                 "sphere", fontsize=10)  # fmt: skip
    return save_png(fig, path)


EXPERIMENT = Experiment(
    name="lora_kinds",
    module=__name__,
    presets=PRESETS,
    check=kinds_check,
    sweeps=(Sweep("lora_kinds.csv", kinds_cases, "lora_kind_case", key=("kind", "eps", "seed"),
                  columns=tuple(KIND_COLUMNS), desc="LoRA kinds"),),
    summarize=kinds_summary,
    plot=lambda p, rows, s, out: plot_lora_kinds(rows["lora_kinds"], p, s["table"],
                                                 out / "lora_kinds.png"),
)  # fmt: skip


def run_lora_kinds(p: dict, out, *, comm=None, progress=True, budget=None):
    """LoRA kinds: ``lora_kinds.csv`` (rows per kind, ε, seed, t), ``lora_kinds.png``; the
    summary (``None``: stopped by the budget)."""
    return run_experiment(EXPERIMENT, p, out, comm=comm, progress=progress, budget=budget)
