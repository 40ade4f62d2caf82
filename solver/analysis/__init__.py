"""What a run is measured by: Wasserstein distances, clusters, stability bounds, exact
solutions, standard transport tests and the per-step diagnostics of a density.

Everything here is NumPy/SciPy/POT on arrays (the diagnostics and error norms reduce over MPI
ranks); nothing imports DOLFINx.
"""

from ..parallel import normalised_errors
from ._clusters import (
    Clusters,
    centre_distances,
    cluster_direction,
    cluster_mass_outside,
    cluster_reach,
    cluster_times,
    crossing_times,
    delta_cluster_state,
    density_clusters,
    direction_drift,
    find_clusters,
    mass_reach,
    measure_cluster_times,
    point_mass_radius,
    reach_candidates,
    snap_to_clusters,
)
from ._diagnostics import check_state, density_diagnostics, diagnostic_columns, drift_diagnostics
from ._exact import poisson_kernel, poisson_radius
from ._stability import (
    SpectralCriterion,
    WorstRankOne,
    growth_rate,
    lipschitz_constants,
    perturbation_speed,
    spectral_criterion,
    w2_bound,
    w2_bound_constant,
    worst_rank_one_drift,
)
from ._standard_tests import (
    StandardTest,
    cosine_bell,
    from_lonlat,
    gaussian_hills,
    lonlat,
    nair_lauritzen,
    williamson1,
)
from ._wasserstein import (
    EXACT_MAX_ATOMS,
    UNIT_TOL,
    WassersteinResult,
    wasserstein,
    wasserstein_circle,
    wasserstein_sphere,
)

__all__ = [
    "Clusters",
    "find_clusters",
    "delta_cluster_state",
    "cluster_times",
    "cluster_mass_outside",
    "cluster_reach",
    "centre_distances",
    "mass_reach",
    "reach_candidates",
    "point_mass_radius",
    "snap_to_clusters",
    "crossing_times",
    "measure_cluster_times",
    "density_clusters",
    "cluster_direction",
    "direction_drift",
    "diagnostic_columns",
    "density_diagnostics",
    "drift_diagnostics",
    "check_state",
    "poisson_kernel",
    "poisson_radius",
    "SpectralCriterion",
    "growth_rate",
    "lipschitz_constants",
    "perturbation_speed",
    "spectral_criterion",
    "w2_bound",
    "w2_bound_constant",
    "WorstRankOne",
    "worst_rank_one_drift",
    "StandardTest",
    "nair_lauritzen",
    "williamson1",
    "gaussian_hills",
    "cosine_bell",
    "lonlat",
    "from_lonlat",
    "normalised_errors",
    "WassersteinResult",
    "wasserstein",
    "wasserstein_circle",
    "wasserstein_sphere",
    "EXACT_MAX_ATOMS",
    "UNIT_TOL",
]
