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
# **What this measures.** Base Q = K = V = I_d, one uniform x₀; for every L, every ratio
# η_L/√L (log-spaced) and several adapter seeds, the final W2(μ_T, ν_T). If the theorem's
# scaling is right, the curves for different L collapse onto one when plotted against
# η_L/√L, not against η_L. In the small-drift regime the mean W2 is fitted as
# c_L (η_L/√L)^a per L; the collapse is the spread max c_L / min c_L across L, compared with
# the spread the same curves have against η_L alone and with the point-mass random-walk
# prefactor c = T‖s‖√(d−1)/d · E|X|/RMS.
#
# This is `scripts/exp_random_adapters.py` from Python. With `SOLVER_NOTEBOOK_PRESET=small`
# (the tests) it uses the script's `tiny` preset (L ∈ {2, 8}, 2 ratios, 2 seeds, T = 4: too
# few points to show the collapse), otherwise its `small` preset (d = 3, L ∈ {4, 16, 64},
# 7 ratios in [10⁻³, 1], 4 seeds, T = 10, about 15 s).

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
# `run_random_adapters` runs one case per (L, ratio, seed) (`random_adapters.csv`), fits the
# small-drift regime per L, draws `random_adapters.png` and returns the summary.

# %%
summary = run_random_adapters(p, OUT, progress=not SMALL)
print("\n".join(summary["report"]))

# %% [markdown]
# Final W2 against η_L (left) and against η_L/√L (right), mean ± one standard deviation over
# the seeds; dashed: the point-mass random walk.

# %%
show(OUT / "random_adapters.png")

# %% [markdown]
# ## The collapse
#
# Per L: the small-drift fit W2 ≈ c_L (η_L/√L)^a (points with mean W2 < `linear_max`), then
# the spread of c_L across L against η_L/√L and against η_L.

# %%
col = summary["collapse"]
print("L      exponent a   c_L      points")
for L, f in col["fits"].items():
    print(f"{int(L):<6} {f['exponent']:<12.3f} {f['c']:<8.3g} {f['n']}")
print(
    f"spread of c_L: {col['spread_vs_ratio']:.2f}x against eta_L/sqrt(L), "
    f"{col['spread_vs_eta']:.2f}x against eta_L; random-walk prediction c = "
    f"{col['prediction_c']:.3g}"
)
# look for: a ≈ 1, c_L close to the prediction, and a spread against η_L/√L well below the one
# against η_L (small preset: ~1.35x vs ~3.2x); the tiny preset has too few points for this.

# %% [markdown]
# The mean final W2 per ratio and depth: linear in η_L/√L while small, saturating at the
# sphere's scale (W2 ~ 1 rad) once η_L ≳ √L.

# %%
stats = summary["stats"]
ratios = sorted({s["ratio"] for s in stats})
Ls = sorted({s["L"] for s in stats})
print("eta_L/sqrt(L)  " + "  ".join(f"L = {int(L):<8}" for L in Ls))
for r in ratios:
    means = {s["L"]: s["mean"] for s in stats if s["ratio"] == r}
    print(f"{r:<14.3g} " + "  ".join(f"{means[L]:<12.4g}" for L in Ls))
# look for: columns that agree row by row (the collapse) and grow ~linearly down the rows.
