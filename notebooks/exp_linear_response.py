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
# # Thm 4.2 by exact linear response
#
# **Claim (arXiv 2402.15415, Thm 4.2).** With i.i.d. adapters per layer, the forgetting
# W2(μ_T, ν_T) ≈ c_L η_L/√L with c_L independent of the depth L (γ = 0 in c_L ∝ L^γ).
#
# **What this computes.** The exact derivative of the particles' flow map in each layer's
# value matrix (complex step through the RK4 scheme): the mean square over the adapters is
# then a closed form, so c_L is exact for each draw and the only randomness left is the draw.
# γ per draw, its mean with a bootstrap interval over the draws; the draws that have not
# clustered by T; and the most forgetful unit adapter of each rank. With
# `SOLVER_NOTEBOOK_PRESET=small` (the tests) it uses the `tiny` preset.

# %%
import os
from pathlib import Path

from solver.experiments import load_presets, resolve_params, run_linear_response
from solver.viz import show

SMALL = os.environ.get("SOLVER_NOTEBOOK_PRESET", "") == "small"
PRESET = "tiny" if SMALL else "small"

# %%
OVERRIDES = {}
p = resolve_params(load_presets("linear_response")[PRESET], OVERRIDES)
OUT = Path(f"linear_response_{PRESET}")
for k, v in p.items():
    print(f"{k:>10} = {v}")

# %%
summary = run_linear_response(p, OUT, progress=not SMALL)
print("\n".join(summary["report"]))

# %% [markdown]
# c_L against L per draw (thin) and the mean (thick); γ per draw with the mean and its
# interval (red: draws not clustered by T).

# %%
show(OUT / "linear_response.png")
