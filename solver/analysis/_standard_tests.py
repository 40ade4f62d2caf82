"""Standard transport tests on the unit sphere.

* Nair–Lauritzen deformational flow with a solid-body translation, and Williamson test 1
  (solid-body rotation of a cosine bell): prescribed velocities whose exact solution at ``T``
  is the initial field;
* their errors are measured in the form of Williamson et al. (1992) / Lauritzen et al.
  (2012) by :func:`solver.parallel.normalised_errors`.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "StandardTest",
    "nair_lauritzen",
    "williamson1",
    "gaussian_hills",
    "cosine_bell",
    "lonlat",
    "from_lonlat",
]


def lonlat(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Longitude ``λ ∈ (-π, π]`` and latitude ``θ ∈ [-π/2, π/2]`` of unit vectors."""
    return np.arctan2(x[:, 1], x[:, 0]), np.arcsin(np.clip(x[:, 2], -1.0, 1.0))


def from_lonlat(lam, theta) -> np.ndarray:
    """Unit vectors of longitudes and latitudes."""
    lam, theta = np.asarray(lam, float), np.asarray(theta, float)
    return np.stack([np.cos(theta) * np.cos(lam), np.cos(theta) * np.sin(lam), np.sin(theta)], -1)


def _wind(x: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Cartesian vector ``u e_λ + v e_θ`` at unit vectors ``x`` (zonal ``u``, meridional ``v``)."""
    lam, th = lonlat(x)
    e_lam = np.column_stack([-np.sin(lam), np.cos(lam), np.zeros_like(lam)])
    e_th = np.column_stack([-np.sin(th) * np.cos(lam), -np.sin(th) * np.sin(lam), np.cos(th)])
    return u[:, None] * e_lam + v[:, None] * e_th


class StandardTest:
    """A transport test case with prescribed velocity whose solution at ``T`` is known.

    Attributes: ``velocity(x, t) -> (n, 3)``, ``speed`` (a bound of ``|u|``), ``T``,
    ``initial(x)`` and ``exact(x)`` (the solution at ``T``), ``name``.
    """

    def __init__(self, name, velocity, speed, T, initial, exact=None):
        self.name, self.velocity, self.speed, self.T = name, velocity, float(speed), float(T)
        self.initial = initial
        self.exact = initial if exact is None else exact


def gaussian_hills(x: np.ndarray, h_max: float = 0.95, b: float = 5.0) -> np.ndarray:
    """Two Gaussian hills of Lauritzen et al. (2012) at ``(λ, θ) = (5π/6, 0), (7π/6, 0)``."""
    c = from_lonlat(np.array([5 * np.pi / 6, 7 * np.pi / 6]), np.zeros(2))
    return sum(h_max * np.exp(-b * np.sum((x - ci) ** 2, axis=1)) for ci in c)


def cosine_bell(x: np.ndarray, centre, radius: float = 1.0 / 3.0, h0: float = 1.0) -> np.ndarray:
    """Cosine bell ``h0/2 (1 + cos(π r / R))`` for great-circle distance ``r < R``, else 0."""
    r = np.arccos(np.clip(x @ np.asarray(centre, float), -1.0, 1.0))
    return np.where(r < radius, 0.5 * h0 * (1.0 + np.cos(np.pi * np.minimum(r / radius, 1))), 0.0)


def nair_lauritzen(T: float = 5.0, kappa: float | None = None, initial=gaussian_hills):
    """Non-divergent deformational flow with translation (Nair & Lauritzen 2010, case 4;
    Lauritzen et al. 2012): the tracer returns to its initial state at ``T``.

    ``u = κ sin²λ' sin 2θ cos(πt/T) + 2π cos θ / T``, ``v = κ sin 2λ' cos θ cos(πt/T)``,
    ``λ' = λ - 2πt/T``, ``κ = 10/T``.
    """
    k = 10.0 / T if kappa is None else float(kappa)

    def velocity(x, t):
        lam, th = lonlat(x)
        lp = lam - 2 * np.pi * t / T
        c = np.cos(np.pi * t / T)
        u = k * np.sin(lp) ** 2 * np.sin(2 * th) * c + 2 * np.pi * np.cos(th) / T
        v = k * np.sin(2 * lp) * np.cos(th) * c
        return _wind(x, u, v)

    # max |u| sampled on a 2° grid at 21 times, plus 2% (the crude bound hypot(κ + 2π/T, κ)
    # is 30% larger and would cost as many more time steps)
    lam, th = np.meshgrid(np.linspace(-np.pi, np.pi, 181), np.linspace(-np.pi / 2, np.pi / 2, 91))
    xs = from_lonlat(lam.ravel(), th.ravel())
    speed = 1.02 * max(np.linalg.norm(velocity(xs, t), axis=1).max() for t in np.linspace(0, T, 21))
    return StandardTest("Nair-Lauritzen deformational flow", velocity, speed, T, initial)


def williamson1(alpha: float = 0.0, T: float = 5.0):
    """Williamson et al. (1992) test 1: a cosine bell of radius 1/3 centred at
    ``(3π/2, 0)`` carried once around the sphere by solid-body rotation at angle ``α``
    (``u = u0 (cos θ cos α + sin θ cos λ sin α)``, ``v = -u0 sin λ sin α``, ``u0 = 2π/T``)."""
    u0 = 2 * np.pi / T
    omega = u0 * np.array([-np.sin(alpha), 0.0, np.cos(alpha)])
    centre = from_lonlat(3 * np.pi / 2, 0.0)

    def velocity(x, t):
        return np.cross(omega, x)

    def bell(x):
        return cosine_bell(x, centre)

    return StandardTest(f"Williamson test 1 (alpha = {alpha:.4g})", velocity, u0, T, bell)
