"""Per-step diagnostics of cell densities on a distributed sphere mesh.

All quantities are global (reduced over ranks) and identical on every rank:

* mass ``M = Σ_K ρ_K |K|`` (conserved by the scheme to round-off),
* ``min ρ``, ``max ρ`` (``min ρ >= 0``: positivity),
* first moment ``m = Σ_K ρ_K |K| y_K`` (``y_K``: centroid on the sphere),
* drift between two flows: ``|m_μ - m_ν|`` and ``‖ρ_μ - ρ_ν‖_{L1}``.
"""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

__all__ = ["density_diagnostics", "drift_diagnostics", "check_state", "diagnostic_columns"]


def diagnostic_columns(gdim: int, perturbed: bool) -> list[str]:
    """Column names of ``diagnostics.csv``."""
    axes = "xyz"[:gdim]
    cols = ["t", "mass", "min", "max"] + [f"moment_{a}" for a in axes]
    if perturbed:
        cols += ["mass_perturbed", "min_perturbed", "max_perturbed"]
        cols += [f"moment_perturbed_{a}" for a in axes]
        cols += ["moment_drift", "l1_difference"]
    return cols


def density_diagnostics(sm, rho: np.ndarray) -> list[float]:
    """``[mass, min, max, moment...]`` of owned cell averages ``rho`` (all ranks)."""
    comm = sm.comm
    w = rho * sm.areas
    glob = np.concatenate([[w.sum()], w @ sm.centroids])
    ext = np.array([-rho.min(initial=np.inf), rho.max(initial=-np.inf)])  # one MAX for both
    if comm.size > 1:  # one rank: nothing to reduce
        comm.Allreduce(MPI.IN_PLACE, glob, op=MPI.SUM)
        comm.Allreduce(MPI.IN_PLACE, ext, op=MPI.MAX)
    return [float(glob[0]), float(-ext[0]), float(ext[1])] + [float(v) for v in glob[1:]]


def drift_diagnostics(sm, d_mu: list[float], d_nu: list[float], rho, rho_nu) -> list[float]:
    """``[|m_μ - m_ν|, ‖ρ_μ - ρ_ν‖_L1]`` from the two flows' diagnostics and densities."""
    m = np.asarray(d_mu[3:]) - np.asarray(d_nu[3:])
    l1 = sm.comm.allreduce(float(np.abs(rho - rho_nu) @ sm.areas), op=MPI.SUM)
    return [float(np.linalg.norm(m)), l1]


def check_state(diag: list[float], t: float, mass0: float, name: str = "density") -> None:
    """Stop loudly on a NaN, a negative cell average or a lost mass."""
    mass, lo = diag[0], diag[1]
    if not np.all(np.isfinite(diag)):
        raise FloatingPointError(f"{name} became NaN/infinite at t = {t:.6g}: the run stops")
    if lo < -1e-12 * max(1.0, abs(diag[2])):
        raise FloatingPointError(
            f"{name} has a negative cell average ({lo:.3e}) at t = {t:.6g}: lower time.cfl"
        )
    if abs(mass - mass0) > 1e-9 * abs(mass0):
        raise FloatingPointError(
            f"{name} mass drifted from {mass0:.15g} to {mass:.15g} at t = {t:.6g}"
        )
