"""A smooth measure collapsing into a drifting cluster (DG0, the default flux): the cluster's
position converges to the particles' under refinement.

While a collapsing cluster is a few cells wide, the facet-velocity part of the flux moves its
first moment with an error ``O(h / σ)`` (``σ`` the cluster's width): summed over the collapse
(``σ`` shrinking exponentially) that is ``O(h / σ_w)``, ``σ_w`` the width at which the
first-moment correction takes over. With fixed thresholds ``σ_w`` is a fixed number of cells
and the cluster trailed the particles' by 1.4e-3 rad on every mesh; the thresholds now widen
as ``h^{1/2}`` (``transport/_dg0.py``, ``cluster_scale``), so ``σ_w / h`` grows as ``h``
shrinks and the lag decreases.

Case: the phase diagram's tiny S^1 preset, perturbed flow ``ε = 0.0218``, ``T = 12`` (the
cluster collapses at t ≈ 4 - 7 and drifts 0.009 rad per unit time after). Measured
2026-12-08: the cluster's mean angle minus the particles' (n = 2,000 at the quantiles of
ρ0, dt = 0.05: n = 4,000, dt = 0.02 moves it by 1e-6) −8.85e-4 / −5.59e-4 / −5.14e-4 at
256 / 1,024 / 2,048 cells; with fixed thresholds −1.42e-3 / −1.44e-3 / −1.6e-3.
"""

from __future__ import annotations

import numpy as np
import pytest
from mpi4py import MPI

import solver
from solver.experiments._common import e2_perturbation, identity_model
from solver.experiments._params import load_presets
from solver.experiments.phase_diagram import phase_pde_initial, quantile_circle

EPS, T = 0.0218, 12.0
#: the window around the particles' cluster over which the mean angle is taken
WINDOW = 0.3


def _angle(m) -> float:
    return float(np.arctan2(m[1], m[0]) % (2 * np.pi))


def _wrap(a):
    return (a + np.pi) % (2 * np.pi) - np.pi


@pytest.fixture(scope="module")
def case():
    p = load_presets("phase_diagram")["tiny"]
    init = phase_pde_initial(p, 2)
    model = identity_model(2).perturbed(e2_perturbation(2, EPS))
    x = solver.simulate_particles(model, quantile_circle(init, 2000), T, dt=0.05).positions[-1]
    th = np.arctan2(x[:, 1], x[:, 0]) % (2 * np.pi)
    hist, edges = np.histogram(th, 720)
    mode = 0.5 * (edges[hist.argmax()] + edges[hist.argmax() + 1])
    part = _angle(x[np.abs(_wrap(th - mode)) < WINDOW].mean(axis=0))
    return init, model, mode, part


def cluster_angle(case, cells: int) -> float:
    init, model, mode, _ = case
    sm = solver.sphere_mesh(MPI.COMM_SELF, 1, cells=cells)
    r = solver.evolve(sm, model, init, T, w2=False, progress=False, cluster_delta=None,
                      save_every=T)  # fmt: skip
    c = r.centroids
    sel = np.abs(_wrap(np.arctan2(c[:, 1], c[:, 0]) - mode)) < WINDOW
    rho = np.asarray(r.density[-1])
    return _angle((rho[sel] * r.areas[sel]) @ c[sel])


def test_collapsing_cluster_converges_to_the_particles(case):
    """The lag at 1,024 cells is below 0.75 of the lag at 256 (the estimate ``h^{1/4}`` gives
    0.71, measured 0.63; fixed thresholds: 1.01) and below 1e-3 rad (measured 5.6e-4; fixed
    thresholds 1.44e-3); the cluster trails, as the analysis says (both lags negative)."""
    part = case[3]
    lag = [cluster_angle(case, n) - part for n in (256, 1024)]
    print(f"cluster angle minus the particles' at 256 / 1,024 cells: {lag[0]:+.3e} / "
          f"{lag[1]:+.3e} (ratio {lag[1] / lag[0]:.2f})")  # fmt: skip
    assert lag[0] < 0 and lag[1] < 0
    assert abs(lag[1]) <= 0.75 * abs(lag[0])
    assert abs(lag[1]) <= 1e-3
