"""Pieces shared by several experiments: the base models, the ``e_2`` perturbation and its
point-mass law, trajectory rows, and a per-process cache of runs."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ..model import Model, TiedLoRA

__all__ = [
    "TRAJECTORY_COLUMNS",
    "draw_density",
    "e2_perturbation",
    "identity_model",
    "memo",
    "point_mass_depth",
    "trajectory_rows",
]

_MEMO: dict = {}


def memo(key: tuple, fn: Callable):
    """Per-process cache of runs shared by several cases (e.g. the unperturbed flow)."""
    if key not in _MEMO:
        if len(_MEMO) >= 32:
            _MEMO.clear()
        _MEMO[key] = fn()
    return _MEMO[key]


def identity_model(d: int, beta: float = 1.0) -> Model:
    """``Q = K = √β I_d``, ``V = I_d``."""
    s = math.sqrt(beta)
    return Model(s * np.eye(d), s * np.eye(d), np.eye(d))


def draw_density(x0: np.ndarray, what: str = "draw"):
    """The smooth density that a uniform draw ``x0`` (n, d) on S^{d−1} approximates, for the
    PDE: ``ρ0(x) ∝ 1 + d ⟨m, x⟩`` with ``m = (1/n) Σ_i x_i`` (unnormalised, ``f(x)`` for
    ``x`` (N, d)). It is the uniform density (a stationary state of the PDE: nothing would
    cluster) plus the draw's first moment (``∫ x ρ0 dσ = m``, since ``∫ x xᵀ dσ = I/d``), the
    finite-n fluctuation that makes the particles cluster. Positive when ``d |m| < 1``.
    """
    n, d = x0.shape
    m = x0.mean(axis=0)
    if d * np.linalg.norm(m) >= 1:
        raise ValueError(f"{what}: d |m| = {d * np.linalg.norm(m):.3g} >= 1 (the density "
                         "1 + d<m, x> would be negative): choose another seed or n")  # fmt: skip
    return lambda x: 1.0 + d * (x @ m)


def e2_perturbation(d: int, eps: float) -> TiedLoRA:
    """Tied ``ΔV = −ε e_2e_2ᵀ`` (so ``Ṽ = I − ε e_2e_2ᵀ`` for ``V = I``)."""
    dV = np.zeros((d, d))
    dV[1, 1] = -eps
    return TiedLoRA(np.zeros((d, d)), dV)


def point_mass_depth(p0, eps: float, dtheta: float, axis: int = 1) -> float:
    """Depth at which a point mass at ``p0`` under ``Ṽ = I − ε e_a e_aᵀ`` has turned by
    ``dtheta`` radians (``a = axis``), the base point staying put (``V = I``).

    ``p(t) = e^{tṼ} p0 / |·|``: the angle φ between ``p`` and the hyperplane ``e_a^⊥`` obeys
    ``tan φ(t) = tan φ0 e^{−εt}``, and ``p`` moves along a great circle, so
    ``T* = ln(tan φ0 / tan(φ0 − Δθ)) / ε`` (``nan`` when ``φ0 ≤ Δθ`` or ``ε ≤ 0``).
    """
    p0 = np.asarray(p0, dtype=float)
    phi0 = math.asin(min(1.0, abs(p0[axis]) / np.linalg.norm(p0)))
    if eps <= 0 or phi0 <= dtheta:
        return float("nan")
    if phi0 >= math.pi / 2 - 1e-15:
        return float("inf")
    return math.log(math.tan(phi0) / math.tan(phi0 - dtheta)) / eps


TRAJECTORY_COLUMNS = ["t", "particle", "x", "y", "theta"]


def trajectory_rows(res) -> list[dict]:
    """One row per saved time and particle of a run on S^1 (:data:`TRAJECTORY_COLUMNS`)."""
    rows = []
    for t, x in zip(res.times, res.positions, strict=True):
        th = np.arctan2(x[:, 1], x[:, 0])
        for i in range(len(x)):
            rows.append({"t": float(t), "particle": i, "x": float(x[i, 0]), "y": float(x[i, 1]),
                         "theta": float(th[i])})  # fmt: skip
    return rows
