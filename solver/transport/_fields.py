"""Time stepping of the continuity equation ``∂t ρ + div(X ρ) = 0`` on a sphere mesh.

* :class:`NonlocalVelocity` / :class:`PrescribedVelocity` give the nodal velocity for a
  density; the model's parameters are frozen over a step at their value at the step's
  midpoint (exact for piecewise-constant schedules, since steps land on the jumps).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from mpi4py import MPI

from ..model import Model
from ..velocity import NonlocalVelocity, tangent_project
from ._stepping import ssp_rk3_step, time_grid

__all__ = [
    "NonlocalField",
    "PrescribedField",
    "Transport",
    "VELOCITY_STAGES",
]


class NonlocalField:
    """Attention velocity ``X[ρ]`` at the velocity nodes, for a model's parameters.

    Sources and weights are the operator's quadrature of the measure (DG0: cell centroids
    on the sphere, weights ``ρ_K |K|``); targets are the operator's owned velocity nodes.
    See :class:`solver.NonlocalVelocity` for the MPI layout.

    ``active``: ``None`` (every target, every source) or the mass tail ``τ`` of the active
    set: the velocity at the nodes of the cells that hold all but ``τ`` of the mass and of
    their neighbours only (zero elsewhere; :mod:`solver.transport._active`), from the sources
    that hold all but an error-controlled tail (:meth:`solver.NonlocalVelocity.evaluate_active`).
    """

    def __init__(self, op, model: Model, *, method="direct", tolerance=1e-10, active=None):
        sm = op.sm
        if model.d != sm.gdim:
            raise ValueError(
                f"the model is {model.d}-dimensional but the mesh is S^{sm.gdim - 1} in "
                f"R^{sm.gdim}: Q, K, V must be {sm.gdim} x {sm.gdim}"
            )
        self.model, self.op = model, op
        self.eval = NonlocalVelocity(
            sm.comm, op.targets, op.source_points, op.source_keys, method=method,
            tolerance=tolerance,
        )  # fmt: skip
        self.active = None
        if active is not None:
            from ._active import ActiveTargets  # DOLFINx

            self.active = ActiveTargets(op, active)

    def __call__(self, t_param: float, t: float, state: np.ndarray) -> np.ndarray:
        A, V = self.model.parameters(t_param)
        if self.active is not None:
            w = self.op.source_weights(state)
            if self.active.keyed and self.eval.sources is not None and np.ndim(A) == 2:
                # DG0: the active set from the gathered weights (one gather, no reduction)
                wg = self.eval.gather(w)
                mask, nt = self.active.from_gathered(wg)
                return self.eval.evaluate_active(w, A, V, mask, gathered=(wg, nt))
            return self.eval.evaluate_active(w, A, V, self.active(state))
        return self.eval(self.op.source_weights(state), A, V)

    def speed(self, T: float) -> float:
        return self.model.speed_bound(T)

    @property
    def spread(self) -> bool:
        """Whether every target was active at the last evaluation (the density is spread: the
        cells that hold all but the tail ``τ`` and their ring are the whole mesh;
        :attr:`NonlocalVelocity.all_active`); ``False`` without an active set. The same on
        every rank."""
        return self.active is not None and self.eval.all_active

    def get_state(self) -> list[dict]:
        return self.eval.get_state()

    def set_state(self, state: list[dict]) -> None:
        self.eval.set_state(state)


class PrescribedField:
    """A given velocity ``u(x, t)`` (projected onto the tangent space at the nodes)."""

    def __init__(self, op, fn: Callable[[np.ndarray, float], np.ndarray], speed):
        self.x, self.fn, self._speed = op.targets, fn, float(speed)

    def __call__(self, t_param: float, t: float, rho: np.ndarray) -> np.ndarray:
        return tangent_project(self.x, np.asarray(self.fn(self.x, t), dtype=float))

    def speed(self, T: float) -> float:
        return self._speed

    def get_state(self) -> list[dict]:
        return []

    def set_state(self, state: list[dict]) -> None:
        pass


#: how the stages of a step get their velocity (:class:`Transport`)
VELOCITY_STAGES = ("each", "frozen", "frozen_always")


class Transport:
    """Upwind DG transport of one density under a velocity field, stepped by SSP-RK3.

    The operator's limiter (identity for DG0) is applied after every stage.

    ``velocity_stages``: ``"each"`` (the default) evaluates the velocity of every stage's
    density (three evaluations per step); ``"frozen"`` takes the velocity of the step's start
    for its three stages (one evaluation: the step's plan has it already) in the *spread
    phase* only: while the field says the density is spread (``field.spread``: every target
    active, :class:`NonlocalField`); other steps are as ``"each"``. SSP-RK3
    of a frozen velocity is first order in time in the velocity's dependence on the density
    (the transport itself stays third order, and positive under the same step); the error
    against ``"each"`` is measured in docs/benchmarks/spread_phase.md and
    tests/test_transport.py. ``"frozen_always"``: frozen on every step (the measurement's
    reference; after clustering its steps are long and its error is not small).
    """

    def __init__(self, op, field, velocity_stages: str = "each"):
        if velocity_stages not in VELOCITY_STAGES:
            raise ValueError(f"velocity_stages must be one of {VELOCITY_STAGES}, got "
                             f"{velocity_stages!r}")  # fmt: skip
        self.op, self.field = op, field
        self.stages = velocity_stages

    def step(self, rho: np.ndarray, t: float, dt: float, u0: np.ndarray | None = None,
             capped: bool = False) -> np.ndarray:  # fmt: skip
        """One SSP-RK3 step (``u0``: the velocity of ``rho`` at ``t``, when known).

        ``capped``: every stage is the operator's ``euler_step`` (outflows capped at each
        cell's content: positive for any ``dt``) instead of ``ρ + dt · rhs``.
        """
        tp = t + 0.5 * dt  # parameters frozen over the step
        if self.stages != "each" and u0 is None:  # first: it tells whether the state is spread
            u0 = self.field(tp, t, rho)
        if self.stages == "frozen_always" or (
            self.stages == "frozen" and getattr(self.field, "spread", False)
        ):  # the start's velocity for every stage

            def velocity(s, r):
                return u0

        else:

            def velocity(s, r):
                return self.field(tp, s, r)

        if capped:

            def euler(s, r, u=None):
                return self.op.euler_step(velocity(s, r) if u is None else u, r, dt)

            return ssp_rk3_step(None, rho, t, dt, limiter=self.op.limit, euler=euler, u0=u0)

        def rhs(s, r):
            return self.op.rhs(velocity(s, r), r)

        f0 = None if u0 is None else self.op.rhs(u0, rho)
        return ssp_rk3_step(rhs, rho, t, dt, limiter=self.op.limit, f0=f0)


def advance(op, field, state: np.ndarray, T: float, cfl: float = 0.9,
            velocity_stages: str = "each") -> tuple[np.ndarray, dict]:  # fmt: skip
    """Step ``state`` from 0 to ``T`` by SSP-RK3 (limited after each stage) under ``field``
    (a :class:`PrescribedField` or ``NonlocalField`` of ``op``) with the a-priori step
    ``op.max_time_step`` (DG0: capped Euler stages, positive for any step);
    ``velocity_stages`` as :class:`Transport`'s.

    Returns the final state and ``{"steps", "mass_drift" (max |M(t) - M(0)| / M(0)),
    "min_average" (smallest cell average seen)}`` (global, identical on every rank).
    """
    times, _ = time_grid(T, op.max_time_step(field.speed(T), cfl))
    flow = Transport(op, field, velocity_stages)
    capped = getattr(op, "capped_fixed_steps", False)  # DG0: positive for any step
    comm, sm = op.sm.comm, op.sm
    mass0 = sm.integrate(op.cell_averages(state))
    drift, low = 0.0, float(np.min(op.cell_averages(state), initial=np.inf))
    for t0, t1 in zip(times[:-1], times[1:], strict=True):
        state = flow.step(state, float(t0), float(t1 - t0), capped=capped)
        drift = max(drift, abs(sm.integrate(op.cell_averages(state)) - mass0))
        low = min(low, float(np.min(op.cell_averages(state), initial=np.inf)))
    low = comm.allreduce(low, op=MPI.MIN)
    return state, {"steps": len(times) - 1, "mass_drift": drift / mass0, "min_average": low}
