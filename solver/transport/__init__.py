"""Transport of a density by a velocity field: upwind DG operators and time stepping.

* :func:`time_grid`, :class:`Clock`, :func:`ssp_rk3_step` — step times landing on saves and
  parameter jumps (all at once, or one adaptive step at a time),
  the Shu-Osher SSP-RK3 step (pure NumPy, shared with the particles);
* :class:`NonlocalField`, :class:`PrescribedField`, :class:`Transport`, :func:`advance` —
  a density's velocity and its SSP-RK3 step under an operator;
* :class:`DG0Upwind` (finite volumes) and :class:`DGUpwind` (DG1/DG2 on curved cells, with a
  Zhang-Shu limiter), and :func:`make_operator` — in DOLFINx, imported on first use.
"""

from __future__ import annotations

import importlib

from ._fields import NonlocalField, PrescribedField, Transport, advance
from ._stepping import Clock, ssp_rk3_step, time_grid

_DOLFINX = {
    "DG0Upwind": "._dg0",
    "DGUpwind": "._dg",
    "MAX_DEGREE": "._dg",
    "CFL_FACTOR": "._dg",
    "make_operator": "._operator",
}

__all__ = [
    "time_grid",
    "Clock",
    "ssp_rk3_step",
    "NonlocalField",
    "PrescribedField",
    "Transport",
    "advance",
    *_DOLFINX,
]


def __getattr__(name: str):
    if name in _DOLFINX:  # DOLFINx only when an operator is asked for
        return getattr(importlib.import_module(_DOLFINX[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
