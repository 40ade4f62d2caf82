"""The paper's forgetting experiments as resumable sweeps (particles and the PDE).

Each experiment has a ``run_*`` function, presets (``tiny``, ``small``, ``paper``) and a
command line (:func:`cli`); :func:`run_sweep` is the resumable runner under all of them.
"""

from ._experiments import (
    cli,
    delta_distance,
    depth_case,
    load_presets,
    lora_kind_case,
    phase_case,
    point_mass_depth,
    random_adapter_case,
    resolve_params,
    run_depth,
    run_fig2,
    run_lora_kinds,
    run_phase_diagram,
    run_random_adapters,
    run_two_clusters,
    two_cluster_case,
)
from ._sweep import (
    Budget,
    SweepError,
    SweepResult,
    as_columns,
    case_key,
    format_value,
    parse_value,
    read_rows,
    run_sweep,
)

__all__ = [
    "cli",
    "resolve_params",
    "load_presets",
    "point_mass_depth",
    "delta_distance",
    "run_fig2",
    "run_phase_diagram",
    "run_random_adapters",
    "run_depth",
    "run_lora_kinds",
    "run_two_clusters",
    "phase_case",
    "random_adapter_case",
    "depth_case",
    "lora_kind_case",
    "two_cluster_case",
    "Budget",
    "SweepError",
    "SweepResult",
    "as_columns",
    "case_key",
    "format_value",
    "parse_value",
    "read_rows",
    "run_sweep",
]
