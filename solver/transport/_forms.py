"""What the DG0 and DG upwind operators share: the facet flux form and the step checks.

On a sphere made of flat (or curved) cells the two co-normals of a facet differ,
``n⁺ ≠ -n⁻``. Every facet term here is written with their antisymmetric average, so it changes
sign when '+' and '-' swap: the flux leaves one cell and enters the other (mass conserved to
round-off) and the form does not depend on which side DOLFINx calls '+' (the partition).
"""

from __future__ import annotations

import numpy as np
import ufl

__all__ = ["upwind_outflows", "upwind_flux", "check_cfl", "unit_mass", "mass_floor"]


def upwind_outflows(u, msh, donor: bool = False, direction=None):
    """Outflow speeds ``(o⁺, o⁻)`` of the two cells of an interior facet (UFL expressions).

    * ``donor=False`` (one normal velocity per facet point): ``u_n = ½ (u⁺·n⁺ - u⁻·n⁻)``,
      ``o⁺ = (u_n)^+``, ``o⁻ = (-u_n)^+``;
    * ``donor=True`` (each cell's own velocity, flux-vector splitting): ``ñ = ½ (n⁺ - n⁻)``,
      ``o⁺ = max(u⁺·ñ, ½ (u⁺ + u⁻)·ñ, 0)``, ``o⁻`` the same from '-' (``ñ → -ñ``); with a
      per-cell ``direction`` field ``a`` (the directional velocity of
      :class:`~solver.transport.DG0Upwind`, which moves each cell's first moment at its own
      velocity) ``o⁺ = (½ (u⁺ + u⁻)·ñ)^+ + (a⁺·ñ)^+`` and ``o⁻`` the same from '-'.
    """
    n = ufl.FacetNormal(msh)
    if donor:
        nt = 0.5 * (n("+") - n("-"))  # antisymmetric co-normal, from '+' to '-'
        up, um = ufl.dot(u("+"), nt), ufl.dot(u("-"), nt)
        avg = 0.5 * (up + um)  # the facet's velocity, from the two cells' own
        if direction is not None:  # the facet velocity's outflow + the directional one's
            ap, am = ufl.dot(direction("+"), nt), ufl.dot(direction("-"), nt)
            op = ufl.max_value(avg, 0.0) + ufl.max_value(ap, 0.0)
            om = ufl.max_value(-avg, 0.0) + ufl.max_value(-am, 0.0)
            return op, om
        op = ufl.max_value(ufl.max_value(up, avg), 0.0)
        om = ufl.max_value(ufl.max_value(-um, -avg), 0.0)
        return op, om
    un = 0.5 * (ufl.dot(u("+"), n("+")) - ufl.dot(u("-"), n("-")))
    return ufl.max_value(un, 0.0), ufl.max_value(-un, 0.0)


def upwind_flux(rho, outflows):
    """Net facet flux from '+' to '-': ``ρ⁺ o⁺ - ρ⁻ o⁻`` (the upwind value of each side)."""
    out_p, out_m = outflows
    return rho("+") * out_p - rho("-") * out_m


def check_cfl(cfl: float) -> None:
    if not (np.isfinite(cfl) and 0 < cfl <= 1):
        raise ValueError(f"time.cfl must be in (0, 1] (positivity of the scheme), got {cfl}")


def unit_mass(sm, averages: np.ndarray) -> float:
    """The mass ``Σ_K ρ̄_K |K|`` of an initial state, checked (finite, ``>= 0``, not zero)."""
    if not np.all(np.isfinite(averages)) or np.any(averages < 0):
        raise ValueError("initial density must be finite and >= 0 on every cell")
    mass = sm.integrate(averages)
    if not mass > 0:
        raise ValueError("initial density is zero everywhere on the mesh: nothing to evolve")
    return mass


def mass_floor(comm, m: np.ndarray, tail: float) -> float:
    """The smallest cell mass among the cells that hold all but ``tail`` of the total: the
    cells below it (the lightest, together at most ``tail`` of the mass) do not limit
    adaptive steps. ``m``: this rank's cell masses (``>= 0``); the same value on every rank.

    The masses ascending, ``floor = m_(k)`` with ``k`` the first index whose running sum
    exceeds ``tail · Σ m`` (:func:`mass_floor_sorted`, the definition), found without
    sorting or gathering the mesh: the sums of the masses by binary exponent (one reduction
    of :data:`_EXPONENTS` numbers) give the band ``[2^(e-1), 2^e)`` that holds ``m_(k)``,
    and only that band's masses are gathered and sorted. The running sums are then taken in
    another order than the sort's, so the floor is the same up to a running sum within
    round-off of ``tail · Σ m``."""
    m = np.asarray(m, dtype=float).ravel()
    band = np.where(m > 0, np.frexp(m)[1] + _EXP_OFFSET, 0)  # band 0: the empty cells
    np.clip(band, 0, _EXPONENTS - 1, out=band)
    sums = np.bincount(band, m, _EXPONENTS)
    if comm.size > 1:
        sums = comm.allreduce(sums)
    cum = np.cumsum(sums)
    limit = tail * cum[-1]
    b = int(np.searchsorted(cum, limit, side="right"))
    if b >= _EXPONENTS:  # nothing exceeds the limit (no mass at all)
        return np.inf
    mine = m[band == b]
    cand = np.sort(np.concatenate(comm.allgather(mine)) if comm.size > 1 else mine)
    below = cum[b - 1] if b > 0 else 0.0
    k = int(np.searchsorted(below + np.cumsum(cand), limit, side="right"))
    if k >= cand.size:  # pragma: no cover - the band's sums disagree by round-off
        return mass_floor_sorted(comm, m, tail)
    return float(cand[k])


#: the bands of :func:`mass_floor`: ``frexp`` exponents of doubles (-1073 .. 1024) shifted to
#: ``1 ..``, 0 for a zero mass
_EXP_OFFSET = 1075
_EXPONENTS = 2101


def mass_floor_sorted(comm, m: np.ndarray, tail: float) -> float:
    """:func:`mass_floor` by its definition: every mass gathered and sorted (the reference)."""
    allm = np.sort(np.concatenate(comm.allgather(np.asarray(m, dtype=float).ravel())))
    k = int(np.searchsorted(np.cumsum(allm), tail * allm.sum(), side="right"))
    return float(allm[k]) if k < allm.size else np.inf
