r"""A standard small transformer (pre-norm, multi-head attention, MLP blocks, per-layer
weights) on sets of tokens, and its hidden states against the mean-field flow.

Layer ``ℓ`` maps the residual stream ``h`` (n, d) by

.. math::

    h \leftarrow h + \mathrm{Attn}_\ell(N_1(h)),\qquad h \leftarrow h + \mathrm{MLP}_\ell(N_2(h)),

with RMS norms ``N(h) = \sqrt{d}\, g \odot h / |h|``, heads ``a = 1..H`` of dimension
``d_h = d / H``: ``Attn(z)_i = Σ_a W_o^a Σ_j softmax_j(<W_q^a z_i, W_k^a z_j> / sqrt(d_h))
W_v^a z_j`` and ``MLP(z) = W_2 relu(W_1 z + b_1) + b_2``. No positions: a set model. The
output is a linear readout of the mean of the final normalised tokens.

:func:`mean_field_matrices` gives each layer's attention as the sphere dynamics sees it: on
normalised tokens ``x = h / |h|`` the logits are ``x_j^T A_a x_i`` and the values ``V_a x_j``
with ``A_a = d G W_k^{aT} W_q^a G / sqrt(d_h)`` and ``V_a = sqrt(d) W_o^a W_v^a G``
(``G = diag(g_1)``); :func:`hidden_state_gap` runs the particle flow of those matrices (one
step of size 1 per layer, the integrator of :class:`~solver.nn.MeanFieldTransformer`) from
the normalised embedding and measures ``W_2`` (geodesic cost, exact) to the model's own
normalised hidden states, layer by layer.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from ._backend import jax_modules
from ._meanfield import MeanFieldTransformer, head_matrices

jax, jnp = jax_modules()

__all__ = ["StandardTransformer", "mean_field_matrices", "hidden_state_gap"]


@dataclass(frozen=True)
class StandardTransformer:
    """``d`` model width, ``heads`` (``d_h = d / H``), ``layers``, ``mlp`` hidden width,
    ``inputs`` features per token, ``outputs``."""

    d: int
    layers: int
    heads: int = 2
    mlp: int = 32
    inputs: int = 3
    outputs: int = 1

    def __post_init__(self):
        for name in ("d", "layers", "heads", "mlp", "inputs", "outputs"):
            v = getattr(self, name)
            if not isinstance(v, int | np.integer) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.d % self.heads:
            raise ValueError(f"heads ({self.heads}) must divide d ({self.d})")

    def init(self, seed: int = 0) -> dict:
        """Seeded float64 parameters (NumPy), per-layer arrays with a leading ``L`` axis."""
        rng = np.random.default_rng(seed)
        d, L, m = self.d, self.layers, self.mlp
        g = rng.normal
        s = 1 / np.sqrt(d)
        return {
            "embed": g(size=(d, self.inputs)) / np.sqrt(self.inputs),
            "g1": np.ones((L, d)), "g2": np.ones((L, d)),
            "q": g(size=(L, d, d)) * s, "k": g(size=(L, d, d)) * s,
            "v": g(size=(L, d, d)) * s, "o": g(size=(L, d, d)) * s / np.sqrt(L),
            "w1": g(size=(L, m, d)) * s, "b1": np.zeros((L, m)),
            "w2": g(size=(L, d, m)) / np.sqrt(m * L), "b2": np.zeros((L, d)),
            "head": g(size=(self.outputs, d)) * s, "head_b": np.zeros(self.outputs),
        }  # fmt: skip

    @staticmethod
    def _norm(h, g):
        return math.sqrt(h.shape[-1]) * g * h / jnp.linalg.norm(h, axis=-1, keepdims=True)

    def _layer(self, p, ell, h):
        H, dh = self.heads, self.d // self.heads
        z = self._norm(h, p["g1"][ell])
        q = (z @ p["q"][ell].T).reshape(-1, H, dh)
        k = (z @ p["k"][ell].T).reshape(-1, H, dh)
        v = (z @ p["v"][ell].T).reshape(-1, H, dh)
        logits = jnp.einsum("iha,jha->hij", q, k) / math.sqrt(dh)
        att = jax.nn.softmax(logits, axis=-1)
        mix = jnp.einsum("hij,jha->iha", att, v).reshape(-1, self.d)
        h = h + mix @ p["o"][ell].T
        z = self._norm(h, p["g2"][ell])
        return h + jax.nn.relu(z @ p["w1"][ell].T + p["b1"][ell]) @ p["w2"][ell].T + p["b2"][ell]

    def hidden_states(self, params: dict, u):
        """Normalised hidden states ``h_ℓ / |h_ℓ|``, ``ℓ = 0..L``, for one input: (L+1, n, d)."""
        h = u @ params["embed"].T
        hs = [h]
        for ell in range(self.layers):
            h = self._layer(params, ell, h)
            hs.append(h)
        hs = jnp.stack(hs)
        return hs / jnp.linalg.norm(hs, axis=-1, keepdims=True)

    def apply(self, params: dict, u):
        """Outputs for one input ``u`` (n, p)."""
        x = self.hidden_states(params, u)[-1]
        return x.mean(axis=0) @ params["head"].T + params["head_b"]

    def batched(self):
        """Compiled ``jax.vmap`` of :meth:`apply` over a batch ``(B, n, p)``."""
        return jax.jit(jax.vmap(self.apply, in_axes=(None, 0)))


@functools.lru_cache(maxsize=16)
def _hidden_jit(model: StandardTransformer):
    return jax.jit(model.hidden_states)


def mean_field_matrices(model: StandardTransformer, params: dict, layer: int):
    """``(A, V)`` (H, d, d) of layer ``layer`` on normalised tokens (module docstring)."""
    d, H = model.d, model.heads
    G = np.diag(np.asarray(params["g1"][layer]))
    q, k = np.asarray(params["q"][layer]) @ G, np.asarray(params["k"][layer]) @ G
    v, o = np.asarray(params["v"][layer]) @ G, np.asarray(params["o"][layer])
    A, V = head_matrices(q, k, v, o, H)
    return d * A, np.sqrt(d) * V


def hidden_state_gap(model: StandardTransformer, params: dict, u) -> np.ndarray:
    """``W_2`` (geodesic, exact OT) per layer ``ℓ = 0..L`` between the model's normalised
    hidden states for input ``u`` (n, p) and the mean-field particle flow of its own
    attention matrices (one step of size 1 per layer) from the same normalised embedding."""
    import ot

    hs = np.asarray(_hidden_jit(model)(params, jnp.asarray(u)))
    mf = MeanFieldTransformer(d=model.d, layers=1, step=1.0, heads=model.heads)
    x = jnp.asarray(hs[0])
    n = len(x)
    w = np.full(n, 1.0 / n)
    out = [0.0]
    for ell in range(model.layers):
        A, V = mean_field_matrices(model, params, ell)
        x = mf.layer_step(x, jnp.asarray(A), jnp.asarray(V))
        M = np.arccos(np.clip(hs[ell + 1] @ np.asarray(x).T, -1, 1)) ** 2
        out.append(float(np.sqrt(max(ot.emd2(w, w, M, numItermax=10**6), 0.0))))
    return np.array(out)
