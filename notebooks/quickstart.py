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
# # Quick start: a base flow, a LoRA-perturbed flow, and their drift
#
# Tokens are points on the sphere S², depth is time, and their law μ_t follows the continuity
# equation ∂t μ + div(X[μ] μ) = 0 with the self-attention velocity field
# X[μ](x) = P_x(∫ e^{⟨Qx,Ky⟩} V y dμ(y) / ∫ e^{⟨Qx,Ky⟩} dμ(y)).
# A LoRA update changes the weights (here V → V + ΔV with a rank-one ΔV, tied across layers)
# and the perturbed law ν_t drifts away from μ_t. This notebook
#
# 1. meshes the sphere and sets up the base and perturbed models,
# 2. evolves both flows with the DG0 finite-volume solver (DOLFINx),
# 3. looks at the densities on the sphere (PyVista, off-screen) and makes an animation,
# 4. plots the drift between the two flows.
#
# It is a jupytext percent file: open it in Jupyter as a notebook (`jupytext --to ipynb`) or
# run it as a script. The test suite runs it with `SOLVER_NOTEBOOK_PRESET=small` (a coarser
# mesh, a shorter time) so that it never rots.

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from mpi4py import MPI

import solver
from solver.viz import animate_run, plot_diagnostics, plot_run, show

SMALL = os.environ.get("SOLVER_NOTEBOOK_PRESET", "") == "small"
LEVEL = 2 if SMALL else 3  # icosphere level: 20·4^level cells
T = 1.0 if SMALL else 3.0  # final depth
SAVE_EVERY = 0.25 if SMALL else 0.5
OUT = Path("quickstart_out")


# %% [markdown]
# ## The mesh and the models
#
# An icosphere of the unit sphere, distributed over the MPI ranks (one here). The base weights
# are Q = 2I, K = V = I; the LoRA update is ΔV = b aᵀ with b = (0, 0, 0.5) and a = (0, 1, 0):
# it pushes tokens with a large y-component towards the north pole.

# %%
sm = solver.sphere_mesh(MPI.COMM_WORLD, sphere=2, refinement=LEVEL)
print(f"S^2 mesh: {sm.num_cells} triangles")

base = solver.Model(Q=2 * np.eye(3), K=np.eye(3), V=np.eye(3))
lora = solver.TiedLoRA(dA=np.zeros((3, 3)), dV=solver.low_rank([0, 0, 0.5], [0, 1, 0]))
perturbed = base.perturbed(lora)
print("ΔV =\n", lora.dV)

# two clusters of tokens: a mixture of von Mises-Fisher densities
initial = solver.Mixture(
    components=(
        solver.VonMisesFisher((1.0, 0.0, 0.2), 6.0),
        solver.VonMisesFisher((-0.3, 1.0, 0.0), 6.0),
    ),
    weights=(0.5, 0.5),
)

# %% [markdown]
# ## Evolve both flows
#
# `solver.evolve` advances μ and ν together (SSP-RK3, time step from the CFL condition that
# keeps the density ≥ 0), records diagnostics at every step and writes the output folder:
# `result.npz`, `diagnostics.csv` and the VTX series `density.bp` (open it in ParaView).

# %%
res = solver.evolve(sm, base, initial, T, perturbed=perturbed, save_every=SAVE_EVERY,
                    output=OUT, progress=False)  # fmt: skip
print("saved times:", res.times)
print(f"mass at T: {res.column('mass')[-1]:.15f} (conserved), min ρ: {res.column('min')[-1]:.2e}")
for name in ("moment_drift", "l1_difference"):
    print(f"{name} at T = {T}: {res.column(name)[-1]:.4f}")

# %% [markdown]
# ## Look at the densities
#
# `plot_run` renders μ_t (left) and ν_t (right) on the sphere with one colour scale, off-screen,
# at the first, middle and last saved times (or the times you ask for). The base flow
# concentrates its two clusters; the LoRA update carries the tokens towards the pole first.

# %%
pngs = plot_run(OUT)
for p in pngs:
    show(p)

# %% [markdown]
# Warping the sphere radially by the density shows where the tokens pile up:

# %%
show(plot_run(OUT, times=[T], warp=0.6, out=OUT / "plots_warped")[0])

# %% [markdown]
# An animation with one frame per saved time (an MP4 where an ffmpeg exists, as the `viz`
# extra's imageio-ffmpeg ships one, else a GIF; name the file to choose):

# %%
movie = animate_run(OUT)
show(movie)

# %% [markdown]
# ## The drift between the flows
#
# Every step of the run recorded the first moments m_μ, m_ν and the L¹ distance of the
# densities. Their difference is how far the fine-tuned model's token distribution has moved
# from the base model's at each depth.

# %%
t = res.step_times
fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
ax.plot(t, res.column("moment_drift"), label=r"$|m_\mu - m_\nu|$")
ax.plot(t, res.column("l1_difference"), label=r"$\|\rho_\mu - \rho_\nu\|_{L^1}$")
ax.set_xlabel("t (depth)")
ax.set_ylabel("drift")
ax.set_title("base vs LoRA-perturbed flow")
ax.grid(alpha=0.3)
ax.legend()
fig.savefig(OUT / "drift.png", dpi=110)
plt.close(fig)
show(OUT / "drift.png")

# %% [markdown]
# All diagnostics of the run at once (mass, min/max density, first moments, drift):

# %%
show(plot_diagnostics(OUT))

# %% [markdown]
# The same pictures from the command line, for any output folder:
#
# ```bash
# python -m solver run --output out          # the default job (S², tied LoRA)
# python -m solver plot out --warp           # PNGs, density.mp4 (or .gif), diagnostics.png
# ```
