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
# # Thm 4.6: the critical depth T* against the perturbation norm
#
# **Claim (arXiv 2402.15415, Thm 4.6).** A perturbation of norm ε leaves the clustered tokens
# near the base model's cluster up to a critical depth T*; beyond it the perturbed flow leaves
# the base cluster (forgetting).
#
# **What this measures.** Q = K = V = I; tokens from a von Mises–Fisher cloud (κ) centred at
# θ₀ from e₁ towards e₂. Tied adapters Ṽ = I − ε e₂e₂ᵀ: point-mass law
# T* = ln(tan φ₀ / tan(φ₀ − Δθ))/ε ∝ 1/ε. Random adapters ε u vᵀ, a new one per layer of
# length h: the cluster does a random walk, E T* = d² Δθ² / ((d−1) ε² h) ∝ 1/ε² (diffusive).
# T* is the depth at which the cluster directions of the two flows are Δθ = 2 arcsin(δ/2)
# apart, on particles and (d = 2) on the PDE; T* ≈ c ε^(−α) is fitted with a 90 % bootstrap
# interval on α.
#
# This is `scripts/exp_depth.py` from Python. With `SOLVER_NOTEBOOK_PRESET=small` (the tests)
# it uses the script's `tiny` preset (d = 2, θ₀ = 45°; tied: 3 values of ε in [0.05, 0.3];
# random: ε ∈ {0.15, 0.3}, 4 seeds, 2 on the PDE), otherwise its `small` preset (see
# docs/experiments.md).

# %%
import os
from pathlib import Path

import numpy as np

from solver.experiments import load_presets, read_rows, resolve_params, run_depth
from solver.viz import show

SMALL = os.environ.get("SOLVER_NOTEBOOK_PRESET", "") == "small"
PRESET = "tiny" if SMALL else "small"


# %% [markdown]
# ## Parameters
#
# The script's preset; put changes in `OVERRIDES` (e.g. `{"delta": 0.2}`). The output folder
# resumes: a rerun with the same parameters reuses the finished cases, other parameters need
# another folder.

# %%
OVERRIDES = {}
p = resolve_params(load_presets("depth")[PRESET], OVERRIDES)
OUT = Path(f"depth_{PRESET}")
for k, v in p.items():
    print(f"{k:>10} = {v}")
print(f"turn that counts as leaving: Δθ = 2 arcsin(δ/2) = {2 * np.arcsin(p['delta'] / 2):.4f} rad")

# %% [markdown]
# ## Run
#
# `run_depth` runs one case per (kind, d, θ₀, ε, seed) on the particles (`depth.csv`), then
# the d = 2 cases on the PDE (`pde.csv`), fits the exponents, draws `depth.png` and returns
# the summary.

# %%
summary = run_depth(p, OUT, progress=not SMALL)
print("\n".join(summary["report"]))

# %% [markdown]
# Mean T* over the seeds against ε (bars: min..max over seeds), tied (left) and random
# (right); lines: the laws.

# %%
show(OUT / "depth.png")

# %% [markdown]
# ## The exponents
#
# Per solver and (kind, d, θ₀): α with its interval and T* over the law (mean over seeds;
# median and range over ε).

# %%
for solver, fs in summary["fits"].items():
    for k, f in fs.items():
        print(
            f"{solver:<9} {k:<22} alpha = {f['exponent']:.3f} [{f['exponent_lo']:.3f}, "
            f"{f['exponent_hi']:.3f}]  T*/law {f['ratio_median']:.3f} "
            f"[{f['ratio_min']:.3f}, {f['ratio_max']:.3f}]"
        )
# look for: tied alpha ≈ 1, random alpha ≈ 2 (its interval excluding 1).

# %% [markdown]
# Every particle case: ε, the measured T*, the law, and ε·T* (constant for tied adapters).

# %%
rows = read_rows(OUT / "depth.csv")
print("kind    d  theta0  seed  eps       T*(dir)   law       eps*T*(dir)")
for r in sorted(rows, key=lambda r: (r["kind"], r["d"], r["theta0_deg"], r["seed"], r["eps"])):
    print(
        f"{r['kind']:<7} {r['d']:<2g} {r['theta0_deg']:<7g} {r['seed']:<5g} {r['eps']:<9.4g} "
        f"{r['T_star_direction']:<9.4g} {r['T_star_law']:<9.4g} "
        f"{r['eps'] * r['T_star_direction']:.4f}"
    )
