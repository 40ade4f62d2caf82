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
# near the base model's cluster up to a critical depth T* that scales like 1/ε; beyond it the
# perturbed flow leaves the base cluster (forgetting).
#
# **What this measures.** Q = K = V = I, Ṽ = I − ε e₂e₂ᵀ; the tokens start as a von
# Mises–Fisher cloud (κ) centred at angle θ₀ from e₁ towards e₂, in dimension d. T* is
# measured twice: the depth at which the cluster directions of the two flows are
# Δθ = 2 arcsin(δ/2) apart, and the exit time of the δ-cluster state around the base's final
# configuration. Both are compared with the point-mass law T* = ln(tan φ₀ / tan(φ₀ − Δθ))/ε
# (φ₀: angle of the base cluster to the hyperplane e₂^⊥) and fitted as T* ≈ c ε^(−α).
#
# This is `scripts/exp_depth.py` from Python. With `SOLVER_NOTEBOOK_PRESET=small` (the tests)
# it uses the script's `tiny` preset (d = 2, θ₀ = 45°, 3 values of ε in [0.05, 0.3]),
# otherwise its `small` preset (d ∈ {2, 3}, θ₀ ∈ {20°, 45°}, 7 values of ε in [0.003, 0.3],
# 2 seeds, about a minute).

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
# `run_depth` runs one case per (d, θ₀, ε, seed) (`depth.csv`; each case runs to
# `t_factor` times the a-priori law, plus 10), fits the exponent per (d, θ₀), draws
# `depth.png` and returns the summary.

# %%
summary = run_depth(p, OUT, progress=not SMALL)
print("\n".join(summary["report"]))

# %% [markdown]
# T* against ε (top; line: the point-mass law, dots: cluster direction, crosses: δ-state exit)
# and its ratio to the law (bottom), one column per dimension.

# %%
show(OUT / "depth.png")

# %% [markdown]
# ## T* against the point-mass law
#
# Per (d, θ₀): the fitted exponent α of T* ≈ c ε^(−α) and the ratio of the measured T* to the
# law (median and range over ε and seeds; the δ-exit only where the δ-state was entered).

# %%
print("case                alpha   T*/law median [min, max]   δ-exit/law median")
for k, f in summary["fits"].items():
    rng = f"{f['ratio_median']:.3f} [{f['ratio_min']:.3f}, {f['ratio_max']:.3f}]"
    print(f"{k:<19} {f['exponent']:<7.3f} {rng:<26} {f['delta_ratio_median']:.3f}")
# look for: alpha ≈ 1 (T* ∝ 1/ε) and T*/law ≈ 1, a little above at large ε (the cloud's own
# clustering time adds to T*).

# %% [markdown]
# Every case: ε, the measured T* (direction and δ-exit), the law, and ε·T*, which the law
# says is the constant ln(tan φ₀ / tan(φ₀ − Δθ)) for each θ₀.

# %%
rows = read_rows(OUT / "depth.csv")
print("d  theta0  seed  eps       T*(dir)   T*(δ-exit)  law       eps*T*(dir)")
for r in sorted(rows, key=lambda r: (r["d"], r["theta0_deg"], r["seed"], r["eps"])):
    print(
        f"{r['d']:<2g} {r['theta0_deg']:<7g} {r['seed']:<5g} {r['eps']:<9.4g} "
        f"{r['T_star_direction']:<9.4g} {r['T_star_delta']:<11.4g} {r['T_star_pointmass']:<9.4g} "
        f"{r['eps'] * r['T_star_direction']:.4f}"
    )
# look for: ε·T* nearly constant down each (d, θ0) block, larger for the smaller θ0.
