"""Trained transformers beside the mean-field flow (issue 24).

* :class:`MeanFieldTransformer`: a transformer whose forward pass is the particle system of
  :func:`solver.simulate_particles` (tied or per-layer weights, one or several heads, a
  Lipschitz readout of the final token measure);
* :class:`StandardTransformer`: pre-norm, MLP blocks, several heads, per-layer weights, with
  its normalised hidden states and their distance to the mean-field flow
  (:func:`hidden_state_gap`);
* LoRA in PEFT's layout (:func:`lora_init`, :func:`merge_lora`), seeded Adam training
  (:func:`train`), set tasks (:func:`make_task`);
* Hugging Face / PEFT folders (safetensors) written and read (:func:`save_hf_model`,
  :func:`save_peft_adapter`, :func:`read_head`), behind ``python -m solver adapter``.

JAX is imported only when a name that needs it is first used (``import solver.nn`` and the
adapter reader need NumPy and safetensors only); it runs in float64.
"""

from __future__ import annotations

import importlib

_WHERE = {
    "MeanFieldTransformer": "_meanfield",
    "head_matrices": "_meanfield",
    "StandardTransformer": "_standard",
    "mean_field_matrices": "_standard",
    "hidden_state_gap": "_standard",
    "train": "_train",
    "PROJECTIONS": "_lora",
    "lora_init": "_lora",
    "merge_lora": "_lora",
    "lora_rank": "_lora",
    "make_task": "_tasks",
    "TASKS": "_tasks",
    "save_hf_model": "_hf",
    "save_peft_adapter": "_hf",
    "read_head": "_hf",
    "HeadMatrices": "_hf",
    "AdapterError": "_hf",
    "project_head": "_hf",
    "adapter_toml": "_hf",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return __all__
