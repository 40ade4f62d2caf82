"""Time stepping of the continuity equation ``∂t ρ + div(X ρ) = 0`` on a sphere mesh.

* the CFL step keeps forward Euler, hence SSP-RK3 (:mod:`solver._timestepping`), positive;
* :class:`NonlocalVelocity` / :class:`PrescribedVelocity` give the nodal velocity for a
  density; the model's parameters are frozen over a step at their value at the step's
  midpoint (exact for piecewise-constant schedules, since steps land on the jumps).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ._fem import DG0Upwind, SphereMesh
from ._model import Model
from ._timestepping import ssp_rk3_step
from ._velocity import NonlocalVelocity as _Nonlocal
from ._velocity import tangent_project

__all__ = [
    "cfl_time_step",
    "NonlocalField",
    "PrescribedField",
    "Transport",
]


def cfl_time_step(sm: SphereMesh, speed: float, cfl: float) -> float:
    """``cfl * min_K |K| / |∂K| / speed``: forward Euler keeps ``ρ >= 0`` for ``cfl <= 1``."""
    if not (np.isfinite(cfl) and 0 < cfl <= 1):
        raise ValueError(f"time.cfl must be in (0, 1] (positivity of the scheme), got {cfl}")
    return cfl * sm.min_area_per_perimeter() / max(speed, 1e-300)


class NonlocalField:
    """Attention velocity ``X[ρ]`` at the velocity nodes, for a model's parameters.

    Sources are the owned cell centroids (on the sphere) with weights ``ρ_K |K|``; targets
    are the owned velocity nodes. See :class:`solver.NonlocalVelocity` for the MPI layout.
    """

    def __init__(self, op: DG0Upwind, model: Model, *, method="direct", tolerance=1e-10):
        sm = op.sm
        if model.d != sm.gdim:
            raise ValueError(
                f"the model is {model.d}-dimensional but the mesh is S^{sm.gdim - 1} in "
                f"R^{sm.gdim}: Q, K, V must be {sm.gdim} x {sm.gdim}"
            )
        self.model, self.areas = model, sm.areas
        self.eval = _Nonlocal(
            sm.comm, op.targets, sm.centroids, sm.keys, method=method, tolerance=tolerance
        )

    def __call__(self, t_param: float, t: float, rho: np.ndarray) -> np.ndarray:
        A, V = self.model.parameters(t_param)
        return self.eval(rho * self.areas, A, V)

    def speed(self, T: float) -> float:
        return self.model.speed_bound(T)


class PrescribedField:
    """A given velocity ``u(x, t)`` (projected onto the tangent space at the nodes)."""

    def __init__(self, op: DG0Upwind, fn: Callable[[np.ndarray, float], np.ndarray], speed):
        self.x, self.fn, self._speed = op.targets, fn, float(speed)

    def __call__(self, t_param: float, t: float, rho: np.ndarray) -> np.ndarray:
        return tangent_project(self.x, np.asarray(self.fn(self.x, t), dtype=float))

    def speed(self, T: float) -> float:
        return self._speed


class Transport:
    """DG0 upwind transport of one density under a velocity field, stepped by SSP-RK3."""

    def __init__(self, op: DG0Upwind, field):
        self.op, self.field = op, field

    def step(self, rho: np.ndarray, t: float, dt: float) -> np.ndarray:
        tp = t + 0.5 * dt  # parameters frozen over the step

        def rhs(s, r):
            return self.op.rhs(self.field(tp, s, r), r)

        return ssp_rk3_step(rhs, rho, t, dt)
