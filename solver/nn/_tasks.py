r"""Set tasks the project generates (no downloads): clouds of ``n`` tokens and a binary label.

An input is a cloud ``u_i = c m + s ξ_i`` (``i = 1..n``, ``ξ_i ~ N(0, I_3)`` i.i.d.) around a
direction ``m`` uniform on ``S^2``, with ``c ~ U(0.5, 1.5)`` and spread ``s ~ U(0.5, 1.5)``.
The label is a permutation-invariant function of the cloud's law: ``y = 1`` when
``<m, e> > 0`` for the task's direction ``e`` (``"old"``: ``e = e_1``, the data-abundant
pre-training task; ``"new"``: ``e = e_2``, the fine-tuning task). Seeded: the same
``(task, count, n, seed)`` gives the same arrays.
"""

from __future__ import annotations

import numpy as np

__all__ = ["TASKS", "make_task"]

TASKS = {"old": np.array([1.0, 0.0, 0.0]), "new": np.array([0.0, 1.0, 0.0])}


def make_task(task: str, count: int, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(u, y)``: ``count`` clouds ``u`` (count, n, 3) and labels ``y`` (count,) in {0, 1}."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {task!r}")
    for name, v in (("count", count), ("n", n)):
        if not isinstance(v, int | np.integer) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    rng = np.random.default_rng([seed, 0 if task == "old" else 1])
    m = rng.normal(size=(count, 3))
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    c = rng.uniform(0.5, 1.5, size=(count, 1, 1))
    s = rng.uniform(0.5, 1.5, size=(count, 1, 1))
    u = c * m[:, None, :] + s * rng.normal(size=(count, n, 3))
    return u, (m @ TASKS[task] > 0).astype(float)
