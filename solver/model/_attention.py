"""Self-attention weights ``(Q, K, V)`` and the parameter schedule ``t -> (A(t), V(t))``.

The self-attention dynamics only see the query and key matrices through the bilinear form
``<Q x, K y> = yᵀ A x`` with ``A = Kᵀ Q``, so a model is fully described by ``A`` and ``V``
(both ``d x d``), plus an optional LoRA :class:`~solver.model.Perturbation`.
Pure NumPy, any dimension ``d``.
"""

from __future__ import annotations

import numpy as np

from ._lora import Perturbation, as_matrix

__all__ = ["Model"]


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
