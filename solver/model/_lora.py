"""LoRA perturbations of the attention weights, as schedules ``t -> (ΔA(t), ΔV(t))``.

The self-attention dynamics only see the query and key matrices through the bilinear form
``<Q x, K y> = yᵀ A x`` with ``A = Kᵀ Q``, so a model is fully described by ``A`` and ``V``
(both ``d x d``). A LoRA perturbation adds ``ΔA`` and ``ΔV``:

* tied adapters: the same ``ΔV = B Aᵀ`` (rank r) at every layer, constant in time;
* random adapters: layer ``ℓ`` (``t ∈ [ℓh, (ℓ+1)h)``) gets its own
  ``ΔV^ℓ = η Σ_a s_a u_a^ℓ (v_a^ℓ)ᵀ`` with ``u, v ~ N(0, I_d / d)`` i.i.d. (seeded);
* a general schedule: any callable ``t -> (ΔA, ΔV)`` with its breakpoints.

Everything here is pure NumPy and works for any dimension ``d``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "as_matrix",
    "as_real",
    "Perturbation",
    "TiedLoRA",
    "RandomLoRA",
    "ScheduledLoRA",
    "low_rank",
]


def as_real(name: str, v, *, integer: bool = False, positive: bool = False,
            nonneg: bool = False, below: float | None = None) -> float | int:  # fmt: skip
    """A real number argument, checked at the call: ``TypeError`` naming ``name`` for a
    string, a boolean, a complex or any non-number (nothing is coerced), ``ValueError`` for
    NaN, infinity, a non-integer where ``integer``, ``v <= 0`` where ``positive``, ``v < 0``
    where ``nonneg`` and ``v >= below``."""
    if isinstance(v, bool | str | bytes) or not isinstance(v, int | float | np.integer |
                                                             np.floating):  # fmt: skip
        raise TypeError(f"{name} must be a real number, got {type(v).__name__} {v!r}"[:200])
    if not np.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v!r}")
    if integer and int(v) != v:
        raise ValueError(f"{name} must be an integer, got {v!r}")
    if positive and v <= 0:
        raise ValueError(f"{name} must be > 0, got {v!r}")
    if nonneg and v < 0:
        raise ValueError(f"{name} must be >= 0, got {v!r}")
    if below is not None and v >= below:
        raise ValueError(f"{name} must be < {below!r}, got {v!r}")
    return int(v) if integer else float(v)


def as_matrix(name: str, M, d: int | None = None) -> np.ndarray:
    """Validate a square finite real matrix (of size ``d`` when given); complex entries are a
    ``TypeError`` (never silently dropped)."""
    try:
        complex_ = np.iscomplexobj(np.asarray(M))
    except (TypeError, ValueError):  # ragged: reported below
        complex_ = False
    if complex_:
        raise TypeError(f"{name} must be real, got complex entries")
    try:
        M = np.array(M, dtype=float)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a square matrix of numbers (nested lists): {e}") from None
    if M.ndim != 2 or M.shape[0] != M.shape[1] or M.shape[0] == 0:
        raise ValueError(f"{name} must be a square d x d matrix (d >= 1), got shape {M.shape}")
    if d is not None and M.shape[0] != d:
        raise ValueError(f"{name} must be {d} x {d} (d = {d}), got shape {M.shape}")
    if not np.all(np.isfinite(M)):
        raise ValueError(f"{name} contains NaN or infinite entries")
    return M


def low_rank(B, A) -> np.ndarray:
    """LoRA update ``B Aᵀ`` from factors ``B, A ∈ R^{d x r}`` (1-D vectors are rank 1)."""
    B = np.atleast_2d(np.asarray(B, dtype=float))
    A = np.atleast_2d(np.asarray(A, dtype=float))
    if B.shape[0] == 1 and B.shape[1] > 1 and A.shape[0] == 1:
        B, A = B.T, A.T
    if B.ndim != 2 or B.shape != A.shape:
        raise ValueError(f"LoRA factors B and A must both be d x r, got {B.shape} and {A.shape}")
    if not (np.all(np.isfinite(B)) and np.all(np.isfinite(A))):
        raise ValueError("LoRA factors B and A contain NaN or infinite entries")
    return B @ A.T


class Perturbation:
    """A time-dependent perturbation ``t -> (ΔA(t), ΔV(t))``.

    Subclasses implement :meth:`at` and :meth:`breakpoints` (times in ``(0, T)`` where the
    parameters jump; time steppers land on them exactly so that no step straddles a jump).
    """

    d: int

    def at(self, t: float) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    def breakpoints(self, T: float) -> np.ndarray:
        return np.zeros(0)

    def norms(self, T: float) -> tuple[float, float]:
        """``(sup_t ‖ΔA(t)‖_op, sup_t ‖ΔV(t)‖_op)`` over ``[0, T]`` (attained on layers)."""
        ts = np.concatenate([[0.0], self.breakpoints(T)])
        nA = max(np.linalg.norm(self.at(t)[0], 2) for t in ts)
        nV = max(np.linalg.norm(self.at(t)[1], 2) for t in ts)
        return float(nA), float(nV)


@dataclass(frozen=True)
class TiedLoRA(Perturbation):
    """Tied adapters: the same ``ΔA`` and ``ΔV`` at every layer (constant in time)."""

    dA: np.ndarray
    dV: np.ndarray

    def __post_init__(self):
        dV = as_matrix("perturbation.dV", self.dV)
        object.__setattr__(self, "dV", dV)
        object.__setattr__(self, "dA", as_matrix("perturbation.dA", self.dA, dV.shape[0]))

    @property
    def d(self) -> int:
        return self.dV.shape[0]

    def at(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        return self.dA, self.dV


@dataclass(frozen=True)
class RandomLoRA(Perturbation):
    """I.i.d. random adapters, one per layer of length ``h`` (Thm 4.2 of the paper).

    ``ΔV^ℓ = η Σ_{a=1}^{r} s_a u_a^ℓ (v_a^ℓ)ᵀ`` with ``u_a^ℓ, v_a^ℓ ~ N(0, I_d/d)`` drawn from
    ``numpy.random.default_rng([seed, ℓ])``, so layer ``ℓ`` is reproducible on its own and on
    every rank. ``on`` selects which weights are perturbed: ``"V"``, ``"A"`` or ``"both"``.
    """

    d: int
    eta: float
    h: float
    s: Sequence[float] = (1.0,)
    seed: int = 0
    on: str = "V"
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        if as_real("RandomLoRA d", self.d, integer=True) < 1:
            raise ValueError(f"perturbation dimension d must be >= 1, got {self.d}")
        as_real("perturbation.eta (RandomLoRA eta)", self.eta, nonneg=True)
        as_real("perturbation.layer_length (RandomLoRA h)", self.h, positive=True)
        as_real("perturbation.seed (RandomLoRA seed)", self.seed, integer=True, nonneg=True)
        if isinstance(self.s, str | bytes) or not isinstance(self.s, Sequence | np.ndarray):
            raise TypeError(f"perturbation.s (RandomLoRA s) must be a list of singular values, "
                            f"got {self.s!r}")  # fmt: skip
        for v in self.s:
            as_real("perturbation.s[] (RandomLoRA s)", v, nonneg=True)
        if self.on not in ("V", "A", "both"):
            raise ValueError(f"perturbation.on must be 'V', 'A' or 'both', got {self.on!r}")
        s = np.asarray(self.s, dtype=float)
        if s.ndim != 1 or s.size == 0 or not np.all(np.isfinite(s)):
            raise ValueError("perturbation.s must be a non-empty list of finite singular values")

    def layer(self, t: float) -> int:
        return int(np.floor(t / self.h + 1e-12))

    def _draw(self, ell: int, which: int) -> np.ndarray:
        key = (ell, which)
        if key not in self._cache:
            rng = np.random.default_rng([self.seed, ell, which])
            s = np.asarray(self.s, dtype=float)
            u = rng.normal(scale=1 / np.sqrt(self.d), size=(self.d, s.size))
            v = rng.normal(scale=1 / np.sqrt(self.d), size=(self.d, s.size))
            self._cache[key] = self.eta * (u * s) @ v.T
        return self._cache[key]

    def at(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        ell = self.layer(t)
        zero = np.zeros((self.d, self.d))
        dA = self._draw(ell, 1) if self.on in ("A", "both") else zero
        dV = self._draw(ell, 0) if self.on in ("V", "both") else zero
        return dA, dV

    def breakpoints(self, T: float) -> np.ndarray:
        n = int(np.ceil(T / self.h - 1e-12))
        return self.h * np.arange(1, n)


@dataclass(frozen=True)
class ScheduledLoRA(Perturbation):
    """General schedule: ``fn(t) -> (ΔA, ΔV)``; ``jumps`` lists the times where it jumps."""

    d: int
    fn: Callable[[float], tuple[np.ndarray, np.ndarray]]
    jumps: Sequence[float] = ()

    def at(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        dA, dV = self.fn(t)
        return as_matrix("schedule ΔA", dA, self.d), as_matrix("schedule ΔV", dV, self.d)

    def breakpoints(self, T: float) -> np.ndarray:
        j = np.asarray(sorted(self.jumps), dtype=float)
        return j[(j > 0) & (j < T)]
