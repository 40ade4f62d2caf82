r"""Thm 4.2 of arXiv 2402.15415 by exact linear response: ``c_L`` of ``W2 ≈ c_L η_L/√L`` and its
exponent ``γ`` (``c_L ∝ L^γ``) with the adapters averaged exactly, and the most forgetful
unit adapter of rank ``r``, on particles on S^1 and S^2 (:mod:`solver.analysis._response`).

Base ``Q = K = V = I_d`` (as :mod:`.random_adapters`), ``n`` uniform tokens drawn with seed
``x0_seed + s`` (the same draws as random_adapters' seed ``s``), ``T``, RK4 step ``dt``. For each
draw the per-layer Jacobians ``J_ℓ`` of the scheme at ``max(Ls)`` layers (every ``L`` of
``Ls`` divides it; coarser layers are sums of finer ones) give

* ``c_L = √L ((Σ_a s_a²/d²) (1/n) Σ_ℓ ‖J_ℓ‖_F²)^{1/2}``: the RMS over the adapters
  ``u, v ~ N(0, I/d)`` of the first-order ``W2/η``, exact (no adapter sampling), so the only
  randomness is the draw; ``γ_s`` = least-squares slope of ``log c_L`` on ``log L`` per draw;
* the tied Jacobian ``J = Σ_ℓ J_ℓ``: the most forgetful unit (Frobenius) adapter of each rank
  in ``ranks`` (first-order ``W2`` per unit ``ε``) against a random unit rank-one adapter's RMS
  ``‖J‖_F/(d √n)`` (``E[û_i û_k] = δ_ik/d``).

The PDE's measure (``pde_seeds`` draws): the smooth density that the draw approximates
(:func:`~._common.draw_density`, as :mod:`.random_adapters`' PDE) on its mesh quadrature
(``pde_cells`` cells on S^1, icosphere level ``pde_level`` on S^2; atoms at the centroids with
the cells' masses), whose weighted per-layer Jacobians are the tangent-linear mean-field flow
in Lagrangian form (:func:`~solver.analysis.measure_tangent`): the same exact ``c_L`` and
``γ`` for the PDE (``measure.csv``).

Statistics: intervals only over the draws (the random units): percentile bootstrap of the mean
over seeds (``N_BOOT``, ``LEVEL``); the median beside it; the draws that have not clustered by
``T`` (largest particle speed ``|X[μ_T](x_i)|`` above ``speed_tol``) are named, and the mean
without them given too. An effect is "resolved" when its interval excludes 0.

Sweeps: ``exact.csv`` (one row per d, seed, L), ``forgetful.csv`` (d, seed, rank),
``measure.csv`` (d, seed, L: the PDE's measure); figure
``linear_response.png``. Command line: ``scripts/exp_linear_response.py``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..analysis import layer_jacobians, mesh_atoms, most_forgetful_adapter, random_adapter_c
from ..model import Uniform
from ..particles import sample_particles
from ..velocity import attention_velocity
from ._common import draw_density, identity_model
from ._experiment import Experiment, Sweep, run_experiment
from ._figures import figure, save_png
from ._params import positive, require
from ._stats import bootstrap, nanmedian

__all__ = ["PRESETS", "EXPERIMENT", "run_linear_response", "exact_case", "forgetful_case",
           "measure_case", "response_summary", "plot_linear_response"]  # fmt: skip

PRESETS = {
    "tiny": {"dims": [2], "n": 32, "x0_seed": 0, "T": 6.0, "dt": 0.05, "Ls": [1, 4, 16],
             "seeds": 8, "s": [1.0], "ranks": [1, 2], "speed_tol": 0.01, "pde_seeds": 4,
             "pde_cells": 32, "pde_level": 1},
    "small": {"dims": [2, 3], "n": 32, "x0_seed": 0, "T": 10.0, "dt": 0.05, "Ls": [1, 8, 64],
              "seeds": 24, "s": [1.0], "ranks": [1, 2], "speed_tol": 0.01, "pde_seeds": 8,
              "pde_cells": 64, "pde_level": 1},
    "paper": {"dims": [2, 3], "n": 32, "x0_seed": 0, "T": 10.0, "dt": 0.05,
              "Ls": [1, 4, 16, 64], "seeds": 96, "s": [1.0], "ranks": [1, 2, 3],
              "speed_tol": 0.01, "pde_seeds": 24, "pde_cells": 128, "pde_level": 1},
}  # fmt: skip

EXACT_COLUMNS = ["c", "max_speed_T"]
FORGETFUL_COLUMNS = ["w2", "random_rank1", "sigma1"]
N_BOOT, LEVEL = 2000, 0.9


def response_check(p: dict) -> None:
    positive(p, "n", "T", "dt", "Ls", "seeds", "ranks", "speed_tol", "pde_seeds", "pde_cells",
             "pde_level")  # fmt: skip
    require(p, "dims", all(d >= 2 for d in p["dims"]), "a list of dimensions >= 2")
    Lm = max(p["Ls"])
    require(p, "Ls", all(Lm % L == 0 for L in p["Ls"]), f"depths dividing max(Ls) = {Lm}")


_CACHE: dict = {}


def _response(p: dict, d: int, seed: int) -> dict:
    """Draw ``seed``'s exact response (cached per process, small: per ``L`` of ``Ls`` its
    ``c_L``, the tied Jacobian and the largest speed at ``T``): one computation of the
    per-layer Jacobians at ``max(Ls)`` layers serves both sweeps."""
    Lm = max(p["Ls"])
    key = (d, p["n"], p["x0_seed"] + seed, p["T"], p["dt"], Lm, tuple(p["Ls"]), tuple(p["s"]))
    if key not in _CACHE:
        x0 = sample_particles(Uniform(), p["n"], d, seed=p["x0_seed"] + seed)
        x, J = layer_jacobians(identity_model(d), x0, p["T"], Lm, dt=p["dt"])
        c = {L: random_adapter_c(J.reshape(L, Lm // L, *J.shape[1:]).sum(axis=1), p["s"])
             for L in p["Ls"]}  # fmt: skip
        w = np.full(len(x), 1.0 / len(x))
        v = attention_velocity(x, x, w, np.eye(d), np.eye(d))
        _CACHE[key] = {"c": c, "tied": J.sum(axis=0),
                       "speed": float(np.linalg.norm(v, axis=1).max())}  # fmt: skip
    return _CACHE[key]


def _measure_response(p: dict, d: int, seed: int) -> dict:
    """``c_L`` of the PDE's measure for draw ``seed`` (module doc; cached per process)."""
    from mpi4py import MPI

    from ..mesh import sphere_mesh

    Lm = max(p["Ls"])
    mesh = {"cells": p["pde_cells"]} if d == 2 else {"refinement": p["pde_level"]}
    key = ("measure", d, p["n"], p["x0_seed"] + seed, p["T"], p["dt"], Lm, tuple(p["Ls"]),
           tuple(p["s"]), tuple(mesh.items()))  # fmt: skip
    if key not in _CACHE:
        x0 = sample_particles(Uniform(), p["n"], d, seed=p["x0_seed"] + seed)
        init = draw_density(x0, f"seed {seed}")
        atoms, w = mesh_atoms(sphere_mesh(MPI.COMM_SELF, d - 1, **mesh), init)
        _, J = layer_jacobians(identity_model(d), atoms, p["T"], Lm, dt=p["dt"], weights=w)
        _CACHE[key] = {L: random_adapter_c(J.reshape(L, Lm // L, *J.shape[1:]).sum(axis=1),
                                           p["s"], weights=w) for L in p["Ls"]}  # fmt: skip
    return _CACHE[key]


def measure_cases(p: dict) -> list[dict]:
    return [{"d": d, "seed": s, "L": L} for d in p["dims"] for s in range(p["pde_seeds"])
            for L in p["Ls"]]  # fmt: skip


def measure_case(p: dict, case: dict) -> dict:
    """``c_L`` of the PDE's measure of one draw and depth (module doc)."""
    return {"c": _measure_response(p, int(case["d"]), int(case["seed"]))[case["L"]]}


def exact_cases(p: dict) -> list[dict]:
    return [{"d": d, "seed": s, "L": L} for d in p["dims"] for s in range(p["seeds"])
            for L in p["Ls"]]  # fmt: skip


def forgetful_cases(p: dict) -> list[dict]:
    return [{"d": d, "seed": s, "rank": r} for d in p["dims"] for s in range(p["seeds"])
            for r in p["ranks"] if r <= d]  # fmt: skip


def exact_case(p: dict, case: dict) -> dict:
    """``c_L`` of one draw and depth (module doc) and the draw's largest speed at ``T``."""
    r = _response(p, int(case["d"]), int(case["seed"]))
    return {"c": r["c"][case["L"]], "max_speed_T": r["speed"]}


def forgetful_case(p: dict, case: dict) -> dict:
    """The most forgetful unit adapter of rank ``r`` for a tied ``ΔV`` (first-order ``W2`` per
    unit ``ε``), a random unit rank-one adapter's RMS, and ``σ_1/√n``."""
    d = int(case["d"])
    Jt = _response(p, d, int(case["seed"]))["tied"]
    f = most_forgetful_adapter(Jt, int(case["rank"]))
    n = Jt.shape[1]
    return {"w2": f.w2, "random_rank1": float(np.sqrt(np.sum(Jt**2) / n) / d),
            "sigma1": float(f.sigma[0] / math.sqrt(n))}  # fmt: skip


def _mean_interval(x: np.ndarray) -> tuple[float, float, float]:
    return bootstrap(lambda idx: float(np.mean(x[idx])), len(x), n_boot=N_BOOT, level=LEVEL)


def response_summary(p: dict, rows: dict) -> dict:
    """Per d: per-draw ``γ_s``, their mean with a bootstrap interval over the draws, the median,
    ``c_{Lmax}/c_{Lmin}``, the draws not clustered by ``T`` and the mean without them; per
    (d, rank): the most forgetful adapter over the random one (mean and interval)."""
    out: dict = {"gamma": {}, "forgetful": {}}
    rep = [f"Exact linear response (n = {p['n']}, T = {p['T']}, dt = {p['dt']}, Ls = "
           f"{p['Ls']}, {p['seeds']} draws; adapters averaged exactly; "
           f"{100 * LEVEL:g}% intervals: bootstrap over the draws)"]  # fmt: skip
    Ls = np.array(sorted(p["Ls"]), float)
    for d in p["dims"]:
        sel = [r for r in rows["exact"] if r["d"] == d]
        seeds = sorted({int(r["seed"]) for r in sel})
        tab = {(int(r["seed"]), r["L"]): r for r in sel}
        c = np.array([[tab[(s, L)]["c"] for L in Ls] for s in seeds])
        g = np.array([np.polyfit(np.log(Ls), np.log(ci), 1)[0] for ci in c])
        ratio = c[:, -1] / c[:, 0]
        speed = np.array([tab[(s, Ls[0])]["max_speed_T"] for s in seeds])
        moving = [s for s, v in zip(seeds, speed, strict=True) if v > p["speed_tol"]]
        m, lo, hi = _mean_interval(g)
        f = {"gamma_mean": m, "gamma_lo": lo, "gamma_hi": hi, "gamma_median": nanmedian(g),
             "resolved": bool(lo > 0 or hi < 0), "ratio_mean": float(ratio.mean()),
             "ratio_min": float(ratio.min()), "ratio_max": float(ratio.max()),
             "not_clustered": moving, "c_mean": c.mean(axis=0).tolist(), "Ls": Ls.tolist(),
             "gamma_per_draw": g.tolist()}  # fmt: skip
        keep = np.array([s not in moving for s in seeds])
        if moving and keep.sum() >= 2:
            f["gamma_clustered"] = list(_mean_interval(g[keep]))
        out["gamma"][str(d)] = f
        pde, pde_line = [r for r in rows.get("measure", []) if r["d"] == d], None
        if pde:
            ptab = {(int(r["seed"]), r["L"]): r["c"] for r in pde}
            pseeds = sorted({int(r["seed"]) for r in pde})
            pc = np.array([[ptab[(sd, L)] for L in Ls] for sd in pseeds])
            pg = np.array([np.polyfit(np.log(Ls), np.log(ci), 1)[0] for ci in pc])
            pm, plo, phi = _mean_interval(pg)
            f["pde"] = {"gamma_mean": pm, "gamma_lo": plo, "gamma_hi": phi,
                        "resolved": bool(plo > 0 or phi < 0), "c_mean": pc.mean(axis=0).tolist(),
                        "ratio_mean": float((pc[:, -1] / pc[:, 0]).mean()),
                        "gamma_per_draw": pg.tolist()}  # fmt: skip
            mesh = f"{p['pde_cells']} cells" if d == 2 else f"icosphere level {p['pde_level']}"
            ok = "resolved" if f["pde"]["resolved"] else "not resolved"
            pde_line = (
                f"    the PDE's measure ({mesh}, {len(pseeds)} draws, tangent-linear "
                f"mean-field flow): gamma = {pm:.4f} [{plo:.4f}, {phi:.4f}] ({ok}), "
                f"c_{int(Ls[-1])}/c_{int(Ls[0])} = {f['pde']['ratio_mean']:.4f}"
            )
        rep.append(f"  d = {d}: gamma = {m:.4f} [{lo:.4f}, {hi:.4f}] (median "
                   f"{f['gamma_median']:.4f}; "
                   f"{'resolved' if f['resolved'] else 'not resolved'}), c_{int(Ls[-1])}/"
                   f"c_{int(Ls[0])} = {f['ratio_mean']:.4f} (draws {f['ratio_min']:.4f}.."
                   f"{f['ratio_max']:.4f}); not clustered by T (speed > {p['speed_tol']}): "
                   f"{moving if moving else 'none'}"
                   + (f"; without them gamma = {f['gamma_clustered'][0]:.4f} "
                      f"[{f['gamma_clustered'][1]:.4f}, {f['gamma_clustered'][2]:.4f}]"
                      if "gamma_clustered" in f else ""))  # fmt: skip
        if pde_line:
            rep.append(pde_line)
        for r in p["ranks"]:
            fs = [x for x in rows["forgetful"] if x["d"] == d and x["rank"] == r]
            if not fs:
                continue
            q = np.array([x["w2"] / x["random_rank1"] for x in fs])
            qm, qlo, qhi = _mean_interval(q)
            out["forgetful"][f"{d},{r}"] = {
                "mean": qm,
                "lo": qlo,
                "hi": qhi,
                "w2_mean": float(np.mean([x["w2"] for x in fs])),
            }
            rep.append(
                f"    most forgetful unit adapter of rank {r}: first-order W2 / that of "
                f"a random unit rank-1 adapter (RMS) = {qm:.3f} [{qlo:.3f}, {qhi:.3f}]"
            )
    out["report"] = rep
    return out


def plot_linear_response(p: dict, rows: dict, s: dict, path: Path) -> Path:
    """Left: ``c_L`` against ``L`` per draw (thin) and the mean (thick). Right: the per-draw
    ``γ_s`` (points, draws not clustered by ``T`` in red) with the mean and its interval."""
    fig = figure(11, 4.4)
    ax1, ax2 = fig.subplots(1, 2)
    for k, (d, f) in enumerate(s["gamma"].items()):
        Ls = np.array(f["Ls"])
        sel = [r for r in rows["exact"] if str(r["d"]) == d]
        for seed in sorted({r["seed"] for r in sel}):
            c = [next(r["c"] for r in sel if r["seed"] == seed and r["L"] == L) for L in Ls]
            ax1.plot(Ls, c, "-", lw=0.4, color=f"C{k}", alpha=0.5)
        ax1.plot(Ls, f["c_mean"], "o-", lw=2, color=f"C{k}", label=f"d = {d}: mean over draws")
        if "pde" in f:
            ax1.plot(Ls, f["pde"]["c_mean"], "s--", lw=1.5, color=f"C{k}",
                     label=f"d = {d}: the PDE's measure (mean)")  # fmt: skip
        g = np.array(f["gamma_per_draw"])
        seeds = sorted({int(r["seed"]) for r in sel})
        col = ["tab:red" if sd in f["not_clustered"] else f"C{k}" for sd in seeds]
        ax2.scatter(np.full(len(g), k) + np.linspace(-0.2, 0.2, len(g)), g, s=8, c=col)
        ax2.errorbar([k + 0.35], [f["gamma_mean"]], yerr=[[f["gamma_mean"] - f["gamma_lo"]],
                     [f["gamma_hi"] - f["gamma_mean"]]], fmt="ks", capsize=4)  # fmt: skip
    ax1.set(
        xscale="log",
        yscale="log",
        xlabel="depth L (layers)",
        ylabel="exact c_L (RMS over adapters)",
    )
    ax1.legend(fontsize=7)
    ax2.axhline(0, color="k", lw=0.8, ls=":")
    ax2.set_xticks(range(len(s["gamma"])), [f"d = {d}" for d in s["gamma"]])
    ax2.set_ylabel("γ per draw (c_L ∝ L^γ)")
    ax2.set_title(f"mean and {100 * LEVEL:g}% bootstrap interval over draws; red: not "
                  "clustered by T", fontsize=8)  # fmt: skip
    fig.suptitle(
        f"Thm 4.2 by exact linear response: n = {p['n']} uniform tokens, T = "
        f"{p['T']:g}, RK4 dt = {p['dt']:g}, {p['seeds']} draws",
        fontsize=9,
    )
    return save_png(fig, path)


EXPERIMENT = Experiment(
    name="linear_response",
    module=__name__,
    presets=PRESETS,
    check=response_check,
    sweeps=(Sweep("exact.csv", exact_cases, "exact_case", key=("d", "seed", "L"),
                  columns=tuple(EXACT_COLUMNS), desc="exact c_L"),
            Sweep("forgetful.csv", forgetful_cases, "forgetful_case", key=("d", "seed", "rank"),
                  columns=tuple(FORGETFUL_COLUMNS), desc="most forgetful adapters"),
            Sweep("measure.csv", measure_cases, "measure_case", key=("d", "seed", "L"),
                  columns=("c",), desc="c_L of the PDE's measure")),
    summarize=response_summary,
    plot=lambda p, rows, s, out: plot_linear_response(p, rows, s, out / "linear_response.png"),
)  # fmt: skip


def run_linear_response(p: dict, out, *, comm=None, progress=True, budget=None):
    """``exact.csv``, ``forgetful.csv``, ``measure.csv``, ``linear_response.png``; the summary
    (``None``:
    stopped by the budget)."""
    return run_experiment(EXPERIMENT, p, out, comm=comm, progress=progress, budget=budget)
