"""Seeded, reproducible training: Adam on any loss of a parameter pytree, gradients by JAX.

``train(loss, trainable, batches, steps=..., lr=...)`` minimises ``loss(trainable, batch)``
(``batch = batches(step)``, deterministic in ``step``) with Adam (beta1 = 0.9, beta2 = 0.999,
eps = 1e-8; the update is ``lr * m̂ / (sqrt(v̂) + eps)``) and returns the trained pytree and
the loss of every step. The gradient is ``jax.value_and_grad`` of ``loss``; the step is
compiled once (``jax.jit``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from ._backend import jax_modules

jax, jnp = jax_modules()

__all__ = ["train"]


def train(
    loss: Callable,
    trainable,
    batches: Callable[[int], object],
    *,
    steps: int,
    lr: float,
    mask=None,
    args: tuple = (),
) -> tuple[dict, np.ndarray]:
    """Adam on ``loss(trainable, batch, *args)``; ``mask`` (same pytree, 0/1 arrays) freezes
    the entries where it is 0 (sparse fine-tuning); ``args``: arrays the loss reads (data,
    frozen weights), passed to the compiled step rather than baked into it, so that a later
    call with the same ``loss`` object and shapes reuses the compiled step. Returns
    ``(trained pytree (NumPy), losses)``."""
    if not isinstance(steps, int | np.integer) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    if not (np.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be > 0, got {lr}")
    tu = jax.tree_util
    p = tu.tree_map(jnp.asarray, trainable)
    m = tu.tree_map(jnp.zeros_like, p)
    v = tu.tree_map(jnp.zeros_like, p)
    mk = None if mask is None else tu.tree_map(jnp.asarray, mask)
    args = tu.tree_map(jnp.asarray, args)
    step = _adam_step(loss, float(lr))
    losses = np.empty(steps)
    for i in range(steps):
        p, m, v, val = step(p, m, v, float(i + 1), batches(i), mk, args)
        losses[i] = float(val)
    return tu.tree_map(np.asarray, p), losses


@functools.lru_cache(maxsize=64)
def _adam_step(loss: Callable, lr: float):
    """One compiled Adam step of ``loss`` (beta1 = 0.9, beta2 = 0.999, eps = 1e-8)."""
    tu = jax.tree_util
    b1, b2, eps = 0.9, 0.999, 1e-8

    @jax.jit
    def step(p, m, v, k, batch, mk, args):
        val, g = jax.value_and_grad(loss)(p, batch, *args)
        if mk is not None:
            g = tu.tree_map(lambda a, b: a * b, g, mk)
        m = tu.tree_map(lambda a, b: b1 * a + (1 - b1) * b, m, g)
        v = tu.tree_map(lambda a, b: b2 * a + (1 - b2) * b * b, v, g)
        c1, c2 = 1 - b1**k, 1 - b2**k
        p = tu.tree_map(lambda a, mm, vv: a - lr * (mm / c1) / (jnp.sqrt(vv / c2) + eps), p, m, v)
        return p, m, v, val

    return step
