"""The upwind operator of a given DG degree on a sphere mesh."""

from __future__ import annotations

from ..mesh import SphereMesh
from ._dg0 import DG0Upwind

__all__ = ["make_operator"]


def make_operator(sm: SphereMesh, degree: int = 0, *, flux: str = "facet"):
    """:class:`DG0Upwind` (with the given ``flux``, ``"facet"`` or ``"donor"``) for
    ``degree = 0``, else :class:`DGUpwind` on the curved (P2) mesh."""
    if degree == 0:
        return DG0Upwind(sm, flux)
    from ._dg import DGUpwind  # curved (P2) geometry, Zhang-Shu limiter

    return DGUpwind(sm, degree)
