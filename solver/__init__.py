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

from ._clusters import (
    Clusters,
    cluster_direction,
    cluster_times,
    delta_cluster_state,
    direction_drift,
    find_clusters,
)
from ._config import ConfigError, build_initial, build_model, default_config_text, load_config
from ._diagnostics import diagnostic_columns
from ._exact import poisson_kernel, poisson_radius
from ._geometry import circle_mesh, geodesic_distance, icosphere, normalize
from ._initial import Density, Expression, Mixture, Uniform, VonMisesFisher, sphere_area
from ._io import load_result, read_csv
from ._model import Model, Perturbation, RandomLoRA, ScheduledLoRA, TiedLoRA, low_rank
from ._particles import ParticleResult, retract, sample_particles, simulate_particles
from ._stability import (
    SpectralCriterion,
    lipschitz_constants,
    perturbation_speed,
    spectral_criterion,
    w2_bound,
    w2_bound_constant,
)
from ._velocity import NonlocalVelocity, attention_velocity, tangent_project
from ._wasserstein import WassersteinResult, wasserstein, wasserstein_circle, wasserstein_sphere

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
    # particles
    "simulate_particles",
    "sample_particles",
    "ParticleResult",
    "retract",
    # Wasserstein distances and clusters
    "wasserstein",
    "wasserstein_circle",
    "wasserstein_sphere",
    "WassersteinResult",
    "Clusters",
    "find_clusters",
    "delta_cluster_state",
    "cluster_times",
    "cluster_direction",
    "direction_drift",
    # stability theory (docs/stability.md)
    "w2_bound",
    "w2_bound_constant",
    "lipschitz_constants",
    "perturbation_speed",
    "spectral_criterion",
    "SpectralCriterion",
    # exact solutions (verification)
    "poisson_kernel",
    "poisson_radius",
    # geometry and initial data
    "circle_mesh",
    "icosphere",
    "normalize",
    "geodesic_distance",
    "Density",
    "Uniform",
    "VonMisesFisher",
    "Mixture",
    "Expression",
    "sphere_area",
    # config and results
    "ConfigError",
    "load_config",
    "default_config_text",
    "build_model",
    "build_initial",
    "load_result",
    "read_csv",
    "diagnostic_columns",
    # DOLFINx-backed (imported on first use)
    "SphereMesh",
    "sphere_mesh",
    "load_mesh",
    "evolve",
    "run_config",
    "Result",
    "validate",
    # pictures (PyVista / matplotlib, imported on first use)
    "plot_run",
    "animate_run",
    "plot_diagnostics",
    "to_pyvista",
    "read_vtx",
]

_LAZY = {
    "SphereMesh": "._fem",
    "sphere_mesh": "._fem",
    "load_mesh": "._fem",
    "evolve": "._run",
    "run_config": "._run",
    "Result": "._run",
    "validate": "._validate",
    "plot_run": "._plot",
    "animate_run": "._plot",
    "plot_diagnostics": "._plot",
    "to_pyvista": "._plot",
    "read_vtx": "._plot",
}


def __getattr__(name: str):
    # DOLFINx is imported only when a mesh is needed, so particles, model and Wasserstein
    # work without it.
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'solver' has no attribute {name!r}")


def dolfinx_version() -> str:
    """Version string of the DOLFINx in use."""
    return importlib.import_module("dolfinx").__version__
