"""Mean-field self-attention dynamics on meshed spheres, and LoRA forgetting.

Flat public API (``import solver``) over subpackages that follow the data path::

    mesh -> model -> velocity -> transport -> analysis -> io -> viz
    (parallel: rank/thread layout and reductions; particles, run, validate, cli, experiments)
"""

from __future__ import annotations

# `python -m solver`: a signal before the command takes over its signals is held until it can
# stop every rank alike (one line, 130/143), not a traceback from inside an import (_startup)
from . import _startup

if _startup.is_solver_command():
    _startup.record_signals()

import importlib
import os

# POT imports every array library it finds as a backend; the project hands it NumPy arrays
# only, and importing JAX (extra ``ml``) would add ~2.4 s to every ``import solver`` (measured
# 2026-12-07: 4.0 s against 1.6 s on the 2-core machine). An empty value keeps POT's JAX backend.
os.environ.setdefault("POT_BACKEND_DISABLE_JAX", "1")

__version__ = "0.1.0"

# The DOLFINx wheel loads its MPI through mpi4py: import it before dolfinx/petsc4py.
try:  # pragma: no cover - depends on how DOLFINx was installed
    import dolfinx_solver  # noqa: F401
except ImportError:
    pass

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
    "cluster_mass_outside",
    "cluster_reach",
    "atoms_distance",
    "CentroidHull",
    "atom_moments",
    "hull_w2",
    "point_mass_radius",
    "snap_to_clusters",
    "crossing_times",
    "measure_cluster_times",
    "density_clusters",
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
    "hyperbolic_centre",
    "hyperbolic_mean",
    "hyperbolic_poisson_kernel",
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

#: every public name -> its module, imported on first use (PEP 562): ``import solver`` and
#: ``python -m solver --help`` load no SciPy, POT, numba or DOLFINx; ``from solver import X``
#: and ``solver.X`` import what ``X`` needs
_LAZY = {
    **dict.fromkeys(
        (
            "Clusters",
            "SpectralCriterion",
            "atoms_distance",
            "CentroidHull",
            "atom_moments",
            "hull_w2",
            "WassersteinResult",
            "cluster_direction",
            "cluster_mass_outside",
            "cluster_reach",
            "cluster_times",
            "crossing_times",
            "delta_cluster_state",
            "density_clusters",
            "diagnostic_columns",
            "direction_drift",
            "find_clusters",
            "hyperbolic_centre",
            "hyperbolic_mean",
            "hyperbolic_poisson_kernel",
            "lipschitz_constants",
            "measure_cluster_times",
            "perturbation_speed",
            "point_mass_radius",
            "poisson_kernel",
            "poisson_radius",
            "snap_to_clusters",
            "spectral_criterion",
            "w2_bound",
            "w2_bound_constant",
            "wasserstein",
            "wasserstein_circle",
            "wasserstein_sphere",
        ),
        ".analysis",
    ),
    **dict.fromkeys(
        (
            "ConfigError",
            "build_initial",
            "build_model",
            "default_config_text",
            "load_config",
            "load_result",
            "read_csv",
        ),
        ".io",
    ),
    **dict.fromkeys(
        (
            "SphereMesh",
            "circle_mesh",
            "geodesic_distance",
            "icosphere",
            "load_mesh",
            "normalize",
            "sphere_mesh",
        ),
        ".mesh",
    ),
    **dict.fromkeys(
        (
            "Density",
            "Expression",
            "Mixture",
            "Model",
            "Perturbation",
            "RandomLoRA",
            "ScheduledLoRA",
            "TiedLoRA",
            "Uniform",
            "VonMisesFisher",
            "low_rank",
            "sphere_area",
        ),
        ".model",
    ),
    **dict.fromkeys(
        ("ParticleResult", "retract", "sample_particles", "simulate_particles"), ".particles"
    ),
    **dict.fromkeys(("Result", "evolve", "run_config"), ".run"),
    **dict.fromkeys(("validate",), ".validate"),
    **dict.fromkeys(("NonlocalVelocity", "attention_velocity", "tangent_project"), ".velocity"),
    **dict.fromkeys(
        ("animate_run", "plot_diagnostics", "plot_run", "read_vtx", "to_pyvista"), ".viz"
    ),
}

_SUBPACKAGES = {
    "analysis",
    "cli",
    "experiments",
    "io",
    "mesh",
    "model",
    "parallel",
    "particles",
    "run",
    "transport",
    "validate",
    "velocity",
    "viz",
    "nn",
}


def __getattr__(name: str):
    # DOLFINx is imported only when a mesh is needed, so particles, model and Wasserstein
    # work without it; nothing heavy is imported before a name is used.
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    if name in _SUBPACKAGES:  # ``solver.analysis`` after ``import solver``, as before
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'solver' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def dolfinx_version() -> str:
    """Version string of the DOLFINx in use."""
    return importlib.import_module("dolfinx").__version__
