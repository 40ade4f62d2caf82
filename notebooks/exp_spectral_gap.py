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
# # The spectral gap of V: Prop 3.3, Remark 3.4 and T*
#
# **Claims (arXiv 2402.15415).** Prop 3.3 (A = V ⪰ 0, tokens with ⟨x, u₁⟩ ≥ γ > 0): with
# a = u₁ᵀΔV u₁, b = P⊥ΔV u₁, E = P⊥ΔV P⊥, if gap + a > 2‖b‖ + ‖E‖ both flows cluster, at u₁
# and ũ₁, and ‖u₁ − ũ₁‖ ≲ (2‖b‖ + ‖E‖)/(gap + a). Remark 3.4: ‖u₁ − ũ₁‖² ≃
# Σⱼ (αⱼ/(λ₁ − λⱼ − eⱼ))². The critical depth T* at which the flows part.
#
# **What this measures.** V = A = U diag(1, 1 − g, ...) Uᵀ (and a non-symmetric V), tied ΔV
# aligned with, at an angle to and orthogonal to u₁, and the coupling ε u₂u₁ᵀ; particles and
# the PDE. With `SOLVER_NOTEBOOK_PRESET=small` (the tests) it uses the `tiny` preset.

# %%
import os
from pathlib import Path

from solver.experiments import load_presets, read_rows, resolve_params, run_spectral_gap
from solver.viz import show

SMALL = os.environ.get("SOLVER_NOTEBOOK_PRESET", "") == "small"
PRESET = "tiny" if SMALL else "small"

# %% [markdown]
# ## Parameters

# %%
OVERRIDES = {}
p = resolve_params(load_presets("spectral_gap")[PRESET], OVERRIDES)
OUT = Path(f"spectral_gap_{PRESET}")
for k, v in p.items():
    print(f"{k:>14} = {v}")

# %% [markdown]
# ## Run

# %%
summary = run_spectral_gap(p, OUT, progress=not SMALL)
print("\n".join(summary["report"]))

# %% [markdown]
# Left: the measured drift against Prop 3.3's bound (stable cases lie below the diagonal).
# Middle: drift against ε/gap for the orthogonal adapter (the criterion ε < gap is exact) and
# the coupling (the criterion ε < gap/2 is not necessary; the bound is twice the drift).
# Right: T* against the point-mass law.

# %%
show(OUT / "spectral_gap.png")

# %% [markdown]
# Every particle case: the criterion, the bound, |u₁ − ũ₁| and the measured drift.

# %%
print("skew gap   kind      phi   eps    stable bound     |u1-u1~|  drift     T*       law")
for r in read_rows(OUT / "spectral_gap.csv"):
    print(
        f"{r['skew']:<4g} {r['gap']:<5g} {r['kind']:<9} {r['phi_deg']:<5g} {r['eps']:<6g} "
        f"{r['stable']:<6g} {r['bound']:<9.4g} {r['predicted']:<9.4g} {r['drift']:<9.4g} "
        f"{r['t_star']:<8.4g} {r['t_star_law']:.4g}"
    )
