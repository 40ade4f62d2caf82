r"""Fig 2 of arXiv 2402.15415: d = 2, n = 20, ``Q = K = V = I`` vs ``Ṽ = I − ε e_2e_2ᵀ``;
particles and the PDE (narrow von Mises-Fisher bumps at the particles) side by side.

Sweeps: ``particles.csv`` (trajectories per flow), then ``comparison.csv`` (``W2`` over
time, one PDE run of both flows in ``pde/``); figure ``fig2.png``.
Command line: ``scripts/exp_fig2.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io import load_result
from ..model import Mixture, Model, Uniform, VonMisesFisher
from ..particles import sample_particles, simulate_particles
from ._common import TRAJECTORY_COLUMNS, e2_perturbation, identity_model, trajectory_rows
from ._experiment import Experiment, Run, Sweep, run_experiment
from ._figures import figure, save_png, theta_lines, trajectories
from ._params import positive, require
from ._stats import rows_where, w2
from ._sweep import Budget, SweepError, as_columns

__all__ = ["PRESETS", "EXPERIMENT", "run_fig2", "fig2_pde", "plot_fig2"]

PRESETS = {
    "tiny": {"n": 20, "seed": 0, "eps": 0.01, "T": 12.0, "dt": 0.1, "save_every": 2.0,
             "cells": 200, "kappa": 150.0, "cfl": 0.9},
    "small": {"n": 20, "seed": 0, "eps": 0.01, "T": 60.0, "dt": 0.1, "save_every": 0.5,
              "cells": 200, "kappa": 150.0, "cfl": 0.9},
    "paper": {"n": 20, "seed": 0, "eps": 0.01, "T": 200.0, "dt": 0.05, "save_every": 1.0,
              "cells": 300, "kappa": 250.0, "cfl": 0.9},
}  # fmt: skip

FIG2_PARTICLE_COLUMNS = TRAJECTORY_COLUMNS
FIG2_COMPARISON_COLUMNS = [
    "t", "w2_drift_particles", "w2_drift_pde", "w2_pde_vs_particles_base",
    "w2_pde_vs_particles_perturbed",
]  # fmt: skip
FLOWS = ("base", "perturbed")


def fig2_check(p: dict) -> None:
    positive(p, "n", "eps", "T", "dt", "save_every", "kappa", "cells", "cfl")
    require(p, "cfl", p["cfl"] <= 1, "<= 1")


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
        ax.set_ylabel("θ")
        ax = axs[1, j]
        d = np.where(dens[:, order] > 0, dens[:, order], np.nan)
        mesh = ax.pcolormesh(pde["times"], theta_c[order], d.T, shading="nearest",
                             norm=LogNorm(vmin=1e-3, vmax=vmax), cmap="viridis")  # fmt: skip
        for i in range(theta.shape[1]):
            ax.plot(times, theta[:, i], ".", color="w", ms=1.0)
        ax.set_title(f"PDE ({p['cells']} cells), particles as dots", fontsize=10)
        ax.set_ylabel("θ")
        ax.set_xlabel("t (depth)")
        for ax in axs[:2, j]:
            ax.set_ylim(-np.pi, np.pi)
    fig.colorbar(mesh, ax=axs[1, :], label="density", shrink=0.9)
    c = as_columns(crows)
    ax = axs[2, 0]
    ax.plot(c["t"], c["w2_pde_vs_particles_base"], label="base")
    ax.plot(c["t"], c["w2_pde_vs_particles_perturbed"], "--", label="perturbed")
    ax.set_title("W2(PDE, particles)", fontsize=10)
    ax.set_xlabel("t (depth)")
    ax.legend(fontsize=8)
    ax = axs[2, 1]
    ax.plot(c["t"], c["w2_drift_particles"], label="particles")
    ax.plot(c["t"], c["w2_drift_pde"], "--", label="PDE")
    ax.axhline(2 * np.pi / p["cells"], color="0.5", ls=":", lw=1, label="one PDE cell")
    ax.set_title("forgetting: W2(μ_t, ν_t)", fontsize=10)
    ax.set_xlabel("t (depth)")
    ax.legend(fontsize=8)
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
    ),
    summarize=fig2_summary,
    plot=lambda p, rows, s, out: plot_fig2(rows["particles"], rows["comparison"],
                                           load_result(out / "pde"), p, out / "fig2.png"),
    needs_comm=True,
)  # fmt: skip


def run_fig2(p: dict, out, *, comm=None, progress=True, budget: Budget | None = None):
    """Fig 2: ``particles.csv`` (trajectories), ``comparison.csv`` (W2 over time),
    ``pde/result.npz`` (densities), ``fig2.png``; the summary (``None``: stopped by budget)."""
    return run_experiment(EXPERIMENT, p, out, comm=comm, progress=progress, budget=budget)
