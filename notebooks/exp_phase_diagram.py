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
# # Fig 3: phase diagram of the δ-cluster state over (ε, t)
#
# **Claim (arXiv 2402.15415, Fig 3).** With Q = K = V = I and Ṽ = I − ε e₂e₂ᵀ, the perturbed
# tokens go through three phases in depth: not yet clustered, then δ-close to the base
# model's final cluster configuration C ("no forgetting"), then away from it ("forgetting").
# The exit time from the no-forgetting phase, the transition curve t_exit(ε), grows like 1/ε
# as the perturbation gets smaller.
#
# **What this measures.** n = 20 tokens, the same uniform x₀ for every ε, on S¹ and S².
# The configuration is δ-clustered when maxᵢ min_{c∈C} |xᵢ(t) − c| < δ; `phase.csv` holds the
# entry and exit times t_enter, t_exit per sphere and ε (ε = 0 is the base flow, which enters
# and never leaves). The transition curve is fitted as t_exit ≈ c ε^(−α) and compared with the
# point-mass law ln(tan φ₀ / tan(φ₀ − Δθ))/ε, Δθ = 2 arcsin(δ/2), φ₀ the base cluster's angle
# to the hyperplane e₂^⊥.
#
# This is `scripts/exp_phase_diagram.py` from Python. With `SOLVER_NOTEBOOK_PRESET=small` (the
# tests) it uses the script's `tiny` preset (3 values of ε, T = 80), otherwise its `small`
# preset (10 values of ε in [10⁻³, 0.075], T = 400, about a minute).

# %%
import os
from pathlib import Path

from solver.experiments import load_presets, read_rows, resolve_params, run_phase_diagram
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
p = resolve_params(load_presets("phase_diagram")[PRESET], OVERRIDES)
OUT = Path(f"phase_diagram_{PRESET}")
for k, v in p.items():
    print(f"{k:>8} = {v}")

# %% [markdown]
# ## Run
#
# `run_phase_diagram` runs one case per sphere and ε (`phase.csv`), fits the transition curve
# per sphere, draws `phase_diagram.png` and returns the summary.

# %%
summary = run_phase_diagram(p, OUT, progress=not SMALL)
print("\n".join(summary["report"]))

# %% [markdown]
# The three phases over (ε, t), log–log, one panel per sphere; the measured exits, the
# point-mass law (dashed) and the fit (dotted).

# %%
show(OUT / "phase_diagram.png")

# %% [markdown]
# ## The transition exponent
#
# The fitted α of t_exit ≈ c ε^(−α) (over all finite exits and over the exits later than
# 3 t_enter of the base flow, where the clustering time no longer adds to t_exit), against the
# point-mass law's exponent (exactly 1: φ₀ is the same for every ε).

# %%
print("sphere  alpha   alpha (late exits)  law alpha  c       base t_enter  t_exit/law")
for name, f in summary["fits"].items():
    late = f"{f['alpha_late_exits']:.3f} ({f['n_late_exits']} points)"
    print(
        f"{name:<7} {f['alpha']:<7.3f} {late:<19} {f['pointmass_alpha']:<10.3f} "
        f"{f['prefactor']:<7.3g} {f['base_t_enter']:<13.3g} {f['median_ratio_to_pointmass']:.3f}"
    )
# look for: alpha ≈ 1 (t_exit ∝ 1/ε) and t_exit / law ≈ 1; the base flow never exits.

# %% [markdown]
# Per ε: entry, exit, and the exit against the point-mass law. A `nan` entry at large ε means
# the tokens drifted by δ before they clustered: the no-forgetting phase has closed; a `nan`
# exit after a finite entry at the smallest ε means t_exit > T.

# %%
rows = read_rows(OUT / "phase.csv")
print("sphere  eps       t_enter   t_exit    law       t_exit/law")
for r in rows:
    ratio = r["t_exit"] / r["t_exit_pointmass"] if r["eps"] > 0 else float("nan")
    print(
        f"S{r['sphere']:<6g} {r['eps']:<9.4g} {r['t_enter']:<9.4g} {r['t_exit']:<9.4g} "
        f"{r['t_exit_pointmass']:<9.4g} {ratio:.3f}"
    )
# look for: t_exit growing like 1/ε, and t_exit/law → 1 as ε → 0 (above 1 near clustering).
