"""Trained transformers meet the mean-field flow: real fine-tuning, measured forgetting and the
particle system's prediction side by side (issue 24; arXiv 2402.15415 §5).

A mean-field transformer (its forward pass is solver.simulate_particles: tokens on S^{d-1},
L layers = L RK4 steps of the attention dynamics, tied weights, a Lipschitz readout of the
token measure) is pre-trained with JAX on a data-abundant set task (clouds of n = 64 tokens,
label sign <m, e1>), then fine-tuned on a second task (sign <m, e2>) by LoRA on v, on q/k, on
both, rank-one LoRA on little data, full fine-tuning and sparse fine-tuning of a few rows of
W_v. Measured forgetting (old-task loss and accuracy) beside W2(mu_T, nu_T) of the base and
fine-tuned flows, the Lipschitz link |r(mu) - r(nu)| <= Lip W1 <= Lip W2, a Spearman rank
correlation with a bootstrap interval over seeds, V/A spectra, the token scalar product per
layer (Fig 16), the norm transition (old loss vs ||dV|| / sqrt(L)) and a standard pre-norm
transformer's hidden states against the mean-field flow of its own attention.
The PDE on the trained two-head models (d = 2, 3) from one input's token law beside the
particles, and a 3-head standard transformer of width 3 layer by layer against the PDE of its
attention's flow.
Outputs: pretrain.csv, finetune.csv, pde.csv, norm.csv, standard.csv, standard_pde.csv,
models/ (HF model folders and PEFT adapters, readable by `python -m solver adapter`),
jax_cache/, real_models.png, summary.json.
Needs the `ml` extra (jax, safetensors).

Commands (from the repository root):

    .venv/bin/python scripts/exp_real_models.py --output out/real_models
    .venv/bin/python scripts/exp_real_models.py --preset paper --output out/real_models-paper

Presets (wall time on 2 cores): see docs/real_models.md. TOML keys override the preset.
Rerunning resumes.
"""

import sys

from solver.experiments import cli
from solver.experiments.real_models import PRESETS, run_real_models


def main(argv=None) -> int:
    return cli(argv, name="real_models", doc=__doc__, presets=PRESETS, run=run_real_models)


if __name__ == "__main__":
    from solver.parallel import abort_on_error

    abort_on_error()
    sys.exit(main())
