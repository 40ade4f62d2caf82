# ---
# jupyter:
#   jupytext:
#     formats: py:percent,ipynb
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Fig 2: particles and PDE, V = I against Ṽ = I − ε e₂e₂ᵀ
#
# **Claim (arXiv 2402.15415, Fig 2).** On the circle S¹ (d = 2) with n = 20 tokens and
# Q = K = V = I₂, the tokens collapse into one cluster. With the perturbed value matrix
# Ṽ = I₂ − ε e₂e₂ᵀ (ε = 0.01) they first cluster in the same way, and only then does the
# cluster slowly turn towards e₁, the top eigenvector of Ṽ: forgetting appears at depths of
# order 1/ε. A point mass at angle θ obeys θ̇ = −ε sin θ cos θ, i.e. ln|tan θ| falls at rate ε.
#
# **What this measures.** Both flows for the particle system (RK4) and for the PDE on S¹
# (DG0 upwind, started from narrow von Mises–Fisher bumps at the particles), and over depth:
# W2(μ_t, ν_t) between the base and the perturbed flow (particles and PDE) and W2 between the
# PDE and the particles. The DG0 scheme's donor-cell flux moves a cluster narrower than a cell
# as a point mass does, so the PDE's drift follows the particles' (docs/experiments.md).
#
# The notebook is `scripts/exp_fig2.py` from Python. With `SOLVER_NOTEBOOK_PRESET=small`
# (the tests) it uses the script's `tiny` preset (T = 12: just clustered, drift begun),
# otherwise its `small` preset (T = 60, about a minute).

# %%
import math
import os
from pathlib import Path

import numpy as np

from solver.analysis import cluster_direction
from solver.experiments import as_columns, load_presets, read_rows, resolve_params, run_fig2
from solver.viz import show

SMALL = os.environ.get("SOLVER_NOTEBOOK_PRESET", "") == "small"
PRESET = "tiny" if SMALL else "small"


# %% [markdown]
# ## Parameters
#
# The script's preset; put changes in `OVERRIDES` (e.g. `{"eps": 0.05}` for a drift that the
# PDE can follow on 200 cells). The output folder resumes: a rerun with the same parameters
# reuses the finished cases, other parameters need another folder.

# %%
OVERRIDES = {}
p = resolve_params(load_presets("fig2")[PRESET], OVERRIDES)
OUT = Path(f"fig2_{PRESET}")
for k, v in p.items():
    print(f"{k:>10} = {v}")

# %% [markdown]
# ## Run
#
# `run_fig2` simulates the particles (`particles.csv`), evolves both PDE flows (`pde/`),
# compares them (`comparison.csv`), draws `fig2.png` and returns the summary.

# %%
summary = run_fig2(p, OUT, progress=not SMALL)
print("\n".join(summary["report"]))

# %% [markdown]
# Top: the particles' angles; middle: the PDE densities with the particles as white dots;
# bottom: W2 between PDE and particles, and the forgetting W2(μ_t, ν_t).

# %%
show(OUT / "fig2.png")

# %% [markdown]
# ## The numbers
#
# The forgetting W2(μ_t, ν_t) at a few depths, for the particles and for the PDE; one PDE
# cell is 2π / cells wide.

# %%
c = as_columns(read_rows(OUT / "comparison.csv"))
print("     t   W2 drift particles   W2 drift PDE   W2(PDE, particles) base / perturbed")
for k in np.unique(np.linspace(0, len(c["t"]) - 1, 6).round().astype(int)):
    base, pert = c["w2_pde_vs_particles_base"][k], c["w2_pde_vs_particles_perturbed"][k]
    print(
        f"{c['t'][k]:6.1f}   {c['w2_drift_particles'][k]:18.4f}   {c['w2_drift_pde'][k]:12.4f}"
        f"   {base:.4f} / {pert:.4f}"
    )
print(f"one PDE cell: {2 * math.pi / p['cells']:.4f} rad")
# look for: once the tokens have clustered, the PDE drift grows with the particles' drift
# (the donor-cell flux moves a collapsed cluster as a point mass, far below one cell per unit
# of depth; the vertex-velocity flux kept it pinned to its cell).

# %% [markdown]
# ## The point-mass rate
#
# Once the perturbed tokens form one cluster at angle θ, a point mass predicts
# d ln|tan θ| / dt = −ε. Fit that slope over the second half of the run (the cluster radius
# says whether the tokens have clustered: it should be ≪ 0.1 rad).

# %%
rows = read_rows(OUT / "particles.csv")
cp = as_columns([r for r in rows if r["flow"] == "perturbed"])
times = np.unique(cp["t"])
xy = np.stack([cp["x"], cp["y"]], axis=1).reshape(len(times), p["n"], 2)
u = np.array([cluster_direction(x) for x in xy])
theta = np.arctan2(u[:, 1], u[:, 0])
radius = np.arccos(np.clip(np.einsum("tid,td->ti", xy, u), -1, 1)).max(axis=1)
late = times >= times[-1] / 2
slope = np.polyfit(times[late], np.log(np.abs(np.tan(theta[late]))), 1)[0]
print(f"perturbed cluster: θ(T) = {theta[-1]:.4f} rad, cluster radius at T = {radius[-1]:.3g} rad")
print(f"d ln|tan θ|/dt over t ≥ {times[-1] / 2:g}: {slope:.5f}  (point mass: −ε = {-p['eps']:g})")
# look for: slope ≈ −ε when the radius is small (the tokens have clustered).
