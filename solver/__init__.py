"""Mean-field self-attention dynamics on meshed spheres, and LoRA forgetting.

Flat public API (``import solver``); the private modules below follow the data path
mesh -> model -> velocity -> transport -> diagnostics -> I/O -> CLI.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# The DOLFINx wheel loads its MPI through mpi4py: import it before dolfinx/petsc4py.
try:  # pragma: no cover - depends on how DOLFINx was installed
    import dolfinx_solver  # noqa: F401
except ImportError:
    pass

from ._model import Model, Perturbation, RandomLoRA, ScheduledLoRA, TiedLoRA, low_rank
from ._velocity import NonlocalVelocity, attention_velocity, tangent_project

__all__ = [
    "__version__",
    "dolfinx_version",
    # model
    "Model",
    "Perturbation",
    "TiedLoRA",
    "RandomLoRA",
    "ScheduledLoRA",
    "low_rank",
    # velocity
    "attention_velocity",
    "NonlocalVelocity",
    "tangent_project",
]


def dolfinx_version() -> str:
    """Version string of the DOLFINx in use."""
    return importlib.import_module("dolfinx").__version__
