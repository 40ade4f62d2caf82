"""The nonlocal attention velocity ``X[μ]``: direct sum, fast expansion, MPI distribution.

* :func:`attention_velocity` — the direct sum (the reference), any dimension;
  :func:`equal_weight_velocity` the same for equally weighted sources in compiled loops;
* :class:`FastVelocity` — the error-controlled Fourier (S^1) / spherical-harmonic (S^2)
  expansion, for fixed sources or, through :meth:`FastVelocity.set_points`, moving ones
  (the particles of :func:`solver.simulate_particles`);
* :class:`ClusterVelocity` — collapsed particles: each tight cluster one Taylor-moment term
  (error-controlled like the expansion), :func:`grid_clusters` the grouping;
* :class:`NonlocalVelocity` — targets of this rank against the sources of all ranks, in a
  rank-independent order, by either method.

Examples
--------
>>> import numpy as np
>>> from solver.velocity import attention_velocity
>>> x = np.array([[1.0, 0.0]]); y = np.array([[0.0, 1.0]])
>>> attention_velocity(x, y, np.ones(1), np.eye(2), np.eye(2))
array([[0., 1.]])
"""

from ._cluster import ClusterVelocity, grid_clusters
from ._direct import attention_velocity, equal_weight_velocity, tangent_project
from ._fast import FastVelocity
from ._harmonics import degree_weights, num_terms, sphere_basis, truncation_tails
from ._nonlocal import NonlocalVelocity

__all__ = [
    "attention_velocity",
    "equal_weight_velocity",
    "tangent_project",
    "NonlocalVelocity",
    "FastVelocity",
    "ClusterVelocity",
    "grid_clusters",
    "num_terms",
    "sphere_basis",
    "degree_weights",
    "truncation_tails",
]
