"""Time stepping of the continuity equation ``∂t ρ + div(X ρ) = 0`` on a sphere mesh.

* :class:`NonlocalVelocity` / :class:`PrescribedVelocity` give the nodal velocity for a
  density; the model's parameters are frozen over a step at their value at the step's
  midpoint (exact for piecewise-constant schedules, since steps land on the jumps).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ._model import Model
from ._timestepping import ssp_rk3_step
from ._velocity import NonlocalVelocity as _Nonlocal
from ._velocity import tangent_project

__all__ = [
    "NonlocalField",
    "PrescribedField",
    "Transport",
]


class NonlocalField:
    """Attention velocity ``X[ρ]`` at the velocity nodes, for a model's parameters.

    Sources and weights are the operator's quadrature of the measure (DG0: cell centroids
    on the sphere, weights ``ρ_K |K|``); targets are the operator's owned velocity nodes.
    See :class:`solver.NonlocalVelocity` for the MPI layout.
    """

    def __init__(self, op, model: Model, *, method="direct", tolerance=1e-10):
        sm = op.sm
        if model.d != sm.gdim:
            raise ValueError(
                f"the model is {model.d}-dimensional but the mesh is S^{sm.gdim - 1} in "
                f"R^{sm.gdim}: Q, K, V must be {sm.gdim} x {sm.gdim}"
            )
        self.model, self.op = model, op
        self.eval = _Nonlocal(
            sm.comm, op.targets, op.source_points, op.source_keys, method=method,
            tolerance=tolerance,
        )  # fmt: skip

    def __call__(self, t_param: float, t: float, state: np.ndarray) -> np.ndarray:
        A, V = self.model.parameters(t_param)
        return self.eval(self.op.source_weights(state), A, V)

    def speed(self, T: float) -> float:
        return self.model.speed_bound(T)


class PrescribedField:
    """A given velocity ``u(x, t)`` (projected onto the tangent space at the nodes)."""

    def __init__(self, op, fn: Callable[[np.ndarray, float], np.ndarray], speed):
        self.x, self.fn, self._speed = op.targets, fn, float(speed)

    def __call__(self, t_param: float, t: float, rho: np.ndarray) -> np.ndarray:
        return tangent_project(self.x, np.asarray(self.fn(self.x, t), dtype=float))

    def speed(self, T: float) -> float:
        return self._speed


class Transport:
    """Upwind DG transport of one density under a velocity field, stepped by SSP-RK3.

    The operator's limiter (identity for DG0) is applied after every stage.
    """

    def __init__(self, op, field):
        self.op, self.field = op, field

    def step(self, rho: np.ndarray, t: float, dt: float) -> np.ndarray:
        tp = t + 0.5 * dt  # parameters frozen over the step

        def rhs(s, r):
            return self.op.rhs(self.field(tp, s, r), r)

        return ssp_rk3_step(rhs, rho, t, dt, limiter=self.op.limit)
