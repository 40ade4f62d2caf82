r"""Trained transformers beside the mean-field flow (issue 24; arXiv 2402.15415 §5).

A :class:`~solver.nn.MeanFieldTransformer` (tokens on ``S^{d-1}``, ``L`` layers = ``L`` RK4
steps of the attention dynamics, tied weights, a Lipschitz readout of the final token measure)
is pre-trained on a data-abundant set task (``"old"`` of :func:`~solver.nn.make_task`: clouds
of ``n`` tokens, label ``sign <m, e_1>``), then fine-tuned on a second task (``"new"``:
``sign <m, e_2>``, the same readout) by

* ``lora_v``, ``lora_qk``, ``lora_qkv``: LoRA of rank ``rank`` (PEFT scale ``alpha / r``) on
  ``v``, on ``q`` and ``k``, on all three; the readout and embedding frozen;
* ``lora1_few``: rank-one LoRA on ``q, k, v`` trained on ``few_count`` inputs only (the
  setting of arXiv 2606.05899, defined here: a data-abundant pre-training, a rank-one adapter
  on little data);
* ``full``: every parameter (embedding and readout included);
* ``sparse``: ``sparse_rows`` rows of ``W_v`` only, those with the largest gradient of the
  new task's loss at the base (the analogue of sparse memory fine-tuning, arXiv 2605.03229).

Measured forgetting: the old task's loss and accuracy after fine-tuning (held-out inputs).
Mean-field prediction, from the trained weights: ``W2(μ_T, ν_T)`` (geodesic, exact) between
the final token measures of the base and the fine-tuned flows on the same inputs (particles,
``n`` tokens); the Lipschitz link ``|r(μ_T) − r(ν_T)| <= Lip · W1 <= Lip · W2`` (base readout
``r``, ``Lip = ‖W_2‖‖W_1‖``, chordal cost) checked input by input; the Spearman rank
correlation between ``W2`` and the forgetting across methods and seeds, with a bootstrap
interval over the seeds. Every adapter is saved in PEFT's format (``full``/``sparse``: their
exact weight changes as a rank-``d`` adapter ``ΔW = ΔW · I``) beside the base model in Hugging
Face's, and ``dA``, ``dV`` are read back through :func:`solver.nn.read_head` (the
``python -m solver adapter`` reader).

The paper's real-model figures on these models: V and A spectra per head (Fig 1, 6/11/14),
the average scalar product between tokens layer by layer before and after fine-tuning
(Fig 16), and the norm transition (Thm 4.2): per-layer models with ``L`` layers of length
``depth / L`` get i.i.d. random ``ΔV^ℓ = η u vᵀ`` (``u, v ~ N(0, I/d)``); the old task's loss
against ``η / sqrt(L)``. A :class:`~solver.nn.StandardTransformer` (pre-norm, MLP, several
heads) trained on the old task gives the ``W2`` per layer between its normalised hidden
states and the mean-field flow of its own attention matrices.

The PDE on the trained weights (``pde.csv``, ``d = 2, 3``): every head of a fine-tuned model
(:class:`~solver.model.MultiHeadModel`, matrices read back from the saved folders), base and
fine-tuned flows from the token law of one input (a projected normal density,
:func:`projected_normal_density`), ``W2`` of the final densities beside the particles' from
tokens of the same law. ``standard_pde.csv``: a standard transformer of width 3 with 3 heads,
layer by layer, against the PDE and the particles of its own attention's flow
(:func:`standard_flow_model`). Training runs in ``train_dtype`` (float32 by default),
everything measured in float64.

Sweeps: ``pretrain.csv``, ``finetune.csv``, ``pde.csv``, ``norm.csv``, ``standard.csv``,
``standard_pde.csv``; models in ``models/``; JAX's compilation cache in ``jax_cache/``;
figure ``real_models.png``. Command line: ``scripts/exp_real_models.py``.
"""

from __future__ import annotations

import functools
import json
import math
import time
from pathlib import Path

import numpy as np

from ..io import atomic_write_text
from ._common import memo
from ._experiment import Experiment, Sweep, run_experiment
from ._figures import figure, save_png
from ._params import positive, require
from ._stats import bootstrap, w2

__all__ = [
    "PRESETS", "EXPERIMENT", "METHODS", "run_real_models", "pretrain_case", "finetune_case",
    "norm_case", "standard_case", "base_folder", "adapter_folder", "load_base",
    "head_spectra", "token_scalar_products",
]  # fmt: skip

METHODS = ("lora_v", "lora_qk", "lora_qkv", "lora1_few", "full", "sparse")
_TARGETS = {"lora_v": ("v",), "lora_qk": ("q", "k"), "lora_qkv": ("q", "k", "v"),
            "lora1_few": ("q", "k", "v")}  # fmt: skip

_COMMON = {"n": 64, "step": 0.5, "heads": 2, "width": 16, "batch": 32, "lr": 0.02,
           "rank": 2, "alpha": 4.0, "sparse_rows": 1, "few_count": 16, "eval_count": 128,
           "ft_lr": 0.02, "depth": 2.0, "norm_d": 3, "norm_seeds": 2, "std_d": 16,
           "std_heads": 4, "std_layers": 3, "std_steps": 150, "std_inputs": 4,
           "n_boot": 1000, "pde_seeds": 1, "pde_cells": 128, "pde_refinement": 2,
           "pde_particles": 1000, "pde_draws": 4, "pde_law_seed": 0, "std_pde_d": 3,
           "std_pde_heads": 3, "std_pde_n": 1000, "std_pde_dt": 0.125,
           "train_dtype": "float32"}  # fmt: skip
PRESETS = {
    "tiny": {**_COMMON, "dims": [2], "layers": 2, "pretrain_count": 256, "pretrain_steps": 40,
             "finetune_count": 128, "finetune_steps": 30, "methods": ["lora_v", "full", "sparse"],
             "seeds": 2, "norm_layers": [2, 4], "norm_etas": [0.3, 3.0], "norm_steps": 30,
             "eval_count": 48, "std_steps": 20, "std_inputs": 2, "std_layers": 2,
             "n_boot": 200, "pde_cells": 64, "pde_refinement": 1, "pde_particles": 200,
             "pde_draws": 2, "std_pde_n": 200, "std_pde_dt": 0.25},
    "small": {**_COMMON, "dims": [2, 3, 8], "layers": 4, "pretrain_count": 1024,
              "pretrain_steps": 200, "finetune_count": 256, "finetune_steps": 100,
              "methods": list(METHODS), "seeds": 3, "norm_layers": [2, 4, 8],
              "norm_etas": [0.1, 0.3, 1.0, 3.0, 10.0], "norm_steps": 150},
    "paper": {**_COMMON, "dims": [2, 3, 8, 16], "layers": 6, "pretrain_count": 4096,
              "pretrain_steps": 400, "finetune_count": 512, "finetune_steps": 150,
              "methods": list(METHODS), "seeds": 4, "norm_layers": [2, 4, 8, 16],
              "norm_etas": [0.1, 0.3, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0], "norm_steps": 300,
              "norm_seeds": 3, "std_steps": 400, "std_inputs": 8, "pde_seeds": 2,
              "pde_cells": 256, "pde_refinement": 3, "pde_particles": 2000},
}  # fmt: skip

PRETRAIN_COLUMNS = ("loss_before", "loss", "acc", "train_s")
FINETUNE_COLUMNS = (
    "old_loss_base", "old_acc_base", "new_acc_base", "old_loss", "old_acc", "new_loss",
    "new_acc", "dV_norm", "dA_norm", "w2", "w2_sd", "w1_chordal", "lip", "lip_gap_max",
    "lip_ratio_max", "lip_violations", "lip_active", "readback_err", "v_gap", "prop33_ratio",
    "sp_base", "sp_ft", "train_s",
)  # fmt: skip
NORM_COLUMNS = ("old_loss", "old_acc", "dV_norm")
STANDARD_COLUMNS = ("w2", "loss", "acc")
PDE_COLUMNS = ("w2_pde", "w2_particles_n", "w2_particles_n_sd", "w2_particles_big", "cells",
               "steps", "pde_s")  # fmt: skip
STANDARD_PDE_COLUMNS = ("w2_pde_hidden", "w2_pde_particles", "w2_particles_hidden", "loss",
                        "acc", "pde_s")  # fmt: skip


def _check(p: dict) -> None:
    positive(p, "n", "step", "heads", "width", "batch", "lr", "rank", "alpha", "sparse_rows",
             "few_count", "eval_count", "ft_lr", "depth", "norm_d", "norm_seeds", "std_d",
             "std_heads", "std_layers", "std_steps", "std_inputs", "n_boot", "dims", "layers",
             "pretrain_count", "pretrain_steps", "finetune_count", "finetune_steps", "seeds",
             "norm_layers", "norm_etas", "norm_steps", "pde_cells", "pde_refinement",
             "pde_particles", "pde_draws", "std_pde_d", "std_pde_heads", "std_pde_n",
             "std_pde_dt")  # fmt: skip
    require(p, "pde_seeds", isinstance(p["pde_seeds"], int) and 0 <= p["pde_seeds"] <= p["seeds"],
            "an integer in [0, seeds] (the PDE runs seeds 0..pde_seeds-1)")  # fmt: skip
    require(p, "std_pde_d", p["std_pde_d"] in (2, 3), "2 or 3 (the PDE's S^1, S^2)")
    require(p, "train_dtype", p["train_dtype"] in ("float32", "float64"), '"float32" or "float64"')
    require(p, "std_pde_heads", p["std_pde_d"] % p["std_pde_heads"] == 0, "a divisor of std_pde_d")
    require(p, "dims", all(d >= 2 for d in p["dims"]), "a list of dimensions >= 2")
    require(p, "norm_d", p["norm_d"] >= 2, ">= 2")
    require(p, "methods", all(m in METHODS for m in p["methods"]), f"a list of {METHODS}")
    require(p, "std_heads", p["std_d"] % p["std_heads"] == 0, "a divisor of std_d")
    require(p, "seeds", p["seeds"] >= 2 or len(p["methods"]) * len(p["dims"]) >= 3,
            ">= 2 (or enough methods and dims for a rank correlation)")  # fmt: skip


# ---- models, data, losses ----------------------------------------------------------------
def _model(p: dict, d: int, L: int, tied: bool = True, step: float | None = None):
    from ..nn import MeanFieldTransformer

    return MeanFieldTransformer(d=int(d), layers=int(L), step=float(step or p["step"]),
                                heads=int(p["heads"]), tied=tied,
                                width=int(p["width"]))  # fmt: skip


def _data(p: dict, task: str, count: int, seed: int):
    from ..nn import make_task

    return make_task(task, int(count), int(p["n"]), seed=int(seed))


def _bce(logits, y):
    from ..nn._meanfield import jax, jnp

    return jnp.mean(jax.nn.softplus(-(2 * y - 1) * logits))


def _evaluate(model, params, u, y) -> tuple[float, float]:
    """(loss, accuracy) of ``params`` on inputs ``u`` with labels ``y``."""
    from ..nn._meanfield import jnp

    out = np.asarray(model.batched()(params, jnp.asarray(u)))[:, 0]
    return float(_bce(jnp.asarray(out), jnp.asarray(y))), float(np.mean((out > 0) == (y > 0.5)))


@functools.lru_cache(maxsize=64)
def _loss(model, method: str, alpha: float):
    """Mean BCE of the fine-tuned parameters ``params_of(t, base)`` on the batch ``idx`` of
    ``(U, Y)``: one function object per (model, method), so the compiled step is reused."""
    from ..nn import merge_lora

    f = model.batched()

    def params_of(t, base):
        if method in _TARGETS:
            return merge_lora(base, t, alpha)
        if method == "sparse":
            return dict(base, v=base["v"] + t["v"])
        return t  # full fine-tuning and pre-training: every parameter

    def loss(t, idx, base, U, Y):
        return _bce(f(params_of(t, base), U[idx])[:, 0], Y[idx])

    loss.params_of = params_of
    return loss


def _fit(model, method: str, p: dict, trainable, base, u, y, *, steps, lr, seed, mask=None):
    """Adam on the mean BCE (:func:`_loss`) over seeded mini-batches of ``(u, y)``."""
    from ..nn import train
    from ..nn._meanfield import jnp

    B = min(int(p["batch"]), len(u))

    def batches(i):
        return jnp.asarray(np.random.default_rng([seed, i]).choice(len(u), B, replace=False))

    loss = _loss(model, method, float(p["alpha"]))
    low = _in_train_dtype(p)
    out, losses = train(loss, low(trainable), batches, steps=int(steps), lr=float(lr),
                        mask=None if mask is None else low(mask),
                        args=(low(base), low(u), low(y)))  # fmt: skip
    return _as_float64(out), losses


def _in_train_dtype(p: dict):
    """Cast a pytree of arrays to ``train_dtype`` (float32: Adam steps cost about a third of
    float64's CPU time, scripts/bench_real_models.py; evaluation stays in float64)."""
    from ..nn._meanfield import jax

    dt = np.dtype(p["train_dtype"])
    return lambda t: jax.tree_util.tree_map(lambda a: np.asarray(a, dtype=dt), t)


def _as_float64(t):
    from ..nn._meanfield import jax

    return jax.tree_util.tree_map(lambda a: np.asarray(a, dtype=np.float64), t)


def base_folder(out, d: int, L: int, tied: bool = True) -> Path:
    """Where the base model of dimension ``d`` with ``L`` layers is saved (HF format)."""
    return Path(out) / "models" / f"base_d{d}_L{L}{'' if tied else '_per_layer'}"


def adapter_folder(out, d: int, method: str, seed: int) -> Path:
    """Where a fine-tuned model's adapter is saved (PEFT format)."""
    return Path(out) / "models" / f"adapter_d{d}_{method}_s{seed}"


_EXTRAS = ("embed", "embed_bias", "r1", "r1b", "r2", "r2b")


def _save_base(folder: Path, model, params: dict) -> None:
    from ..nn import save_hf_model

    w = 0 if model.tied else None
    layers = [{m: params[m][w if w is not None else ell] for m in "qkvo"}
              for ell in range(model.layers)]  # fmt: skip
    save_hf_model(folder, layers, heads=model.heads, head_dim=model.d,
                  extra={f"solver.{k}": params[k] for k in _EXTRAS})  # fmt: skip


def load_base(folder, model) -> dict:
    """Parameters of a saved base model (``q, k, v, o`` stacked per layer, one when tied)."""
    from safetensors.numpy import load_file

    t = load_file(str(Path(folder) / "model.safetensors"))
    n = 1 if model.tied else model.layers
    out = {m: np.stack([t[f"model.layers.{ell}.self_attn.{m}_proj.weight"] for ell in range(n)])
           for m in "qkvo"}  # fmt: skip
    out.update({k: t[f"solver.{k}"] for k in _EXTRAS})
    return out


# ---- pre-training --------------------------------------------------------------------------
def _pretrain(p: dict, d: int, L: int, tied: bool, step: float, steps: int, seed: int = 0):
    model = _model(p, d, L, tied, step)
    u, y = _data(p, "old", p["pretrain_count"], seed)
    p0 = model.init(seed=seed)
    t0 = time.perf_counter()
    trained, _ = _fit(model, "full", p, p0, {}, u, y, steps=steps, lr=p["lr"], seed=seed)
    return model, p0, trained, time.perf_counter() - t0


def pretrain_case(p: dict, case: dict, run) -> dict:
    """Pre-train one base model on the old task and save it (HF format): loss before and
    after on held-out inputs, accuracy, training time."""
    _use_compile_cache(run.out)
    d, L, tied = int(case["d"]), int(case["L"]), bool(case["tied"])
    step = p["step"] if tied else p["depth"] / L
    steps = p["pretrain_steps"] if tied else p["norm_steps"]
    model, p0, trained, secs = _pretrain(p, d, L, tied, step, steps)
    _save_base(base_folder(run.out, d, L, tied), model, trained)
    u, y = _data(p, "old", p["eval_count"], 777)
    before = _evaluate(model, p0, u, y)[0]
    loss, acc = _evaluate(model, trained, u, y)
    return {"loss_before": before, "loss": loss, "acc": acc, "train_s": secs}


def _pretrain_cases(p: dict) -> list[dict]:
    tied = [{"d": d, "L": p["layers"], "tied": 1} for d in p["dims"]]
    return tied + [{"d": p["norm_d"], "L": L, "tied": 0} for L in p["norm_layers"]]


# ---- fine-tuning ---------------------------------------------------------------------------
def _method_setup(p: dict, model, base: dict, method: str, seed: int, u, y):
    """``(trainable, mask)`` of a fine-tuning method (see :func:`_loss` for how the trainable
    pytree enters the parameters)."""
    from ..nn import lora_init

    if method in _TARGETS:
        r = 1 if method == "lora1_few" else int(p["rank"])
        return lora_init(base, _TARGETS[method], r, seed=seed), None
    if method == "full":
        return dict(base), None
    # sparse: the rows of W_v with the largest gradient norm of the new task's loss
    from ..nn._meanfield import jnp

    g = _value_grad(model)(jnp.asarray(base["v"]), base, jnp.asarray(u), jnp.asarray(y))
    norms = np.linalg.norm(np.asarray(g), axis=-1).ravel()
    mask = np.zeros(norms.size)
    mask[np.argsort(norms)[::-1][: int(p["sparse_rows"])]] = 1.0
    mask = np.broadcast_to(mask.reshape(base["v"].shape[:2])[..., None], base["v"].shape).copy()
    return {"v": np.zeros_like(base["v"])}, {"v": mask}


@functools.lru_cache(maxsize=16)
def _value_grad(model):
    """Compiled gradient of the mean BCE with respect to ``W_v`` (one per model)."""
    from ..nn._meanfield import jax

    f = model.batched()
    return jax.jit(jax.grad(lambda v, base, U, Y: _bce(f(dict(base, v=v), U)[:, 0], Y)))


def _save_adapter(folder: Path, model, base: dict, ft: dict, trainable, method, p) -> None:
    """PEFT adapter of the fine-tuned attention weights; ``full``/``sparse``: the exact change
    ``ΔW`` as ``B = ΔW``, ``A = I`` (rank ``d``, ``lora_alpha = r``: scale 1)."""
    from safetensors.numpy import save_file

    from ..nn import save_peft_adapter

    L = model.layers
    if method in _TARGETS:
        r = int(trainable[next(iter(trainable))]["A"].shape[-2])
        lora = {ell: {m: (ab["A"][0], ab["B"][0]) for m, ab in trainable.items()}
                for ell in range(L)}  # fmt: skip
        save_peft_adapter(folder, lora, r=r, alpha=p["alpha"])
        return
    d = model.d
    mods = "qkvo" if method == "full" else "v"
    lora = {ell: {m: (np.eye(d if m != "o" else model.heads * d), ft[m][0] - base[m][0])
                  for m in mods} for ell in range(L)}  # fmt: skip
    # o_proj's input is H d wide: A = I_{Hd}; the others' input is d wide (rank d)
    r = d
    if method == "full":  # one rank for the adapter: pad q, k, v's factors to H d
        r = model.heads * d
        for per in lora.values():
            for m in "qkv":
                A_, B_ = per[m]
                per[m] = (np.vstack([A_, np.zeros((r - d, d))]),
                          np.hstack([B_, np.zeros((B_.shape[0], r - d))]))  # fmt: skip
    save_peft_adapter(folder, lora, r=r, alpha=float(r))
    if method == "full":
        save_file({f"solver.{k}": np.ascontiguousarray(ft[k]) for k in _EXTRAS},
                  str(folder / "solver_extras.safetensors"))  # fmt: skip


def head_spectra(A: np.ndarray, V: np.ndarray) -> dict:
    """Eigenvalues of ``V`` and ``A`` (sorted by decreasing real part), the gap
    ``Re λ1 − Re λ2`` of ``V`` and the numerical rank of ``A`` (singular values above
    ``1e-8 σ_max``)."""
    ev = np.linalg.eigvals(V)
    ea = np.linalg.eigvals(A)
    ev, ea = ev[np.argsort(-ev.real)], ea[np.argsort(-ea.real)]
    s = np.linalg.svd(A, compute_uv=False)
    return {"V_eig": ev, "A_eig": ea, "V_gap": float(ev[0].real - ev[1].real),
            "A_rank": int(np.sum(s > 1e-8 * s[0]))}  # fmt: skip


def _jsonable_spectra(sp: dict) -> dict:
    """:func:`head_spectra` as JSON: eigenvalues as ``[re, im]`` pairs."""
    return {k: ([[float(z.real), float(z.imag)] for z in v] if k.endswith("_eig") else v)
            for k, v in sp.items()}  # fmt: skip


def token_scalar_products(xs: np.ndarray) -> np.ndarray:
    """Average ``<x_i, x_j>`` over pairs ``i != j`` per layer (Fig 16), ``xs`` (B, L+1, n, d):
    ``(|Σ_i x_i|² − n) / (n (n − 1))`` averaged over the batch."""
    n = xs.shape[-2]
    s = np.sum(xs, axis=-2)
    return ((np.sum(s * s, axis=-1) - n) / (n * (n - 1))).mean(axis=0)


def _prop33_ratio(V: np.ndarray, dV: np.ndarray) -> float:
    """``(2‖b‖ + ‖E‖) / (gap + a)`` with ``u_1`` the top eigenvector of the symmetric part of
    ``V`` (Prop 3.3's quantities; its assumption ``A = V ⪰ 0`` does not hold for trained
    weights, so this is a descriptor, not a guarantee); ``inf`` when ``gap + a <= 0``."""
    w, U = np.linalg.eigh(0.5 * (V + V.T))
    u1 = U[:, -1]
    P = np.eye(len(V)) - np.outer(u1, u1)
    a, b = u1 @ dV @ u1, np.linalg.norm(P @ dV @ u1)
    E = np.linalg.norm(P @ dV @ P, 2)
    den = w[-1] - w[-2] + a
    return float((2 * b + E) / den) if den > 0 else math.inf


def finetune_case(p: dict, case: dict, run) -> dict:
    """Fine-tune the base model of dimension ``d`` on the new task by ``method`` (seeded),
    measure the old task, the flows' distance and the Lipschitz link (module docstring)."""
    import ot

    from ..nn import read_head
    from ..nn._meanfield import jnp

    _use_compile_cache(run.out)
    d, method, seed = int(case["d"]), str(case["method"]), int(case["seed"])
    model = _model(p, d, p["layers"])
    bf = base_folder(run.out, d, p["layers"])
    base = memo(("real-models-base", str(bf)), lambda: load_base(bf, model))
    few = method == "lora1_few"
    u, y = _data(p, "new", p["few_count"] if few else p["finetune_count"], 1000 + seed)
    trainable, mask = _method_setup(p, model, base, method, seed, u, y)
    t0 = time.perf_counter()
    trained, _ = _fit(model, method, p, trainable, base, u, y, steps=p["finetune_steps"],
                      lr=p["ft_lr"], seed=2000 + seed, mask=mask)  # fmt: skip
    secs = time.perf_counter() - t0
    params_of = _loss(model, method, float(p["alpha"])).params_of
    ft = {k: np.asarray(v) for k, v in params_of(trained, base).items()}
    af = adapter_folder(run.out, d, method, seed)
    _save_adapter(af, model, base, ft, trained, method, p)

    uo, yo = _data(p, "old", p["eval_count"], 777)
    un, yn = _data(p, "new", p["eval_count"], 778)
    ob, oab = _evaluate(model, base, uo, yo)
    nab = _evaluate(model, base, un, yn)[1]
    ol, oa = _evaluate(model, ft, uo, yo)
    nl, na = _evaluate(model, ft, un, yn)

    # dA, dV read back from the saved folders (the adapter command's reader), per head;
    # spectra of the base and fine-tuned heads beside the adapter (spectra.json)
    dVn, dAn, err, gap, ratio = 0.0, 0.0, 0.0, -math.inf, 0.0
    spectra = []
    for h in range(model.heads):
        hm = read_head(bf, af, 0, h)
        A_ft, V_ft = (M[h] for M in model.attention(ft, 0))
        err = max(err, float(np.abs(hm.A + hm.dA - A_ft).max()),
                  float(np.abs(hm.V + hm.dV - V_ft).max()))  # fmt: skip
        dVn, dAn = max(dVn, np.linalg.norm(hm.dV, 2)), max(dAn, np.linalg.norm(hm.dA, 2))
        sb, sf = head_spectra(hm.A, hm.V), head_spectra(hm.A + hm.dA, hm.V + hm.dV)
        gap = max(gap, sb["V_gap"])
        ratio = max(ratio, _prop33_ratio(hm.V, hm.dV))
        spectra.append({"layer": 0, "head": h, "base": _jsonable_spectra(sb),
                        "finetuned": _jsonable_spectra(sf)})  # fmt: skip
    atomic_write_text(af / "spectra.json", json.dumps(spectra, indent=1) + "\n")

    flows = model.batched("flow_all")
    xb = np.asarray(flows(base, jnp.asarray(uo)))
    xf = np.asarray(flows(ft, jnp.asarray(uo)))
    n = xb.shape[-2]
    wts = np.full(n, 1.0 / n)
    lip = model.readout_lipschitz(base)
    rb = np.asarray(model.readout(base, jnp.asarray(xb[:, -1])))[:, 0]
    rf = np.asarray(model.readout(base, jnp.asarray(xf[:, -1])))[:, 0]
    w2s, w1s, ratios, viol, active, gaps = [], [], [], 0, 0, []
    for i in range(len(xb)):
        a, b = xb[i, -1], xf[i, -1]
        w2s.append(w2(a, b))
        C = ot.dist(a, b, metric="euclidean")
        plan = ot.emd(wts, wts, C, numItermax=10**6)
        W1 = float(np.sum(plan * C))
        W2c = math.sqrt(float(ot.emd2(wts, wts, C**2, numItermax=10**6)))
        w1s.append(W1)
        g = abs(rf[i] - rb[i])
        gaps.append(g)
        if W1 > 1e-12:
            active += 1
            ratios.append(g / (lip * W1))
            # exact OT to ~1e-12: a violation is beyond round-off (relative 1e-9)
            viol += int(g > lip * W1 * (1 + 1e-9) or W1 > W2c * (1 + 1e-9))
    return {
        "old_loss_base": ob, "old_acc_base": oab, "new_acc_base": nab, "old_loss": ol,
        "old_acc": oa, "new_loss": nl, "new_acc": na, "dV_norm": float(dVn),
        "dA_norm": float(dAn), "w2": float(np.mean(w2s)), "w2_sd": float(np.std(w2s)),
        "w1_chordal": float(np.mean(w1s)), "lip": lip, "lip_gap_max": float(max(gaps)),
        "lip_ratio_max": float(max(ratios)) if ratios else 0.0, "lip_violations": viol,
        "lip_active": active, "readback_err": err, "v_gap": gap, "prop33_ratio": ratio,
        "sp_base": ";".join(f"{v:.6g}" for v in token_scalar_products(xb)),
        "sp_ft": ";".join(f"{v:.6g}" for v in token_scalar_products(xf)), "train_s": secs,
    }  # fmt: skip


def _finetune_cases(p: dict) -> list[dict]:
    """Seed-major within each ``d``: ranks taking neighbouring cases compile different
    (model, method) steps, which the other rank then loads from the compilation cache."""
    return [{"d": d, "method": m, "seed": s} for d in p["dims"] for s in range(p["seeds"])
            for m in p["methods"]]  # fmt: skip


def _step_cost(d: int, L: int, batch: int) -> float:
    """Relative cost of one Adam step (measured: the work grows with ``d``, plus a fixed part
    about that of ``d = 4``), for dealing the costliest cases first."""
    return float(L * batch * (d + 4))


def _pretrain_cost(p: dict, case: dict) -> float:
    steps = p["pretrain_steps"] if case["tied"] else p["norm_steps"]
    return steps * _step_cost(case["d"], case["L"], p["batch"])


def _finetune_cost(p: dict, case: dict) -> float:
    few = case["method"] == "lora1_few"
    B = min(p["batch"], p["few_count"] if few else p["finetune_count"])
    return p["finetune_steps"] * _step_cost(case["d"], p["layers"], B)


def _use_compile_cache(out) -> None:
    """JAX's persistent compilation cache in ``out/jax_cache`` (every compiled step, however
    quick), shared by the ranks and by a resumed run; left alone when the user set one."""
    from ..nn._meanfield import jax

    if jax.config.jax_compilation_cache_dir is None:
        jax.config.update("jax_compilation_cache_dir", str(Path(out) / "jax_cache"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


# ---- the PDE on the trained heads ---------------------------------------------------------
def projected_normal_density(mean, cov):
    r"""The law of ``z / |z|`` for ``z ~ N(mean, cov)`` in ``R^d`` (``d = 2, 3``) as a density
    on ``S^{d-1}`` (surface measure): ``f(x) = ∫_0^∞ r^{d-1} φ(r x) dr``, ``φ`` the normal
    density; in closed form with ``a = xᵀ Σ⁻¹ x``, ``β = xᵀ Σ⁻¹ m / a``, ``G = √(2π/a)
    Φ(β √a)``: ``∫_0^∞ r e^{-a (r-β)²/2} dr = e^{-aβ²/2}/a + β G`` (d = 2) and
    ``∫_0^∞ r² e^{-a (r-β)²/2} dr = β e^{-aβ²/2}/a + (β² + 1/a) G`` (d = 3), times
    ``(2π)^{-d/2} |Σ|^{-1/2} e^{-(mᵀΣ⁻¹m − aβ²)/2}``. Returns ``f`` of ``x`` (N, d)."""
    from scipy.special import ndtr

    mean, cov = np.asarray(mean, dtype=float), np.asarray(cov, dtype=float)
    d = len(mean)
    if d not in (2, 3):
        raise ValueError(f"mean must have 2 or 3 entries (S^1, S^2), got {d}")
    if cov.shape != (d, d) or np.linalg.eigvalsh(0.5 * (cov + cov.T))[0] <= 0:
        raise ValueError(f"cov must be a positive definite {d} x {d} matrix")
    P = np.linalg.inv(cov)
    c0 = float(mean @ P @ mean)
    scale = (2 * math.pi) ** (-d / 2) / math.sqrt(np.linalg.det(cov))

    def f(x):
        x = np.asarray(x, dtype=float)
        a = np.einsum("ij,jk,ik->i", x, P, x)
        beta = x @ (P @ mean) / a
        g = np.sqrt(2 * math.pi / a) * ndtr(beta * np.sqrt(a))
        e = np.exp(-0.5 * c0)  # e^{-(c0 - aβ²)/2} e^{-aβ²/2}
        if d == 2:
            return scale * (e / a + np.exp(-0.5 * (c0 - a * beta**2)) * beta * g)
        return scale * (e * beta / a + np.exp(-0.5 * (c0 - a * beta**2)) * (beta**2 + 1 / a) * g)

    return f


def _pde_law(seed: int):
    """One input's token law ``u = c m + s ξ`` (:func:`~solver.nn.make_task`): ``(m, c, s)``."""
    rng = np.random.default_rng([int(seed), 24])
    m = rng.normal(size=3)
    return m / np.linalg.norm(m), float(rng.uniform(0.5, 1.5)), float(rng.uniform(0.5, 1.5))


def _law_tokens(law, n: int, seed: int) -> np.ndarray:
    m, c, s = law
    return c * m + s * np.random.default_rng([int(seed), 25]).normal(size=(int(n), 3))


def _pde_mesh(p: dict, comm, d: int):
    from ..mesh import sphere_mesh

    if d == 2:
        return sphere_mesh(comm, 1, cells=int(p["pde_cells"]))
    return sphere_mesh(comm, 2, refinement=int(p["pde_refinement"]))


def _cell_w2(res, d: int, a: np.ndarray, b: np.ndarray) -> float:
    """Geodesic ``W2`` between two DG0 densities given as cell masses: S^1 with each cell's
    mass spread over its arc (:func:`w2_cells_s1`); S^2 with centroid atoms."""
    from ._stats import w2_cells_s1

    if d == 2:
        return w2_cells_s1(res.centroids, a, b, 32)
    c = res.centroids / np.linalg.norm(res.centroids, axis=1, keepdims=True)
    return w2(c, c, a / a.sum(), b / b.sum())


def _cells_points_w2(res, k: int, x: np.ndarray) -> float:
    """Geodesic ``W2`` (exact) between the PDE density saved at index ``k`` (centroid atoms)
    and the equally weighted tokens ``x``."""
    c = res.centroids / np.linalg.norm(res.centroids, axis=1, keepdims=True)
    a = np.clip(res.density[k] * res.areas, 0, None)
    return w2(c, x, a / a.sum(), np.full(len(x), 1.0 / len(x)))


def pde_case(p: dict, case: dict, run) -> dict | None:
    """The PDE on one fine-tuned model (``d = 2, 3``; every head, :class:`MultiHeadModel`):
    ``A_a``, ``V_a``, ``ΔA_a``, ``ΔV_a`` read back from the saved folders, the base and the
    fine-tuned flow from the token law of one input (``u = c m + s ξ`` embedded: a projected
    normal density, :func:`projected_normal_density`) to ``T = L h``, ``W2`` of the final
    densities; beside it the particles (the transformer's own RK4 steps of size ``h``) from
    tokens of the same law: ``n`` tokens (mean over ``pde_draws`` draws) and
    ``pde_particles``."""
    from ..model import MultiHeadModel, TiedLoRA
    from ..nn import read_head
    from ..particles import simulate_particles
    from ..run import evolve

    d, method, seed = int(case["d"]), str(case["method"]), int(case["seed"])
    model = _model(p, d, p["layers"])
    bf, af = base_folder(run.out, d, p["layers"]), adapter_folder(run.out, d, method, seed)
    hm = [read_head(bf, af, 0, h) for h in range(model.heads)]
    base = MultiHeadModel.from_AV([m.A for m in hm], [m.V for m in hm])
    pert = base.perturbed([TiedLoRA(m.dA, m.dV) for m in hm])
    params = load_base(bf, model)
    E, e = params["embed"], params["embed_bias"]
    law = _pde_law(p["pde_law_seed"])
    m, c, s = law
    dens = projected_normal_density(c * E @ m + e, s * s * E @ E.T)
    T = model.depth
    t0 = time.perf_counter()
    res = evolve(_pde_mesh(p, run.comm, d), base, dens, T, perturbed=pert, w2=False, vtx=False,
                 progress=False, cluster_delta=None)  # fmt: skip
    secs = time.perf_counter() - t0
    if run.comm.rank != 0:
        return None
    w2_pde = _cell_w2(res, d, res.density[-1] * res.areas, res.density_perturbed[-1] * res.areas)

    def particles(n, draw):
        z = _law_tokens(law, n, draw) @ E.T + e
        x0 = z / np.linalg.norm(z, axis=1, keepdims=True)
        xb, xf = (simulate_particles(mm, x0, T, dt=model.step).positions[-1] for mm in (base, pert))
        return w2(xb, xf)

    small = [particles(p["n"], k) for k in range(int(p["pde_draws"]))]
    return {"w2_pde": w2_pde, "w2_particles_n": float(np.mean(small)),
            "w2_particles_n_sd": float(np.std(small)),
            "w2_particles_big": particles(p["pde_particles"], 999), "cells": len(res.areas),
            "steps": len(res.step_times) - 1, "pde_s": secs}  # fmt: skip


def _pde_cases(p: dict) -> list[dict]:
    return [{"d": d, "method": m, "seed": s} for d in p["dims"] if d <= 3
            for m in p["methods"] for s in range(p["pde_seeds"])]  # fmt: skip


# ---- norm transition -----------------------------------------------------------------------
def norm_case(p: dict, case: dict, run) -> dict:
    """Per-layer base with ``L`` layers of length ``depth / L``; i.i.d. ``ΔV^ℓ = η u vᵀ``
    (``u, v ~ N(0, I/d)``, :class:`~solver.model.RandomLoRA`'s draws) added to head 0 of every
    layer (``W_v^0 += (W_o^0)^+ ΔV^ℓ``); the old task's loss and accuracy."""
    from ..model import RandomLoRA

    _use_compile_cache(run.out)
    d, L, eta, seed = int(p["norm_d"]), int(case["L"]), float(case["eta"]), int(case["seed"])
    model = _model(p, d, L, tied=False, step=p["depth"] / L)
    bf = base_folder(run.out, d, L, tied=False)
    base = memo(("real-models-base", str(bf)), lambda: load_base(bf, model))
    h = model.step
    rl = RandomLoRA(d=d, eta=eta, h=h, seed=seed)
    v = base["v"].copy()
    norm = 0.0
    for ell in range(L):
        dV = rl.at((ell + 0.5) * h)[1]
        norm = max(norm, np.linalg.norm(dV, 2))
        v[ell, :d] += np.linalg.lstsq(base["o"][ell][:, :d], dV, rcond=None)[0]
    u, y = _data(p, "old", p["eval_count"], 777)
    loss, acc = _evaluate(model, dict(base, v=v), u, y)
    return {"old_loss": loss, "old_acc": acc, "dV_norm": float(norm)}


def _norm_cases(p: dict) -> list[dict]:
    return [{"L": L, "eta": e, "seed": s} for L in p["norm_layers"] for e in p["norm_etas"]
            for s in range(p["norm_seeds"])]  # fmt: skip


# ---- standard transformer ------------------------------------------------------------------
def _train_standard(p: dict, st, seed: int):
    """Train ``st`` on the old task (``std_steps`` Adam steps): ``(params, held-out loss,
    accuracy)``."""
    from ..nn import train
    from ..nn._meanfield import jnp

    u, y = _data(p, "old", p["pretrain_count"], seed)
    f = st.batched()
    low = _in_train_dtype(p)
    U, Y = jnp.asarray(low(u)), jnp.asarray(low(y))
    B = min(int(p["batch"]), len(u))

    def loss(t, idx):
        return _bce(f(t, U[idx])[:, 0], Y[idx])

    def batches(i):
        return jnp.asarray(np.random.default_rng([seed, i]).choice(len(u), B, replace=False))

    params, _ = train(loss, low(st.init(seed=seed)), batches, steps=int(p["std_steps"]),
                      lr=p["lr"])  # fmt: skip
    params = _as_float64(params)
    ue, ye = _data(p, "old", p["eval_count"], 777)
    out = np.asarray(f(params, jnp.asarray(ue)))[:, 0]
    loss = float(_bce(jnp.asarray(out), jnp.asarray(ye)))
    return params, loss, float(np.mean((out > 0) == (ye > 0.5)))


def standard_flow_model(st, params):
    """The mean-field flow of a :class:`~solver.nn.StandardTransformer`'s attention as a
    :class:`~solver.model.MultiHeadModel`: on ``[ℓ, ℓ + 1)`` head ``a`` has the matrices
    ``A_a^ℓ``, ``V_a^ℓ`` of :func:`~solver.nn.mean_field_matrices` (one unit of time per
    layer, as :func:`~solver.nn.hidden_state_gap` steps), jumps at ``1, ..., L − 1``."""
    from ..model import Model, MultiHeadModel, ScheduledLoRA
    from ..nn import mean_field_matrices

    L, d = st.layers, st.d
    AV = [mean_field_matrices(st, params, ell) for ell in range(L)]
    heads = []
    for a in range(st.heads):

        def fn(t, a=a):
            ell = min(max(int(math.floor(t)), 0), L - 1)
            return AV[ell][0][a] - AV[0][0][a], AV[ell][1][a] - AV[0][1][a]

        heads.append(Model.from_AV(AV[0][0][a], AV[0][1][a],
                                   ScheduledLoRA(d, fn, jumps=tuple(range(1, L)))))  # fmt: skip
    return MultiHeadModel(heads)


def standard_pde_case(p: dict, case: dict, run) -> list[dict] | None:
    """A standard transformer of width ``std_pde_d`` (<= 3: the PDE's sphere) with
    ``std_pde_heads`` heads, trained on the old task; from the token law of one input
    (embedded, normalised: :func:`projected_normal_density`), per layer ``ℓ``: ``W2`` between
    the PDE of its attention's mean-field flow (:func:`standard_flow_model`) and the model's
    own normalised hidden states of ``std_pde_n`` tokens of that law (``w2_pde_hidden``), the
    particles of that flow from the same tokens (RK4, ``dt = std_pde_dt``;
    ``w2_pde_particles``), and particles against hidden states (``w2_particles_hidden``)."""
    from ..nn import StandardTransformer
    from ..nn._meanfield import jnp
    from ..particles import simulate_particles
    from ..run import evolve

    _use_compile_cache(run.out)
    d, seed = int(p["std_pde_d"]), int(case["seed"])
    st = StandardTransformer(d=d, layers=int(p["std_layers"]), heads=int(p["std_pde_heads"]),
                             mlp=2 * d)  # fmt: skip
    params, loss, acc = _train_standard(p, st, seed)
    flow = standard_flow_model(st, params)
    E = np.asarray(params["embed"])
    law = _pde_law(p["pde_law_seed"])
    m, c, s = law
    L = st.layers
    t0 = time.perf_counter()
    dens = projected_normal_density(c * E @ m, s * s * E @ E.T)
    res = evolve(_pde_mesh(p, run.comm, d), flow, dens, float(L), save_every=1.0, w2=False,
                 vtx=False, progress=False, cluster_delta=None)  # fmt: skip
    secs = time.perf_counter() - t0
    if run.comm.rank != 0:
        return None
    u = _law_tokens(law, p["std_pde_n"], 998)
    hs = np.asarray(st.hidden_states(params, jnp.asarray(u)))
    xs = simulate_particles(flow, hs[0], float(L), dt=float(p["std_pde_dt"]),
                            save_every=1.0).positions  # fmt: skip
    return [{"layer": ell, "w2_pde_hidden": _cells_points_w2(res, ell, hs[ell]),
             "w2_pde_particles": _cells_points_w2(res, ell, xs[ell]),
             "w2_particles_hidden": w2(xs[ell], hs[ell]), "loss": loss, "acc": acc,
             "pde_s": secs} for ell in range(L + 1)]  # fmt: skip


def standard_case(p: dict, case: dict) -> list[dict]:
    """Train a standard transformer on the old task; ``W2`` per layer between its normalised
    hidden states and the mean-field flow of its attention (mean over ``std_inputs``)."""
    from ..nn import StandardTransformer, hidden_state_gap

    seed = int(case["seed"])
    st = StandardTransformer(d=int(p["std_d"]), layers=int(p["std_layers"]),
                             heads=int(p["std_heads"]), mlp=2 * int(p["std_d"]))  # fmt: skip
    params, ev_loss, acc = _train_standard(p, st, seed)
    ue, _ = _data(p, "old", p["eval_count"], 777)
    gaps = np.mean([hidden_state_gap(st, params, ue[i]) for i in range(int(p["std_inputs"]))],
                   axis=0)  # fmt: skip
    return [{"layer": ell, "w2": float(g), "loss": ev_loss, "acc": acc}
            for ell, g in enumerate(gaps)]  # fmt: skip


# ---- summary and figure --------------------------------------------------------------------
def _spearman(x, y) -> float:
    from scipy.stats import spearmanr

    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(spearmanr(x, y).statistic)


def _half_eta(rows: list[dict], L: int) -> float:
    """Smallest ``η`` (log-linear interpolation of the seed-mean loss) where the old loss
    passes half-way from the unperturbed loss to ``log 2`` (chance); ``nan`` if never."""
    sel = sorted({r["eta"] for r in rows if r["L"] == L})
    loss = [np.mean([r["old_loss"] for r in rows if r["L"] == L and r["eta"] == e]) for e in sel]
    mid = 0.5 * (min(loss) + math.log(2))
    for i in range(1, len(sel)):
        if loss[i - 1] < mid <= loss[i]:
            t = (mid - loss[i - 1]) / (loss[i] - loss[i - 1])
            return float(math.exp(math.log(sel[i - 1]) + t * math.log(sel[i] / sel[i - 1])))
    return math.nan


def _summary(p: dict, rows: dict) -> dict:
    pre, fine, norm, std = (rows[k] for k in ("pretrain", "finetune", "norm", "standard"))
    rep = [f"Trained transformers and the mean-field flow (n = {p['n']} tokens, L = "
           f"{p['layers']} layers of step {p['step']}, {p['heads']} heads, tied "
           "weights)"]  # fmt: skip
    for r in pre:
        kind = "tied" if r["tied"] else "per-layer"
        rep.append(f"  pre-trained d = {r['d']}, L = {r['L']} ({kind}): old-task loss "
                   f"{r['loss_before']:.3f} -> {r['loss']:.3f}, accuracy {r['acc']:.3f} "
                   f"({r['train_s']:.1f} s)")  # fmt: skip
    corr = {}
    rep.append("  fine-tuning (means over seeds): method, d: old loss base -> after, old acc "
               "after, new acc base -> after, ||dV||, ||dA||, W2(mu_T, nu_T)")  # fmt: skip
    for d in p["dims"]:
        fd = [r for r in fine if r["d"] == d]
        for m in p["methods"]:
            fm = [r for r in fd if r["method"] == m]
            if not fm:
                continue

            def mean(k, fm=fm):
                return float(np.mean([r[k] for r in fm]))

            rep.append(f"    {m:<9} d = {d}: {mean('old_loss_base'):.3f} -> {mean('old_loss'):.3f}"
                       f", {mean('old_acc'):.3f}, {mean('new_acc_base'):.3f} -> "
                       f"{mean('new_acc'):.3f}, {mean('dV_norm'):.3f}, {mean('dA_norm'):.3f}, "
                       f"{mean('w2'):.4f}")  # fmt: skip
        seeds = sorted({r["seed"] for r in fd})

        def stat(idx, fd=fd, seeds=seeds):
            sel = [r for i in idx for r in fd if r["seed"] == seeds[i]]
            return _spearman([r["w2"] for r in sel],
                             [r["old_loss"] - r["old_loss_base"] for r in sel])  # fmt: skip

        est, lo, hi = bootstrap(stat, len(seeds), n_boot=int(p["n_boot"]), level=0.9)
        corr[str(d)] = {"spearman": est, "lo": lo, "hi": hi, "items": len(fd)}
        rep.append(f"  d = {d}: Spearman(W2, old-loss increase) = {est:.3f}, 90% bootstrap "
                   f"over {len(seeds)} seeds [{lo:.3f}, {hi:.3f}] ({len(fd)} items)")  # fmt: skip
    viol = int(sum(r["lip_violations"] for r in fine))
    active = int(sum(r["lip_active"] for r in fine))
    tight = max((r["lip_ratio_max"] for r in fine), default=math.nan)
    rep.append(f"  Lipschitz readout: |r(mu_T) - r(nu_T)| <= Lip W1 <= Lip W2 violated in "
               f"{viol} of {active} active inputs; largest |r(mu)-r(nu)| / (Lip W1) = "
               f"{tight:.3g}")  # fmt: skip
    half = {str(L): _half_eta(norm, L) for L in p["norm_layers"]}
    Ls = np.array([int(L) for L in half if np.isfinite(half[L])])
    slope = math.nan
    if len(Ls) >= 2:
        slope = float(np.polyfit(np.log(Ls), np.log([half[str(L)] for L in Ls]), 1)[0])
    rep.append(f"  norm transition (d = {p['norm_d']}, depth {p['depth']}): eta at half "
               f"forgetting per L {half}; slope of log eta_half vs log L = {slope:.3f} "
               "(theory: 0.5)")  # fmt: skip
    layers = sorted({r["layer"] for r in std})
    w2l = [float(np.mean([r["w2"] for r in std if r["layer"] == ell])) for ell in layers]
    rep.append(f"  standard transformer (d = {p['std_d']}, {p['std_heads']} heads): W2 per "
               f"layer to the mean-field flow of its attention "
               f"{[round(v, 4) for v in w2l]}")  # fmt: skip
    pde = _pde_summary(p, rows.get("pde", []), fine, rep)
    sp = rows.get("standard_pde", [])
    std_pde = {k: [float(r[k]) for r in sorted(sp, key=lambda r: r["layer"])]
               for k in ("w2_pde_hidden", "w2_pde_particles", "w2_particles_hidden")}  # fmt: skip
    if sp:
        rep.append(f"  standard transformer (d = {p['std_pde_d']}, {p['std_pde_heads']} heads, "
                   f"{p['std_pde_n']} tokens of one input's law), per layer: W2(PDE, hidden "
                   f"states) {[round(v, 4) for v in std_pde['w2_pde_hidden']]}; W2(PDE, "
                   f"particles of the same flow) "
                   f"{[round(v, 4) for v in std_pde['w2_pde_particles']]}; W2(particles, "
                   "hidden states) "
                   f"{[round(v, 4) for v in std_pde['w2_particles_hidden']]}")  # fmt: skip
    return {"report": rep, "spearman": corr, "lipschitz": {"violations": viol, "active": active,
            "max_ratio": tight}, "norm_half_eta": half, "norm_slope": slope,
            "standard_w2_per_layer": w2l, "pde": pde, "standard_pde": std_pde}  # fmt: skip


def _pde_summary(p: dict, pde: list[dict], fine: list[dict], rep: list[str]) -> dict:
    """Per ``d``: the PDE's ``W2`` beside the particles' per method (means over the PDE
    seeds), the Spearman correlation of the PDE's ``W2`` with the measured forgetting of the
    same items, and the median ratio PDE / particles at ``pde_particles`` tokens."""
    out = {}
    key = {(r["d"], r["method"], r["seed"]): r for r in fine}
    for d in sorted({r["d"] for r in pde}):
        rd = [r for r in pde if r["d"] == d and (r["d"], r["method"], r["seed"]) in key]
        if not rd:
            continue
        forget = [key[(r["d"], r["method"], r["seed"])]["old_loss"]
                  - key[(r["d"], r["method"], r["seed"])]["old_loss_base"] for r in rd]  # fmt: skip
        ratio = [r["w2_pde"] / r["w2_particles_big"] for r in rd if r["w2_particles_big"] > 0]
        out[str(d)] = {
            "spearman_pde": _spearman([r["w2_pde"] for r in rd], forget),
            "spearman_particles_big": _spearman([r["w2_particles_big"] for r in rd], forget),
            "median_pde_over_particles": float(np.median(ratio)) if ratio else math.nan,
            "items": len(rd), "cells": int(rd[0]["cells"]),
            "per_method": {m: {k: float(np.mean([r[k] for r in rd if r["method"] == m]))
                               for k in ("w2_pde", "w2_particles_n", "w2_particles_big")}
                           for m in p["methods"] if any(r["method"] == m for r in rd)},
        }  # fmt: skip
        o = out[str(d)]
        rep.append(f"  PDE on the trained heads, d = {d} ({o['cells']} cells, all "
                   f"{p['heads']} heads): Spearman(W2_PDE, old-loss increase) = "
                   f"{o['spearman_pde']:.3f} over {len(rd)} items (particles at "
                   f"{p['pde_particles']} tokens: {o['spearman_particles_big']:.3f}); median "
                   f"W2_PDE / W2_particles = {o['median_pde_over_particles']:.3f}")  # fmt: skip
        for m, v in o["per_method"].items():
            rep.append(f"    {m:<9} W2: PDE {v['w2_pde']:.4f}, particles n = {p['n']} "
                       f"{v['w2_particles_n']:.4f}, n = {p['pde_particles']} "
                       f"{v['w2_particles_big']:.4f}")  # fmt: skip
    return out


def _by_method(ax, p: dict, rows: list[dict], x, y) -> None:
    """Scatter ``(x(r), y(r))`` of the fine-tuning rows, one colour per method."""
    for m in p["methods"]:
        sel = [r for r in rows if r["method"] == m]
        ax.scatter([x(r) for r in sel], [y(r) for r in sel], label=m, s=18)


def _plot(p: dict, rows: dict, summary: dict, out: Path) -> Path:
    fine, norm = rows["finetune"], rows["norm"]
    fig = figure(19, 8.5)
    ax = fig.subplots(2, 4).ravel()
    _by_method(ax[0], p, fine, lambda r: r["w2"], lambda r: r["old_loss"] - r["old_loss_base"])
    ax[0].set_xlabel("W2(μ_T, ν_T) (geodesic, particles)")
    ax[0].set_ylabel("old-task loss increase (measured forgetting)")
    ax[0].legend(fontsize=7)
    _by_method(ax[1], p, fine, lambda r: r["w2"], lambda r: r["lip_ratio_max"])
    ax[1].axhline(1.0, color="k", ls="--", lw=0.8, label="the bound (Kantorovich-Rubinstein)")
    ax[1].set_xlabel("W2(μ_T, ν_T) (geodesic, particles)")
    ax[1].set_ylabel("max over inputs |r(μ_T) − r(ν_T)| / (Lip · W1)")
    ax[1].set_ylim(0, 1.1)
    ax[1].legend(fontsize=7)
    for L in p["norm_layers"]:
        etas = sorted({r["eta"] for r in norm if r["L"] == L})
        loss = [np.mean([r["old_loss"] for r in norm if r["L"] == L and r["eta"] == e])
                for e in etas]  # fmt: skip
        ax[2].semilogx(np.array(etas) / math.sqrt(L), loss, "o-", label=f"L = {L}")
    ax[2].axhline(math.log(2), color="gray", lw=0.8, ls=":")
    ax[2].set_xlabel("η / √L")
    ax[2].set_ylabel("old-task loss")
    ax[2].legend(fontsize=7)
    for d in p["dims"]:
        sel = [r for r in fine if r["d"] == d]
        if sel:
            sb = np.mean([[float(v) for v in r["sp_base"].split(";")] for r in sel], axis=0)
            sf = np.mean([[float(v) for v in r["sp_ft"].split(";")] for r in sel], axis=0)
            (ln,) = ax[3].plot(sb, "o-", label=f"d = {d} base")
            ax[3].plot(sf, "s--", color=ln.get_color(), label=f"d = {d} fine-tuned")
    ax[3].set_xlabel("layer")
    ax[3].set_ylabel("mean <x_i, x_j> (Fig 16)")
    ax[3].legend(fontsize=7)
    _by_method(ax[4], p, fine, lambda r: r["dV_norm"], lambda r: r["old_acc"])
    ax[4].set_xlabel("max ‖ΔV‖ over heads (read back from the saved adapter)")
    ax[4].set_ylabel("old-task accuracy after fine-tuning")
    std = summary.get("standard_w2_per_layer", [])
    ax[5].plot(range(len(std)), std, "o-")
    ax[5].set_xlabel("layer")
    ax[5].set_ylabel("W2(hidden states, mean-field flow)")
    ax[5].set_title("standard transformer", fontsize=9)
    d, m = max(p["dims"]), p["methods"][0]
    spec = adapter_folder(out, d, m, 0) / "spectra.json"
    if spec.is_file():
        for sp in json.loads(spec.read_text()):
            for which, marker, k in (("base", "o", 6), ("finetuned", "x", 7)):
                ev = np.array(sp[which]["V_eig"])
                ax[k].scatter(ev[:, 0], ev[:, 1], marker=marker, s=24,
                              label=f"head {sp['head']}: gap {sp[which]['V_gap']:.3f}, "
                              f"rank A {sp[which]['A_rank']}")  # fmt: skip
        for k, which in ((6, "base"), (7, f"after {m}, seed 0")):
            ax[k].set_title(f"eigenvalues of V per head, d = {d}, {which} (Fig 1)", fontsize=9)
            ax[k].set_xlabel("Re λ")
            ax[k].set_ylabel("Im λ")
            ax[k].legend(fontsize=7)
    fig.suptitle(f"real_models: n = {p['n']}, L = {p['layers']}, d in {p['dims']}, "
                 f"{p['seeds']} seeds per method", fontsize=10)  # fmt: skip
    return save_png(fig, out / "real_models.png")


EXPERIMENT = Experiment(
    name="real_models",
    module=__name__,
    presets=PRESETS,
    check=_check,
    sweeps=(
        Sweep("pretrain.csv", _pretrain_cases, "pretrain_case", key=("d", "L", "tied"),
              columns=PRETRAIN_COLUMNS, desc="pre-training", needs_run=True,
              cost=_pretrain_cost),
        Sweep("finetune.csv", _finetune_cases, "finetune_case", key=("d", "method", "seed"),
              columns=FINETUNE_COLUMNS, desc="fine-tuning", needs_run=True,
              cost=_finetune_cost),
        Sweep("pde.csv", _pde_cases, "pde_case", key=("d", "method", "seed"),
              columns=PDE_COLUMNS, desc="PDE on the trained heads", needs_run=True),
        Sweep("norm.csv", _norm_cases, "norm_case", key=("L", "eta", "seed"),
              columns=NORM_COLUMNS, desc="norm transition", needs_run=True),
        Sweep("standard.csv", lambda p: [{"seed": 0}], "standard_case", key=("seed",),
              columns=("layer", *STANDARD_COLUMNS), desc="standard transformer"),
        Sweep("standard_pde.csv", lambda p: [{"seed": 0}], "standard_pde_case", key=("seed",),
              columns=("layer", *STANDARD_PDE_COLUMNS), desc="standard transformer (PDE)",
              needs_run=True),
    ),
    summarize=_summary,
    plot=_plot,
    needs_comm=True,  # the PDE sweeps build meshes on the run's communicator
)  # fmt: skip


def run_real_models(p: dict, out, *, comm=None, progress=True, budget=None):
    """Real models: the CSVs, ``models/``, ``real_models.png``; the summary (``None``:
    stopped by the budget)."""
    return run_experiment(EXPERIMENT, p, out, comm=comm, progress=progress, budget=budget)
