r"""A transformer whose forward pass is the project's particle system.

Tokens ``u_i ∈ R^p`` (a set: no positions) are embedded and normalised onto ``S^{d-1}``:
``x_i(0) = (E u_i + e) / |E u_i + e|``. Each of the ``L`` layers is one step of size ``h``
of the attention dynamics

.. math::

    \dot x_i = P_{x_i} \sum_{a=1}^{H} \frac{\sum_j e^{x_j^T A_a x_i} V_a x_j}
                                         {\sum_j e^{x_j^T A_a x_i}},
    \qquad A_a = \frac{W_k^{a\,T} W_q^a}{\sqrt{d}},\quad V_a = W_o^a W_v^a,

taken by the integrator of :func:`solver.simulate_particles` (classical RK4 whose stage
points and update use the projection retraction ``R_x(v) = (x + v)/|x + v|``). With one head
and ``h = T / L`` the final tokens are those of ``simulate_particles(Model.from_AV(A, V), x0,
T, dt=h)`` (per-layer weights: the parameters of layer ``ℓ`` on ``[ℓh, (ℓ+1)h)``). The
weights are stored as a Hugging Face attention block with head dimension ``d``:
``q, k, v`` of shape ``(Lw, H d, d)``, ``o`` of shape ``(Lw, d, H d)``, ``Lw = 1`` (tied
weights, one ``Q, K, V`` for every layer, as in the theory) or ``L`` (per-layer weights).

The readout of the final token measure ``μ = (1/n) Σ_i δ_{x_i}`` is
``r(μ) = W_2 ∫ tanh(W_1 x + b_1) dμ(x) + b_2``; it is Lipschitz in ``μ``:
``|r(μ) − r(ν)| <= ‖W_2‖_op ‖W_1‖_op W_1(μ, ν)`` (Euclidean cost on ``R^d``;
Kantorovich-Rubinstein, ``tanh`` being 1-Lipschitz), see :meth:`readout_lipschitz`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from ._backend import jax_modules

jax, jnp = jax_modules()  # float64 from here on (this module is imported lazily)

__all__ = ["MeanFieldTransformer", "head_matrices"]


def head_matrices(q, k, v, o, heads: int, xp=np, *, stacked: bool = False):
    """``(A, V)`` of shape ``(H, d, d)`` from one layer's ``q, k, v`` ``(H d_h, d)`` and ``o``
    ``(d, H d_h)``: ``A_a = W_k^{aT} W_q^a / sqrt(d_h)``, ``V_a = W_o^a W_v^a``;
    ``stacked``: arrays with a leading layer axis, results ``(Lw, H, d, d)``."""
    if not stacked:
        A, V = head_matrices(q[None], k[None], v[None], o[None], heads, xp, stacked=True)
        return A[0], V[0]
    Lw, dh = q.shape[0], q.shape[1] // heads
    qh = q.reshape(Lw, heads, dh, -1)
    kh = k.reshape(Lw, heads, dh, -1)
    vh = v.reshape(Lw, heads, dh, -1)
    oh = o.reshape(Lw, o.shape[1], heads, dh).transpose(0, 2, 1, 3)
    A = xp.einsum("lhji,lhjk->lhik", kh, qh) / math.sqrt(dh)  # a weak type: keeps float32
    V = xp.einsum("lhij,lhjk->lhik", oh, vh)
    return A, V


@dataclass(frozen=True)
class MeanFieldTransformer:
    """``d``: token dimension (sphere ``S^{d-1}``); ``layers`` ``L``; ``step`` ``h`` (depth
    ``T = L h``); ``heads`` ``H``; ``tied``: one set of attention weights for every layer;
    ``inputs`` ``p``: features per input token; ``width``: readout features; ``outputs``."""

    d: int
    layers: int
    step: float = 0.5
    heads: int = 1
    tied: bool = True
    inputs: int = 3
    width: int = 16
    outputs: int = 1

    def __post_init__(self):
        for name in ("d", "layers", "heads", "inputs", "width", "outputs"):
            v = getattr(self, name)
            if not isinstance(v, int | np.integer) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.d < 2:
            raise ValueError(f"d must be >= 2 (tokens on S^(d-1)), got {self.d}")
        if not (np.isfinite(self.step) and self.step > 0):
            raise ValueError(f"step must be > 0, got {self.step}")

    @property
    def weight_layers(self) -> int:
        """``Lw``: 1 for tied weights, ``L`` otherwise."""
        return 1 if self.tied else self.layers

    @property
    def depth(self) -> float:
        """``T = L h``."""
        return self.layers * self.step

    def init(self, seed: int = 0, *, value_scale: float = 1.0) -> dict:
        """Seeded float64 parameters (NumPy): ``embed`` (d, p), ``embed_bias`` (d,), ``q, k,
        v`` (Lw, H d, d), ``o`` (Lw, d, H d) (``W_o^a = I / H``, ``W_v^a = value_scale I`` +
        noise, so ``Σ_a V_a ≈ value_scale I``), ``r1`` (width, d), ``r1b``, ``r2`` (outputs,
        width), ``r2b``."""
        rng = np.random.default_rng(seed)
        d, H, Lw = self.d, self.heads, self.weight_layers
        g = rng.normal
        eye = np.eye(d)
        return {
            "embed": g(size=(d, self.inputs)) / np.sqrt(self.inputs),
            "embed_bias": g(size=d) * 0.1,
            "q": g(size=(Lw, H * d, d)) / np.sqrt(d),
            "k": g(size=(Lw, H * d, d)) / np.sqrt(d),
            "v": np.tile(value_scale * eye, (Lw, H, 1)) + 0.3 * g(size=(Lw, H * d, d)) / np.sqrt(d),
            "o": np.tile(eye / H, (Lw, 1, H)),
            "r1": g(size=(self.width, d)),
            "r1b": g(size=self.width) * 0.5,
            "r2": g(size=(self.outputs, self.width)) / np.sqrt(self.width),
            "r2b": np.zeros(self.outputs),
        }

    def attention(self, params: dict, layer: int, xp=np):
        """``(A, V)``, each ``(H, d, d)``, of layer ``layer`` (the only one when tied)."""
        w = 0 if self.tied else layer
        return head_matrices(params["q"][w], params["k"][w], params["v"][w], params["o"][w],
                             self.heads, xp)  # fmt: skip

    # ---- forward pass (JAX) -------------------------------------------------------------
    def embed(self, params: dict, u):
        """``x_i(0) = (E u_i + e)/|E u_i + e|`` for ``u`` (n, p) (or (..., n, p))."""
        z = u @ params["embed"].T + params["embed_bias"]
        return z / jnp.linalg.norm(z, axis=-1, keepdims=True)

    def velocity(self, x, A, V):
        """``Σ_a P_x softmax_j(x_j^T A_a x_i) V_a x_j`` at every token of ``x`` (n, d)."""
        Ax = jnp.einsum("hba,ia->hib", A, x)  # row i: (A_a x_i)^T
        logits = Ax @ x.T  # (h, i, j): x_j^T A_a x_i
        p = jax.nn.softmax(logits, axis=-1)  # max-shifted
        Vx = jnp.einsum("hab,jb->hja", V, x)  # row j: (V_a x_j)^T
        num = (p @ Vx).sum(axis=0)
        return num - jnp.sum(num * x, axis=-1, keepdims=True) * x

    def layer_step(self, x, A, V):
        """One RK4 step of size ``h`` with the projection retraction (simulate_particles)."""

        def retract(y, w):
            z = y + w
            return z / jnp.linalg.norm(z, axis=-1, keepdims=True)

        h = self.step
        k1 = self.velocity(x, A, V)
        k2 = self.velocity(retract(x, 0.5 * h * k1), A, V)
        k3 = self.velocity(retract(x, 0.5 * h * k2), A, V)
        k4 = self.velocity(retract(x, h * k3), A, V)
        return retract(x, h / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4))

    def flow(self, params: dict, x0, *, all_layers: bool = False):
        """Tokens after the ``L`` layers from ``x0`` (n, d); ``all_layers``: (L + 1, n, d).
        The layers run in an unrolled ``jax.lax.scan`` (its gradient is ~2x faster unrolled)."""
        A, V = head_matrices(params["q"], params["k"], params["v"], params["o"], self.heads,
                             jnp, stacked=True)  # fmt: skip
        if self.tied:
            A = jnp.broadcast_to(A, (self.layers, *A.shape[1:]))
            V = jnp.broadcast_to(V, (self.layers, *V.shape[1:]))

        def body(x, AV):
            y = self.layer_step(x, *AV)
            return y, y

        x, xs = jax.lax.scan(body, x0, (A, V), unroll=True)
        return jnp.concatenate([x0[None], xs]) if all_layers else x

    def readout(self, params: dict, x):
        """``r(μ) = W_2 mean_i tanh(W_1 x_i + b_1) + b_2`` for tokens ``x`` (n, d)."""
        feats = jnp.tanh(x @ params["r1"].T + params["r1b"]).mean(axis=-2)
        return feats @ params["r2"].T + params["r2b"]

    def apply(self, params: dict, u):
        """Outputs for one input ``u`` (n, p): readout of the flow of the embedded tokens."""
        return self.readout(params, self.flow(params, self.embed(params, u)))

    def batched(self, fn: str = "apply"):
        """Compiled ``jax.vmap`` of :meth:`apply` (or ``"flow_all"``: every layer's tokens
        from the embedding) over a batch of inputs ``(B, n, p)``, parameters shared; one
        compiled function per model and ``fn`` (cached)."""
        if fn not in ("apply", "flow_all"):
            raise ValueError(f"fn must be 'apply' or 'flow_all', got {fn!r}")
        return _batched(self, fn)

    def readout_lipschitz(self, params: dict) -> float:
        """``‖W_2‖_op ‖W_1‖_op``: a Lipschitz constant of ``r`` in ``W_1`` (Euclidean cost)."""
        r1, r2 = np.asarray(params["r1"]), np.asarray(params["r2"])
        return float(np.linalg.norm(r2, 2) * np.linalg.norm(r1, 2))


@functools.lru_cache(maxsize=64)
def _batched(model: MeanFieldTransformer, fn: str):
    if fn == "apply":
        return jax.jit(jax.vmap(model.apply, in_axes=(None, 0)))
    return jax.jit(jax.vmap(lambda p, u: model.flow(p, model.embed(p, u), all_layers=True),
                            in_axes=(None, 0)))  # fmt: skip
