"""Self-attention weights ``(Q, K, V)`` and the parameter schedule ``t -> (A(t), V(t))``.

The self-attention dynamics only see the query and key matrices through the bilinear form
``<Q x, K y> = yᵀ A x`` with ``A = Kᵀ Q``, so a model is fully described by ``A`` and ``V``
(both ``d x d``), plus an optional LoRA :class:`~solver.model.Perturbation`.
Pure NumPy, any dimension ``d``.
"""

from __future__ import annotations

import numpy as np

from ._lora import Perturbation, as_matrix

__all__ = ["Model", "MultiHeadModel"]


class Model:
    """Self-attention parameters ``(Q, K, V)``, optionally perturbed.

    Parameters
    ----------
    Q, K, V : (d, d) array_like
        Query, key and value matrices. Only ``A = Kᵀ Q`` and ``V`` enter the dynamics.
    perturbation : Perturbation, optional
        LoRA update added to ``(A, V)``; :meth:`parameters` returns the perturbed pair.
    """

    def __init__(self, Q, K, V, perturbation: Perturbation | None = None):
        self.V = as_matrix("model.V", V)
        self.d = self.V.shape[0]
        if self.d < 2:
            raise ValueError("model.V must be d x d with d >= 2 (tokens on the sphere "
                             f"S^(d-1)), got {self.d} x {self.d}")  # fmt: skip
        self.Q = as_matrix("model.Q", Q, self.d)
        self.K = as_matrix("model.K", K, self.d)
        with np.errstate(all="ignore"):
            self.A = self.K.T @ self.Q
        if not np.all(np.isfinite(self.A)) or np.abs(self.A).max() > 1e150:
            raise ValueError("model.K^T model.Q (the bilinear form A) overflows (entries beyond "
                             "1e150): scale Q and K down")  # fmt: skip
        if perturbation is not None and perturbation.d != self.d:
            raise ValueError(
                f"perturbation is {perturbation.d}-dimensional but the model has d = {self.d}"
            )
        self.perturbation = perturbation

    @classmethod
    def from_AV(cls, A, V, perturbation: Perturbation | None = None) -> Model:
        """Model with ``Q = A``, ``K = I`` (so that ``Kᵀ Q = A``)."""
        A = as_matrix("model.A", A)
        return cls(A, np.eye(A.shape[0]), V, perturbation)

    def perturbed(self, perturbation: Perturbation) -> Model:
        """The same base weights with ``perturbation`` added."""
        return Model(self.Q, self.K, self.V, perturbation)

    @property
    def base(self) -> Model:
        """The unperturbed model."""
        return Model(self.Q, self.K, self.V) if self.perturbation is not None else self

    def parameters(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """``(A(t), V(t))`` at time (depth) ``t``."""
        if self.perturbation is None:
            return self.A, self.V
        dA, dV = self.perturbation.at(t)
        return self.A + dA, self.V + dV

    def breakpoints(self, T: float) -> np.ndarray:
        """Times in ``(0, T)`` where the parameters jump."""
        return np.zeros(0) if self.perturbation is None else self.perturbation.breakpoints(T)

    def speed_bound(self, T: float) -> float:
        """``sup_t ‖V(t)‖_op`` over ``[0, T]``: a bound of ``|X[μ](x)|`` for every μ and x."""
        ts = np.concatenate([[0.0], self.breakpoints(T)])
        return float(max(np.linalg.norm(self.parameters(t)[1], 2) for t in ts))

    def __repr__(self) -> str:
        return f"Model(d={self.d}, perturbation={self.perturbation!r})"


class MultiHeadModel(Model):
    r"""Several attention heads acting together: the velocity is the sum of the heads'

    .. math::

        X[μ](x) = \sum_{a=1}^{H} P_x \frac{\int e^{y^T A_a x} V_a y\, dμ(y)}
                                        {\int e^{y^T A_a x}\, dμ(y)}

    (each head its own softmax; the projection is linear, so projecting the sum is the sum of
    the projections). :meth:`parameters` returns ``(A, V)`` stacked, each ``(H, d, d)``; the
    velocity functions of :mod:`solver.velocity`, :func:`solver.simulate_particles` (sphere)
    and :func:`solver.evolve` sum over the leading axis. A one-head ``MultiHeadModel`` is the
    same flow as its head.

    Parameters
    ----------
    heads : sequence of Model
        One single-head :class:`Model` per head (each with its own optional perturbation),
        all of the same dimension ``d``.
    """

    def __init__(self, heads):
        heads = tuple(heads) if not isinstance(heads, Model) else None
        if not heads:
            raise TypeError("heads must be a non-empty sequence of solver.Model (one per head)")
        for a, m in enumerate(heads):
            if not isinstance(m, Model) or isinstance(m, MultiHeadModel):
                raise TypeError(f"heads[{a}] must be a single-head solver.Model, got "
                                f"{type(m).__name__}")  # fmt: skip
            if m.d != heads[0].d:
                raise ValueError(f"heads[{a}] is {m.d}-dimensional but heads[0] is "
                                 f"{heads[0].d}-dimensional")  # fmt: skip
        self.heads = heads
        self.d = heads[0].d
        self.Q = np.stack([m.Q for m in heads])
        self.K = np.stack([m.K for m in heads])
        self.A = np.stack([m.A for m in heads])
        self.V = np.stack([m.V for m in heads])
        self.perturbation = None

    @classmethod
    def from_AV(cls, A, V, perturbation=None) -> MultiHeadModel:
        """Heads ``Model.from_AV(A[a], V[a])`` from stacked ``A``, ``V`` of shape ``(H, d, d)``;
        ``perturbation``: ``None`` or one :class:`Perturbation` (or ``None``) per head."""
        A, V = np.asarray(A, dtype=float), np.asarray(V, dtype=float)
        if A.ndim != 3 or V.shape != A.shape:
            raise ValueError(f"A and V must both be (H, d, d), got {A.shape} and {V.shape}")
        pert = [None] * len(A) if perturbation is None else list(perturbation)
        if len(pert) != len(A):
            raise ValueError(f"perturbation must give one entry per head ({len(A)}), got "
                             f"{len(pert)}")  # fmt: skip
        return cls([Model.from_AV(a, v, p) for a, v, p in zip(A, V, pert, strict=True)])

    def perturbed(self, perturbation) -> MultiHeadModel:
        """The same heads with one perturbation (or ``None``) per head added."""
        pert = list(perturbation) if not isinstance(perturbation, Perturbation) else None
        if pert is None or len(pert) != len(self.heads):
            raise TypeError(f"perturbation must be a sequence of {len(self.heads)} "
                            "Perturbation (or None), one per head")  # fmt: skip
        return MultiHeadModel([Model(m.Q, m.K, m.V, p)
                               for m, p in zip(self.heads, pert, strict=True)])  # fmt: skip

    @property
    def base(self) -> MultiHeadModel:
        """The unperturbed heads."""
        return MultiHeadModel([m.base for m in self.heads])

    def parameters(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """``(A(t), V(t))`` of every head, each ``(H, d, d)``."""
        pairs = [m.parameters(t) for m in self.heads]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])

    def breakpoints(self, T: float) -> np.ndarray:
        """The union of the heads' parameter jumps in ``(0, T)``."""
        return np.unique(np.concatenate([np.zeros(0), *(m.breakpoints(T) for m in self.heads)]))

    def speed_bound(self, T: float) -> float:
        """``sup_t Σ_a ‖V_a(t)‖_op``: a bound of ``|X[μ](x)|`` (each head's softmax average of
        ``V_a y`` has norm at most ``‖V_a‖``)."""
        ts = np.concatenate([[0.0], self.breakpoints(T)])
        return float(max(sum(np.linalg.norm(v, 2) for v in self.parameters(t)[1]) for t in ts))

    def __repr__(self) -> str:
        return f"MultiHeadModel(d={self.d}, heads={len(self.heads)})"
