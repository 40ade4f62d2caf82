r"""Fig 2 of arXiv 2402.15415: ``Q = K = V = I`` vs ``Ṽ = I − ε e_2e_2ᵀ``, particles and the
PDE side by side, on S^1 (the paper's d = 2, n = 20) and on S^2 (d = 3).

S^1: the PDE starts from narrow von Mises-Fisher bumps at the 20 particles. Sweeps
``particles.csv`` (trajectories per flow), then ``comparison.csv`` (``W2`` over time, one PDE
run of both flows in ``pde/``); figure ``fig2.png``.

S^2: the PDE starts from the von Mises-Fisher cloud ``vMF(s2_centre, s2_kappa)`` on an
icosphere (``s2_refinement``: ``20·4^L`` cells), and the particles are ``s2_seeds`` i.i.d.
draws of ``s2_n`` tokens from the same density (the empirical measures converge to the
PDE's as ``n → ∞``, with a ``1/√n`` spread over draws). Two measures of the forgetting:
``W2(μ_t, ν_t)`` and the *drift*, the angle between the mean directions
``Σ w_i x_i / |Σ w_i x_i|`` of ``μ_t`` and ``ν_t`` (particles: equal weights; PDE: cell masses
at the centroids), beside the point-mass law ``∠(p_0, e^{tṼ}p_0)``, ``p_0`` = the centre.
Sweeps ``particles_s2.csv`` (per draw and saved time), then ``comparison_s2.csv`` (one PDE
run of both flows in ``pde_s2/``, with the particles' median and min–max); figure
``fig2_s2.png``. Command line: ``scripts/exp_fig2.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..analysis import cluster_direction
from ..io import load_result
from ..model import Mixture, Model, Uniform, VonMisesFisher
from ..particles import sample_particles, simulate_particles
from ._common import TRAJECTORY_COLUMNS, e2_perturbation, identity_model, trajectory_rows
from ._experiment import Experiment, Run, Sweep, run_experiment
from ._figures import figure, save_png, theta_lines, trajectories
from ._params import positive, require
from ._stats import angle, rows_where, w2
from ._sweep import Budget, SweepError, as_columns

__all__ = [
    "PRESETS",
    "EXPERIMENT",
    "run_fig2",
    "fig2_pde",
    "fig2_s2_pde",
    "plot_fig2",
    "plot_fig2_s2",
    "s2_mesh_size",
]

_S2 = {"s2_kappa": 20.0, "s2_centre": [1.0, 1.0, 1.0]}
PRESETS = {
    "tiny": {"n": 20, "seed": 0, "eps": 0.01, "T": 12.0, "dt": 0.1, "save_every": 2.0,
             "cells": 200, "kappa": 150.0, "cfl": 0.9,
             "s2_refinement": 3, "s2_T": 4.0, "s2_save_every": 1.0, "s2_n": 64, "s2_seeds": 4,
             **_S2},
    "small": {"n": 20, "seed": 0, "eps": 0.01, "T": 60.0, "dt": 0.1, "save_every": 0.5,
              "cells": 200, "kappa": 150.0, "cfl": 0.9,
              "s2_refinement": 3, "s2_T": 20.0, "s2_save_every": 1.0, "s2_n": 256,
              "s2_seeds": 5, **_S2},
    "paper": {"n": 20, "seed": 0, "eps": 0.01, "T": 200.0, "dt": 0.05, "save_every": 1.0,
              "cells": 300, "kappa": 250.0, "cfl": 0.9,
              "s2_refinement": 4, "s2_T": 60.0, "s2_save_every": 2.0, "s2_n": 1000,
              "s2_seeds": 8, **_S2},
}  # fmt: skip

FIG2_PARTICLE_COLUMNS = TRAJECTORY_COLUMNS
FIG2_COMPARISON_COLUMNS = [
    "t", "w2_drift_particles", "w2_drift_pde", "w2_pde_vs_particles_base",
    "w2_pde_vs_particles_perturbed",
]  # fmt: skip
FIG2_S2_PARTICLE_COLUMNS = ["t", "w2", "drift"]
FIG2_S2_COMPARISON_COLUMNS = [
    "t", "w2_pde", "drift_pde", "drift_pointmass", "w2_particles_median", "w2_particles_min",
    "w2_particles_max", "drift_particles_median", "drift_particles_min", "drift_particles_max",
    "drift_particles_std",
]  # fmt: skip
FLOWS = ("base", "perturbed")


def fig2_check(p: dict) -> None:
    positive(p, "n", "eps", "T", "dt", "save_every", "kappa", "cells", "cfl", "s2_refinement",
             "s2_T", "s2_save_every", "s2_n", "s2_seeds", "s2_kappa")  # fmt: skip
    require(p, "cfl", p["cfl"] <= 1, "<= 1")
    c = np.asarray(p["s2_centre"], dtype=float)
    require(
        p,
        "s2_centre",
        len(c) == 3 and abs(c[1]) > 0 and np.linalg.norm(c[::2]) > 0,
        "3 numbers off the e_2 axis and off the plane e_2^⊥ (else nothing drifts)",
    )


def fig2_models(p: dict) -> tuple[Model, Model]:
    base = identity_model(2)
    return base, base.perturbed(e2_perturbation(2, p["eps"]))


def fig2_x0(p: dict) -> np.ndarray:
    return sample_particles(Uniform(), p["n"], 2, seed=p["seed"])


def fig2_particles(p: dict, flow: str):
    base, pert = fig2_models(p)
    model = base if flow == "base" else pert
    return simulate_particles(model, fig2_x0(p), p["T"], dt=p["dt"], save_every=p["save_every"])


def fig2_particle_case(p: dict, case: dict) -> list[dict]:
    """Trajectory rows of one flow (``case["flow"]``: ``base`` or ``perturbed``)."""
    return trajectory_rows(fig2_particles(p, case["flow"]))


def fig2_positions(p: dict, prows) -> tuple[np.ndarray, dict]:
    """``(times, {flow: positions (nt, n, 2)})`` from the rows of ``particles.csv``."""
    positions = {}
    for f in FLOWS:
        c = as_columns(rows_where(prows, flow=f))
        nt = len(np.unique(c["t"]))
        positions[f] = np.stack([c["x"], c["y"]], axis=1).reshape(nt, p["n"], 2)
    return np.unique(as_columns(rows_where(prows, flow="base"))["t"]), positions


def fig2_pde(p: dict, comm, output: Path | None, progress: bool = False):
    """The PDE on S^1 from narrow vMF bumps (κ) at the particles' initial positions; both
    flows in one :func:`solver.evolve` (resumable from ``output/checkpoint.npz``)."""
    from ..mesh import sphere_mesh
    from ..run import evolve

    x0 = fig2_x0(p)
    init = Mixture(tuple(VonMisesFisher(tuple(x), p["kappa"]) for x in x0), tuple([1.0] * len(x0)))
    sm = sphere_mesh(comm, 1, cells=p["cells"])
    base, pert = fig2_models(p)
    return evolve(sm, base, init, p["T"], perturbed=pert, cfl=p["cfl"], save_every=p["save_every"],
                  output=output, vtx=False, resume=True, progress=progress)  # fmt: skip


def fig2_comparison_rows(res, particles: dict) -> list[dict]:
    """``W2`` over time: base vs perturbed (particles and PDE), PDE vs particles per flow."""
    xc = res.centroids / np.linalg.norm(res.centroids, axis=1, keepdims=True)
    rows = []
    for k, t in enumerate(res.times):
        xb = particles["base"][k]
        xp = particles["perturbed"][k]
        wb = np.clip(res.density[k] * res.areas, 0, None)
        wp = np.clip(res.density_perturbed[k] * res.areas, 0, None)
        rows.append({
            "t": float(t),
            "w2_drift_particles": w2(xb, xp),
            "w2_drift_pde": w2(xc, xc, wb, wp),
            "w2_pde_vs_particles_base": w2(xc, xb, wb, None),
            "w2_pde_vs_particles_perturbed": w2(xc, xp, wp, None),
        })  # fmt: skip
    return rows


def fig2_pde_case(p: dict, case: dict, run: Run) -> list[dict] | None:
    """The PDE run (all ranks, ``run.out / "pde"``) compared with the particles (rank 0)."""
    times, positions = fig2_positions(p, run.rows["particles"])
    res = fig2_pde(p, run.comm, run.out / "pde", progress=run.progress)
    if run.comm.rank != 0:
        return None
    if not np.allclose(res.times, times):
        raise SweepError("PDE and particle save times differ")
    return fig2_comparison_rows(res, positions)


def s2_mesh_size(refinement: int) -> float:
    """``h = √(4π / N)``, ``N = 20·4^L`` cells of the level-``L`` icosphere: the side of a
    square of the mean cell area (radians; about 0.66 of an equilateral cell's edge)."""
    return float(np.sqrt(4 * np.pi / (20 * 4**refinement)))


def fig2_s2_models(p: dict) -> tuple[Model, Model]:
    base = identity_model(3)
    return base, base.perturbed(e2_perturbation(3, p["eps"]))


def fig2_s2_initial(p: dict) -> VonMisesFisher:
    return VonMisesFisher(tuple(p["s2_centre"]), p["s2_kappa"])


def fig2_s2_particle_case(p: dict, case: dict) -> list[dict]:
    """One draw (seed ``p["seed"] + case["seed"]``) of ``s2_n`` tokens from the PDE's initial
    density, both flows: ``W2(μ_t, ν_t)`` and the drift angle at every saved time."""
    x0 = sample_particles(fig2_s2_initial(p), p["s2_n"], 3, seed=p["seed"] + case["seed"])
    runs = [simulate_particles(m, x0, p["s2_T"], dt=p["dt"], save_every=p["s2_save_every"])
            for m in fig2_s2_models(p)]  # fmt: skip
    return [{"t": float(t), "w2": w2(xb, xp),
             "drift": float(angle(cluster_direction(xb), cluster_direction(xp)))}
            for t, xb, xp in zip(runs[0].times, runs[0].positions, runs[1].positions,
                                 strict=True)]  # fmt: skip


def fig2_s2_pde(p: dict, comm, output: Path | None, progress: bool = False):
    """The PDE on the level-``s2_refinement`` icosphere from ``vMF(s2_centre, s2_kappa)``;
    both flows in one :func:`solver.evolve` (DG0, adaptive steps; resumable from
    ``output/checkpoint.npz``)."""
    from ..mesh import sphere_mesh
    from ..run import evolve

    sm = sphere_mesh(comm, 2, refinement=p["s2_refinement"])
    base, pert = fig2_s2_models(p)
    return evolve(sm, base, fig2_s2_initial(p), p["s2_T"], perturbed=pert, cfl=p["cfl"],
                  save_every=p["s2_save_every"], output=output, vtx=False, resume=True,
                  progress=progress)  # fmt: skip


def pointmass_drift(p: dict, t) -> np.ndarray:
    """Angle between ``p_0`` and ``e^{tṼ}p_0 / |·|`` (``Ṽ = I − ε e_2e_2ᵀ``: the e_2 component
    shrinks by ``e^{−εt}`` relative to the others), ``p_0`` = ``s2_centre``, radians."""
    p0 = np.asarray(p["s2_centre"], dtype=float)
    p0 = p0 / np.linalg.norm(p0)
    t = np.atleast_1d(np.asarray(t, dtype=float))
    pt = p0[None, :] * np.ones((len(t), 1))
    pt[:, 1] *= np.exp(-p["eps"] * t)
    return angle(p0, pt / np.linalg.norm(pt, axis=1, keepdims=True))


def fig2_s2_pde_case(p: dict, case: dict, run: Run) -> list[dict] | None:
    """The S^2 PDE run (all ranks, ``run.out / "pde_s2"``) beside the particle draws (rank 0)."""
    res = fig2_s2_pde(p, run.comm, run.out / "pde_s2", progress=run.progress)
    if run.comm.rank != 0:
        return None
    c = as_columns(run.rows["particles_s2"])
    order = np.lexsort((c["t"], c["seed"]))
    c = {k: v[order] for k, v in c.items()}
    seeds = np.unique(c["seed"])
    nt = len(res.times)
    if len(c["t"]) != len(seeds) * nt or not np.allclose(c["t"][:nt], res.times):
        raise SweepError("S^2 PDE and particle save times differ")
    wp, dp = (c[k].reshape(len(seeds), nt) for k in ("w2", "drift"))
    law = pointmass_drift(p, res.times)
    rows = []
    for k, t in enumerate(res.times):
        drift = angle(
            cluster_direction(res.centroids, res.density[k] * res.areas),
            cluster_direction(res.centroids, res.density_perturbed[k] * res.areas),
        )
        rows.append({
            "t": float(t), "w2_pde": float(res.w2[k]), "drift_pde": float(drift),
            "drift_pointmass": float(law[k]),
            "w2_particles_median": float(np.median(wp[:, k])),
            "w2_particles_min": float(wp[:, k].min()), "w2_particles_max": float(wp[:, k].max()),
            "drift_particles_median": float(np.median(dp[:, k])),
            "drift_particles_min": float(dp[:, k].min()),
            "drift_particles_max": float(dp[:, k].max()),
            "drift_particles_std": float(dp[:, k].std(ddof=1)) if len(seeds) > 1 else 0.0,
        })  # fmt: skip
    return rows


def fig2_summary(p: dict, rows: dict) -> dict:
    """Final drifts (particles and PDE) and the largest PDE-vs-particles ``W2``."""
    c = as_columns(rows["comparison"])
    summary = {
        "eps": p["eps"],
        "final_w2_drift_particles": c["w2_drift_particles"][-1],
        "final_w2_drift_pde": c["w2_drift_pde"][-1],
        "max_w2_pde_vs_particles": max(c["w2_pde_vs_particles_base"].max(),
                                       c["w2_pde_vs_particles_perturbed"].max()),
    }  # fmt: skip
    summary["report"] = [
        f"Fig 2 (eps = {p['eps']}, n = {p['n']}, T = {p['T']}): final W2(mu_T, nu_T) = "
        f"{summary['final_w2_drift_particles']:.4g} (particles), "
        f"{summary['final_w2_drift_pde']:.4g} (PDE, {p['cells']} cells)",
        f"  PDE vs particles: max W2 = {summary['max_w2_pde_vs_particles']:.3g} rad",
    ]
    c2 = {k: v[-1] for k, v in as_columns(rows["comparison_s2"]).items()}
    s2 = {
        "refinement": p["s2_refinement"], "cells": 20 * 4 ** p["s2_refinement"],
        "h": s2_mesh_size(p["s2_refinement"]), "n": p["s2_n"], "seeds": p["s2_seeds"],
        "T": p["s2_T"],
        **{f"final_{k}": float(c2[k]) for k in FIG2_S2_COMPARISON_COLUMNS if k != "t"},
    }  # fmt: skip
    s2["drift_pde_vs_particles"] = s2["final_drift_pde"] / s2["final_drift_particles_median"] - 1
    summary["s2"] = s2
    summary["report"] += [
        f"Fig 2 on S^2 (level {p['s2_refinement']}, {s2['cells']} cells, h = {s2['h']:.3f}; "
        f"{p['s2_seeds']} draws of n = {p['s2_n']}; T = {p['s2_T']}): "
        f"drift {s2['final_drift_pde']:.4g} rad (PDE) vs {s2['final_drift_particles_median']:.4g}"
        f" (particles, median; range {s2['final_drift_particles_min']:.4g}.."
        f"{s2['final_drift_particles_max']:.4g}), point mass {s2['final_drift_pointmass']:.4g}",
        f"  W2(mu_T, nu_T) = {s2['final_w2_pde']:.4g} rad (PDE) vs "
        f"{s2['final_w2_particles_median']:.4g} (particles, median; range "
        f"{s2['final_w2_particles_min']:.4g}..{s2['final_w2_particles_max']:.4g})",
    ]
    return summary


def plot_fig2(prows, crows, pde: dict, p: dict, path: Path) -> Path:
    """Particles (top), PDE density with the particles on top (middle), W2 (bottom)."""
    from matplotlib.colors import LogNorm

    fig = figure(10, 9.5)
    axs = fig.subplots(3, 2)
    titles = {"base": "base: Q = K = V = I", "perturbed": f"Ṽ = I − ε e₂e₂ᵀ, ε = {p['eps']:g}"}
    theta_c = np.arctan2(pde["centroids"][:, 1], pde["centroids"][:, 0])
    order = np.argsort(theta_c)
    vmax = max(pde["density"].max(), pde["density_perturbed"].max())
    mesh = None
    for j, (flow, dens) in enumerate((("base", pde["density"]),
                                      ("perturbed", pde["density_perturbed"]))):  # fmt: skip
        times, theta = trajectories(rows_where(prows, flow=flow))
        ax = axs[0, j]
        for i in range(theta.shape[1]):
            ax.plot(*theta_lines(times, theta[:, i]), lw=0.8)
        ax.set_title(f"particles, {titles[flow]}", fontsize=10)
        ax.set_ylabel("θ (rad)")
        ax = axs[1, j]
        d = np.where(dens[:, order] > 0, dens[:, order], np.nan)
        mesh = ax.pcolormesh(pde["times"], theta_c[order], d.T, shading="nearest",
                             norm=LogNorm(vmin=1e-3, vmax=vmax), cmap="viridis")  # fmt: skip
        for i in range(theta.shape[1]):
            ax.plot(times, theta[:, i], ".", color="w", ms=1.0)
        ax.set_title(f"PDE ({p['cells']} cells), particles as dots", fontsize=10)
        ax.set_ylabel("θ (rad)")
        ax.set_xlabel("t (depth)")
        for ax in axs[:2, j]:
            ax.set_ylim(-np.pi, np.pi)
    fig.colorbar(mesh, ax=axs[1, :], label="density", shrink=0.9)
    c = as_columns(crows)
    ax = axs[2, 0]
    ax.plot(c["t"], c["w2_pde_vs_particles_base"], label="base")
    ax.plot(c["t"], c["w2_pde_vs_particles_perturbed"], "--", label="perturbed")
    ax.set_title("W2(PDE, particles)", fontsize=10)
    ax.set_ylabel("W2 (rad)")
    ax.set_xlabel("t (depth)")
    ax.legend(fontsize=8)
    ax = axs[2, 1]
    ax.plot(c["t"], c["w2_drift_particles"], label="particles")
    ax.plot(c["t"], c["w2_drift_pde"], "--", label="PDE")
    ax.axhline(2 * np.pi / p["cells"], color="0.5", ls=":", lw=1, label="one PDE cell")
    ax.set_title("forgetting: W2(μ_t, ν_t)", fontsize=10)
    ax.set_ylabel("W2 (rad)")
    ax.set_xlabel("t (depth)")
    ax.legend(fontsize=8)
    fig.suptitle(f"Fig 2 on S¹: n = {p['n']} tokens (one draw, seed {p['seed']}), PDE on "
                 f"{p['cells']} cells (h = {2 * np.pi / p['cells']:.3f} rad), vMF bumps "
                 f"κ = {p['kappa']:g}, T = {p['T']:g}", fontsize=10)  # fmt: skip
    return save_png(fig, path)


def plot_fig2_s2(crows, p: dict, path: Path) -> Path:
    """S^2: drift angle (left) and ``W2(μ_t, ν_t)`` (right) over depth; PDE, particles
    (median and min–max band over the draws) and the point-mass law."""
    c = as_columns(crows)
    fig = figure(10, 4.2)
    axs = fig.subplots(1, 2)
    for ax, q, what in ((axs[0], "drift", "drift ∠(mean direction of μ_t, of ν_t)"),
                        (axs[1], "w2", "forgetting: W2(μ_t, ν_t)")):  # fmt: skip
        ax.fill_between(
            c["t"],
            c[f"{q}_particles_min"],
            c[f"{q}_particles_max"],
            color="C0",
            alpha=0.25,
            lw=0,
            label=f"particles: min–max of {p['s2_seeds']} draws",
        )
        ax.plot(c["t"], c[f"{q}_particles_median"], color="C0", label="particles: median")
        ax.plot(c["t"], c[f"{q}_pde"], "--", color="C1", label="PDE")
        ax.plot(c["t"], c["drift_pointmass"], ":", color="k", lw=1, label="point-mass law")
        ax.set_title(what, fontsize=10)
        ax.set_xlabel("t (depth)")
        ax.set_ylabel("radians")
        ax.legend(fontsize=8)
    h = s2_mesh_size(p["s2_refinement"])
    fig.suptitle(f"Fig 2 on S², ε = {p['eps']:g}: PDE on icosphere level {p['s2_refinement']} "
                 f"({20 * 4 ** p['s2_refinement']} cells, h = {h:.3f} rad) from vMF(κ = "
                 f"{p['s2_kappa']:g}); particles: {p['s2_seeds']} draws of n = {p['s2_n']}",
                 fontsize=10)  # fmt: skip
    return save_png(fig, path)


EXPERIMENT = Experiment(
    name="fig2",
    module=__name__,
    presets=PRESETS,
    check=fig2_check,
    sweeps=(
        Sweep("particles.csv", lambda p: [{"flow": f} for f in FLOWS], "fig2_particle_case",
              key=("flow",), columns=tuple(FIG2_PARTICLE_COLUMNS), desc="fig2 particles"),
        Sweep("comparison.csv", lambda p: [{"solver": "pde"}], "fig2_pde_case",
              key=("solver",), columns=tuple(FIG2_COMPARISON_COLUMNS), progress=False,
              mode="together", needs_run=True),
        Sweep("particles_s2.csv", lambda p: [{"seed": k} for k in range(p["s2_seeds"])],
              "fig2_s2_particle_case", key=("seed",), columns=tuple(FIG2_S2_PARTICLE_COLUMNS),
              desc="fig2 S^2 particles"),
        Sweep("comparison_s2.csv", lambda p: [{"solver": "pde"}], "fig2_s2_pde_case",
              key=("solver",), columns=tuple(FIG2_S2_COMPARISON_COLUMNS), progress=False,
              mode="together", needs_run=True),
    ),
    summarize=fig2_summary,
    plot=lambda p, rows, s, out: (
        plot_fig2(rows["particles"], rows["comparison"], load_result(out / "pde"), p,
                  out / "fig2.png"),
        plot_fig2_s2(rows["comparison_s2"], p, out / "fig2_s2.png"),
    ),
    needs_comm=True,
)  # fmt: skip


def run_fig2(p: dict, out, *, comm=None, progress=True, budget: Budget | None = None):
    """Fig 2: ``particles.csv`` (trajectories), ``comparison.csv`` (W2 over time),
    ``pde/result.npz`` (densities), ``fig2.png``; on S^2 ``particles_s2.csv``,
    ``comparison_s2.csv``, ``pde_s2/result.npz``, ``fig2_s2.png``; the summary (``None``:
    stopped by budget)."""
    return run_experiment(EXPERIMENT, p, out, comm=comm, progress=progress, budget=budget)
