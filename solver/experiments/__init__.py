"""The paper's forgetting experiments (arXiv 2402.15415) as resumable sweeps (particles and
the PDE).

One module per experiment, each with its ``PRESETS`` (``tiny``, ``small``, ``paper``), its
case function(s), fit, plot and ``EXPERIMENT`` description:

1. :mod:`.fig2` — Fig 2: d = 2, n = 20, ``Q = K = V = I`` vs ``Ṽ = I − ε e_2e_2ᵀ``;
   particles and the PDE side by side (:func:`run_fig2`).
2. :mod:`.phase_diagram` — Fig 3: the δ-cluster state over (ε, t) (:func:`run_phase_diagram`).
3. :mod:`.random_adapters` — Thm 4.2: i.i.d. adapters per layer; ``W2`` against ``η_L / √L``
   (:func:`run_random_adapters`).
4. :mod:`.depth` — Thm 4.6: the critical depth ``T*`` against ε (:func:`run_depth`).
5. :mod:`.lora_kinds` — tied, random, orthogonal and aligned LoRA of one norm
   (:func:`run_lora_kinds`).
6. :mod:`.two_clusters` — Fig 4: two-point clustering with ``Q̃ = K̃ = √β e_1e_1ᵀ``
   (:func:`run_two_clusters`).
7. :mod:`.spectral_gap` — Prop 3.3, Remark 3.4 and T* with a spectral gap of ``V``
   (:func:`run_spectral_gap`).
8. :mod:`.linear_response` — Thm 4.2's ``c_L`` by exact linear response, and the most
   forgetful adapters (:func:`run_linear_response`).
9. :mod:`.real_models` — trained transformers (JAX, extra ``ml``) fine-tuned by LoRA, full
   and sparse fine-tuning: measured forgetting beside ``W2`` of the flows
   (:func:`run_real_models`).

Every ``run_*(params, out, comm=..., progress=..., budget=...)`` is :func:`run_experiment` on
the module's ``EXPERIMENT``: check, ``params.toml``, the sweeps (:func:`run_sweep`, CSV files
in ``out``, resumable), summary, figures, ``summary.json``; it returns the summary (``None``
when the case budget stopped it early). :func:`cli` is the command line of the
``scripts/exp_*.py`` scripts, :func:`load_presets` an experiment's presets by name.

Conventions: particles use RK4 with the projection retraction
(:func:`solver.simulate_particles`); ``W2`` is geodesic (radians), exact (``S^1``: quantiles;
``S^{d-1}``, d ≥ 3: network simplex); chordal distances ``|x − c|`` in the δ-cluster state.
"""

from . import (
    depth,
    fig2,
    linear_response,
    lora_kinds,
    phase_diagram,
    random_adapters,
    real_models,
    spectral_gap,
    two_clusters,
)
from ._common import point_mass_depth
from ._experiment import Experiment, Run, Sweep, run_experiment
from ._params import EXPERIMENT_NAMES, cli, load_presets, resolve_params
from ._stats import delta_distance
from ._sweep import (
    Budget,
    SweepError,
    SweepResult,
    as_columns,
    by_cost,
    case_key,
    format_value,
    parse_value,
    read_rows,
    run_sweep,
)
from .depth import depth_case, run_depth
from .fig2 import run_fig2
from .linear_response import run_linear_response
from .lora_kinds import lora_kind_case, run_lora_kinds
from .phase_diagram import phase_case, run_phase_diagram
from .random_adapters import random_adapter_case, run_random_adapters
from .real_models import run_real_models
from .spectral_gap import gap_case, run_spectral_gap
from .two_clusters import run_two_clusters, two_cluster_case

__all__ = [
    "cli",
    "resolve_params",
    "load_presets",
    "EXPERIMENT_NAMES",
    "point_mass_depth",
    "delta_distance",
    "Experiment",
    "Sweep",
    "Run",
    "run_experiment",
    "run_fig2",
    "run_phase_diagram",
    "run_random_adapters",
    "run_depth",
    "run_lora_kinds",
    "run_two_clusters",
    "run_spectral_gap",
    "run_linear_response",
    "run_real_models",
    "phase_case",
    "random_adapter_case",
    "depth_case",
    "lora_kind_case",
    "two_cluster_case",
    "gap_case",
    "fig2",
    "phase_diagram",
    "random_adapters",
    "depth",
    "lora_kinds",
    "two_clusters",
    "spectral_gap",
    "linear_response",
    "real_models",
    "Budget",
    "SweepError",
    "SweepResult",
    "as_columns",
    "case_key",
    "format_value",
    "parse_value",
    "read_rows",
    "by_cost",
    "run_sweep",
]
