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
# # Thm 4.2: random adapters, η_L against √L
#
# **Claim (arXiv 2402.15415, Thm 4.2).** Split the depth T into L layers of length h = T/L
# and give layer ℓ its own random adapter ΔV^ℓ = η_L Σ_a s_a u_a^ℓ (v_a^ℓ)ᵀ with i.i.d.
# u, v ~ N(0, I_d/d). The independent layer effects add up like a random walk, so the
# cumulative drift scales as η_L T/√L: no forgetting for η_L ≪ √L, forgetting for η_L ≫ √L.
#
# **What this measures.** Base Q = K = V = I_d on S^1 (d = 2); for every L, every ratio
# η_L/√L (log-spaced) and seeds over both the initial draw and the adapters, the final
# W2(μ_T, ν_T) on the particles (`random_adapters.csv`) and, for the first `pde_seeds` seeds,
# on the mean-field PDE (`pde.csv`: DG0, adaptive steps, from the density 1 + d⟨m, x⟩ the
# seed's draw approximates, with the same adapters). In the linear regime
# c_L = RMS W2 / (η_L/√L) is fitted against L^γ with a 90 % bootstrap interval over the seeds:
# the theorem says γ = 0 (a law in η_L alone would give γ = ½).
#
# This is `scripts/exp_random_adapters.py` from Python. With `SOLVER_NOTEBOOK_PRESET=small`
# (the tests) it uses the script's `tiny` preset (L ∈ {4, 64}, one ratio, 48 particle seeds,
# 8 PDE seeds, T = 6, about 30 s), otherwise its `small` preset (L ∈ {1, 8, 64}, 3 ratios,
# 24 + 6 seeds, T = 10; see docs/experiments.md for its cost).

# %%
import os
from pathlib import Path

from solver.experiments import load_presets, resolve_params, run_random_adapters
from solver.viz import show

SMALL = os.environ.get("SOLVER_NOTEBOOK_PRESET", "") == "small"
PRESET = "tiny" if SMALL else "small"


# %% [markdown]
# ## Parameters
#
# The script's preset; put changes in `OVERRIDES` (e.g. `{"seeds": 8}`). The output folder
# resumes: a rerun with the same parameters reuses the finished cases, other parameters need
# another folder.

# %%
OVERRIDES = {}
p = resolve_params(load_presets("random_adapters")[PRESET], OVERRIDES)
OUT = Path(f"random_adapters_{PRESET}")
for k, v in p.items():
    print(f"{k:>10} = {v}")

# %% [markdown]
# ## Run
#
# `run_random_adapters` runs one case per (L, ratio, seed) on the particles, then on the PDE,
# fits c_L and γ per solver, draws `random_adapters.png` and returns the summary.

# %%
summary = run_random_adapters(p, OUT, progress=not SMALL)
print("\n".join(summary["report"]))

# %% [markdown]
# Final W2 against η_L (left, particles) and η_L/√L (middle, particles and PDE), mean ± one
# standard deviation over the seeds; right: c_L against L with its bootstrap interval.

# %%
show(OUT / "random_adapters.png")

# %% [markdown]
# ## c_L against L
#
# Per solver: γ with its interval and c_L per depth (RMS W2 / ratio over the linear regime).

# %%
for solver, f in summary["fits"].items():
    print(
        f"{solver}: gamma = {f['gamma']:.3f} [{f['gamma_lo']:.3f}, {f['gamma_hi']:.3f}] "
        f"({f['seeds']} seeds)"
    )
    for L, c in f["c"].items():
        print(f"  L = {int(L):<4} c_L = {c:.3g} [{f['c_lo'][L]:.3g}, {f['c_hi'][L]:.3g}]")
print(f"point-mass random walk (RMS): c = {summary['prediction_c_rms']:.3g}")
# look for: the particles' interval contains 0 and excludes 1/2; with few seeds the PDE's
# interval is too narrow (a percentile bootstrap of a few heavy-tailed samples).
