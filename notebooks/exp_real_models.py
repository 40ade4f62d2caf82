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
# # Trained transformers meet the mean-field flow
#
# **Question (arXiv 2402.15415 §5, its referee).** Does the continuous model say anything
# quantitative about a discrete transformer that was really trained and really fine-tuned?
#
# **What this measures.** A transformer whose forward pass *is* the particle system of
# `solver.simulate_particles` (tokens on S^{d−1}, each of the L layers one RK4 step of the
# attention dynamics, tied weights, two heads, a readout of the final token measure) is
# pre-trained with JAX on a set task (clouds of n = 64 tokens, label sign⟨m, e₁⟩), then
# fine-tuned on sign⟨m, e₂⟩ by LoRA on v, on q/k, on both, rank-one LoRA on 16 inputs, full
# fine-tuning and sparse fine-tuning of one row of W_v. Beside the measured forgetting (the
# old task's loss and accuracy after fine-tuning): W2(μ_T, ν_T) between the base and the
# fine-tuned token measures, the Lipschitz link |r(μ_T) − r(ν_T)| ≤ Lip·W1 ≤ Lip·W2, the V
# spectra per head, the average token scalar product per layer (Fig 16) and the norm
# transition (old-task loss against η/√L).
#
# This is `scripts/exp_real_models.py` from Python (needs the `ml` extra: jax, safetensors).
# With `SOLVER_NOTEBOOK_PRESET=small` (the tests) it uses the `tiny` preset (d = 2, three
# methods, two seeds, about a minute), otherwise `small`.

# %%
import json
import os
from pathlib import Path

from solver.experiments import read_rows, resolve_params
from solver.experiments.real_models import PRESETS, adapter_folder, run_real_models
from solver.viz import show

SMALL = os.environ.get("SOLVER_NOTEBOOK_PRESET", "") == "small"
PRESET = "tiny" if SMALL else "small"

# %% [markdown]
# ## Parameters
#
# The script's preset; put changes in `OVERRIDES` (e.g. `{"methods": ["lora_v", "full"]}`).
# The output folder resumes.

# %%
OVERRIDES = {}
p = resolve_params(PRESETS[PRESET], OVERRIDES)
OUT = Path(f"real_models_{PRESET}")
for k, v in p.items():
    print(f"{k:>15} = {v}")

# %% [markdown]
# ## Run
#
# Pre-training (`pretrain.csv`, models saved in Hugging Face's format under `models/`),
# fine-tuning (`finetune.csv`, adapters in PEFT's format, read back through the reader of
# `python -m solver adapter`), the PDE on the trained heads (`pde.csv`), the norm transition
# (`norm.csv`) and the standard transformer (`standard.csv`; against the PDE:
# `standard_pde.csv`).

# %%
summary = run_real_models(p, OUT, progress=not SMALL)
print("\n".join(summary["report"]))

# %% [markdown]
# Top: measured forgetting against W2 of the flows; the Lipschitz link; the norm transition;
# bottom: token scalar product per layer; old-task accuracy against ‖ΔV‖; the standard
# transformer's distance to the mean-field flow of its attention; V spectra per head.

# %%
show(OUT / "real_models.png")

# %% [markdown]
# ## Forgetting and the flows' distance, item by item
#
# One line per (method, seed): the old task's loss before and after, ‖ΔV‖ read back from the
# saved adapter, W2(μ_T, ν_T) (mean over held-out inputs) and how tight the Lipschitz bound
# was (largest |r(μ_T) − r(ν_T)| / (Lip·W1); ≤ 1 always).

# %%
print("d  method     seed  old loss        old acc  ||dV||   W2      Lip ratio")
for r in read_rows(OUT / "finetune.csv"):
    print(f"{r['d']:<2} {r['method']:<10} {r['seed']:<5} {r['old_loss_base']:.3f} -> "
          f"{r['old_loss']:.3f}  {r['old_acc']:.3f}    {r['dV_norm']:<8.3f} {r['w2']:<7.4f} "
          f"{r['lip_ratio_max']:.3f}")  # fmt: skip
# look for: sparse (one row of W_v) moves the flow least and forgets least; full and LoRA on v
# move it most; the Lipschitz ratio never above 1.

# %% [markdown]
# ## The PDE on the trained heads
#
# For d = 2, 3: every head of the fine-tuned model (read back from the saved folders), the
# base and fine-tuned flows from the token law of one input, W2 of the PDE's final densities
# beside the particles' from n tokens of that law and from `pde_particles` tokens.

# %%
for r in read_rows(OUT / "pde.csv"):
    print(f"d = {r['d']} {r['method']:<10} seed {r['seed']}: W2 PDE {r['w2_pde']:.4f} "
          f"({r['cells']} cells), particles n = {p['n']} {r['w2_particles_n']:.4f}, "
          f"n = {p['pde_particles']} {r['w2_particles_big']:.4f}")  # fmt: skip

# %% [markdown]
# ## A standard transformer against the PDE of its attention, layer by layer

# %%
for r in read_rows(OUT / "standard_pde.csv"):
    print(f"layer {r['layer']}: W2(PDE, hidden states) {r['w2_pde_hidden']:.4f}, "
          f"W2(PDE, particles) {r['w2_pde_particles']:.4f}, W2(particles, hidden) "
          f"{r['w2_particles_hidden']:.4f}")  # fmt: skip
# look for: the PDE and the particles of the same flow stay close (sampling and mesh error);
# the hidden states leave both from the first layer on (MLP and residual norm).

# %% [markdown]
# ## V spectra per head (Fig 1) before and after one fine-tuning

# %%
d = max(p["dims"])
for sp in json.loads((adapter_folder(OUT, d, p["methods"][0], 0) / "spectra.json").read_text()):
    for which in ("base", "finetuned"):
        ev = ", ".join(f"{a:+.3f}{b:+.3f}i" for a, b in sp[which]["V_eig"])
        print(f"head {sp['head']} {which:<9} V eigenvalues {ev}; gap {sp[which]['V_gap']:.3f}")
