"""Meshes of the unit sphere: generation (pure NumPy), DOLFINx meshes, curved (P2) geometry.

The generators and the geometry helpers need only NumPy; :class:`SphereMesh`,
:func:`sphere_mesh`, :func:`load_mesh` and the curved meshes import DOLFINx on first use.

Examples
--------
>>> from mpi4py import MPI
>>> import solver.mesh
>>> sm = solver.mesh.sphere_mesh(MPI.COMM_WORLD, sphere=2, refinement=2)  # doctest: +SKIP
>>> sm.num_cells  # doctest: +SKIP
320
"""

from __future__ import annotations

import importlib

from ._geometry import (
    MAX_ICOSPHERE_LEVEL,
    circle_mesh,
    geodesic_distance,
    icosphere,
    icosphere_cells,
    normalize,
)

_DOLFINX = {
    "SphereMesh": "._sphere",
    "sphere_mesh": "._sphere",
    "load_mesh": "._sphere",
    "partitioner": "._sphere",
    "ON_SPHERE_TOL": "._sphere",
    "CurvedSphereMesh": "._curved",
    "curved_sphere_mesh": "._curved",
    "curve": "._curved",
    "p2_cells": "._curved",
    "GEOMETRY_DEGREE": "._curved",
}

__all__ = [
    "MAX_ICOSPHERE_LEVEL",
    "circle_mesh",
    "geodesic_distance",
    "icosphere",
    "icosphere_cells",
    "normalize",
    *_DOLFINX,
]


def __getattr__(name: str):
    if name in _DOLFINX:  # DOLFINx only when a mesh object is asked for
        return getattr(importlib.import_module(_DOLFINX[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
