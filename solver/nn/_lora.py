r"""LoRA adapters in PEFT's layout, on the attention projections of :mod:`solver.nn` models.

An adapter on projection ``m ∈ {q, k, v, o}`` holds ``lora_A`` of shape ``(Lw, r, in)`` and
``lora_B`` of shape ``(Lw, out, r)`` (``Lw`` as the weights: 1 when tied); the merged
weight is PEFT's

.. math::  W_m' = W_m + \frac{\alpha}{r} B_m A_m .

``lora_A`` starts Gaussian (seeded), ``lora_B`` at zero, so training starts from the base.
Works on NumPy and JAX arrays alike.
"""

from __future__ import annotations

import numpy as np

__all__ = ["PROJECTIONS", "lora_init", "merge_lora", "lora_rank"]

PROJECTIONS = ("q", "k", "v", "o")


def lora_init(params: dict, targets, r: int, seed: int = 0) -> dict:
    """Zero-effect adapter of rank ``r`` on each projection of ``targets`` of ``params``
    (``{"v": {"A": (Lw, r, in), "B": (Lw, out, r)}, ...}``)."""
    targets = tuple(targets)
    bad = [t for t in targets if t not in PROJECTIONS]
    if bad or not targets:
        raise ValueError(f"targets must be a non-empty subset of {PROJECTIONS}, got {targets}")
    if not isinstance(r, int | np.integer) or r < 1:
        raise ValueError(f"LoRA rank r must be a positive integer, got {r!r}")
    rng = np.random.default_rng(seed)
    out = {}
    for t in targets:
        Lw, o, i = np.shape(params[t])
        out[t] = {"A": rng.normal(size=(Lw, r, i)) / np.sqrt(i), "B": np.zeros((Lw, o, r))}
    return out


def lora_rank(lora: dict) -> int:
    """``r`` of an adapter (the rows of any ``lora_A``)."""
    return int(np.shape(next(iter(lora.values()))["A"])[-2])


def merge_lora(params: dict, lora: dict, alpha: float) -> dict:
    """``params`` with ``W_m + (alpha / r) B_m A_m`` for every projection ``m`` of ``lora``."""
    if not lora:
        return params
    s = alpha / lora_rank(lora)
    out = dict(params)
    for t, ab in lora.items():
        out[t] = params[t] + s * (ab["B"] @ ab["A"])
    return out
