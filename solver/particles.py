r"""The finite particle system, any ``d``, with the same model and attention weights.

``geometry="sphere"`` (default): tokens on S^{d-1},
``dx_i/dt = X[μ^n](x_i)`` with ``μ^n = (1/n) Σ_j δ_{x_j}`` and ``X`` from
:func:`solver.attention_velocity`. The integrator is the classical RK4 written with the
projection retraction ``R_x(v) = (x + v) / |x + v|`` for every stage point and for the
update, so particles stay on the sphere to round-off while the scheme keeps order 4
(the retraction agrees with the exponential map to second order).

``geometry="euclidean"``: the static Euclidean model (no time rescaling: the weights do not
depend on ``t``), tokens ``z_i ∈ R^d`` (no projection, no normalisation),

.. math::

    \dot z_i = \sum_j P_{ij} V (z_j - z_i), \qquad
    P_{ij} = \frac{e^{\langle Q z_i, K z_j\rangle}}{\sum_k e^{\langle Q z_i, K z_k\rangle}}
    \quad (\langle Q z_i, K z_j\rangle = z_j^T A z_i,\ A = K^T Q),

integrated by the same RK4 with the plain update ``z + v`` in place of the retraction.

``geometry="euclidean-rescaled"``: the same with ``Q(t) = Q e^{tV}``, ``K(t) = K e^{tV}``,
i.e. ``P_ij ∝ exp(<Q e^{tV} z_i, K e^{tV} z_j>)``: ``z_i = e^{−tV} x_i`` for the unnormalised
``ẋ_i = Σ_j P_ij V x_j``, which is what the authors' public code (``Time_bifurcation.py``)
integrates. Needs a model without parameter jumps (``e^{tV}`` is the propagator of constant
``V``). The logits grow like ``e^{2 c t}`` (``c`` = largest real part of an eigenvalue of
``V``); that factor is applied after the row maxima are subtracted and capped at ``e^{700}``
(the softmax is a hardmax to round-off long before).

With ``comm`` the particles are split into contiguous blocks over the ranks; each rank
evaluates its block against all particles (gathered in global order, so the result does not
depend on the number of ranks).

Velocity (``geometry="sphere"``): ``velocity="direct"`` is the ``O(n²)`` direct sum
(:func:`solver.attention_velocity`, the reference, any ``d``; up to
:data:`~solver.velocity._direct.COMPILED_MAX_N` particles the same sum in compiled loops,
:func:`solver.velocity.equal_weight_velocity`, and on one rank the whole Runge-Kutta step in
one compiled call: the Python loop costs about ten times the arithmetic at n = 20);
``velocity="fast"`` the error-controlled plane-wave expansion of
:class:`solver.velocity.FastVelocity` on ``S^1`` and ``S^2`` (``d = 2, 3``) with sources =
targets = the particles (weights ``1/n``), the bases rebuilt at the new points on every
Runge-Kutta stage (:meth:`FastVelocity.set_points`): ``O(n r)`` per evaluation, ``r`` the
number of expansion terms, and on every evaluation ``max_i |X̃_i − X_i| <= tol max_i |X_i|``
(a-posteriori bound; targets that miss it are summed directly). ``velocity="auto"``
(default) takes the fast path for ``d = 2, 3`` on the sphere from :data:`FAST_MIN_N`
particles on (where it is measured to pay), the direct sum otherwise. The option names are
those of the PDE's ``[velocity] method`` / ``tolerance``.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import numpy as np
from scipy.linalg import expm

from .io import progress as progress_bar
from .io._config import MAX_STEPS
from .model import Density, Model, MultiHeadModel
from .model._lora import as_real
from .parallel import allgather_rows
from .transport import time_grid
from .velocity import ClusterVelocity, FastVelocity, equal_weight_velocity, num_terms
from .velocity._cluster import HAVE_NUMBA
from .velocity._direct import COMPILED_MAX_N, _nb

if _nb is not None:
    from .velocity._direct import _nb_rk4_sphere

__all__ = [
    "GEOMETRIES", "VELOCITY_METHODS", "FAST_MIN_N", "ParticleResult", "simulate_particles",
    "sample_particles", "retract", "euclidean_velocity",
]  # fmt: skip

GEOMETRIES = ("sphere", "euclidean", "euclidean-rescaled")
VELOCITY_METHODS = ("direct", "fast", "auto")
#: ``velocity="auto"``: the fast path from this many particles on (``d`` = 2, 3), the
#: measured crossover (scripts/bench_particles.py: ``A = I``, tolerance 1e-10, one thread;
#: between 250 and 500 particles on S^1 and on S^2).
FAST_MIN_N = {2: 500, 3: 500}
#: cost of the expansion per target and term (nanoseconds; one core, n = 20,000, degree 13:
#: 1.4 µs per target on S^2 (numba), 0.7 µs on S^1 (NumPy)), against which ``clusters``
#: weighs :data:`solver.velocity._cluster.COST_NS`
FAST_NS_PER_TERM = {3: 7.0, 2: 26.0}
#: :func:`sample_particles` refuses more (8 n d bytes of positions each)
MAX_SAMPLES = 10**8
BLOCK_BYTES = 1 << 24


def _one_blas_thread(on: bool):
    """One BLAS thread within the block when ``on`` (threadpoolctl), else nothing."""
    if on:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # pragma: no cover - a dependency of the package
            return contextlib.nullcontext()
        return threadpool_limits(limits=1, user_api="blas")
    return contextlib.nullcontext()


def retract(x: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Projection retraction ``(x + v) / |x + v|`` (row by row)."""
    y = x + v
    return y / np.linalg.norm(y, axis=1, keepdims=True)


def euclidean_velocity(
    z: np.ndarray, y: np.ndarray, A: np.ndarray, V: np.ndarray, scale: float = 1.0
) -> np.ndarray:
    """Velocity of the Euclidean model at the targets ``z`` (m, d) for the equally weighted
    sources ``y`` (n, d): ``Σ_j P_ij V (y_j − z_i)``, ``P_ij ∝ e^{scale · y_jᵀ A z_i}``
    (the softmax sums to one, so this is ``V (Σ_j P_ij y_j − z_i)``)."""
    out = np.empty_like(z)
    Ay = y @ A  # row j: y_jᵀ A
    block = max(1, int(BLOCK_BYTES // (8 * max(1, len(y)))))
    for s in range(0, len(z), block):
        zb = z[s : s + block]
        logits = zb @ Ay.T
        logits -= logits.max(axis=1, keepdims=True)
        logits *= scale
        np.exp(logits, out=logits)
        mean = (logits @ y) / logits.sum(axis=1, keepdims=True)
        out[s : s + block] = (mean - zb) @ V.T
    return out


def sample_particles(density: Density, n: int, d: int, seed: int = 0) -> np.ndarray:
    """``n`` i.i.d. samples on S^{d-1} of the same density the PDE starts from."""
    n = as_real("n (number of particles)", n, integer=True, positive=True)
    if n > MAX_SAMPLES:
        raise ValueError(f"n = {n:.3g} particles need {n * d * 8 / 1e9:.3g} GB (limit "
                         f"{MAX_SAMPLES:.0e} particles): lower n")  # fmt: skip
    if as_real("d", d, integer=True) < 2:
        raise ValueError(f"d must be >= 2 (points on S^(d-1)), got {d}")
    return density.sample(int(n), int(d), np.random.default_rng(seed))


@dataclass
class ParticleResult:
    """``times`` (nt,), ``positions`` (nt, n, d) at the saved times; ``velocity``: how the
    velocity was evaluated (``method``; for the fast path also ``calls``, ``fast_calls``,
    ``max_degree``, ``max_bound`` (the largest a-posteriori error bound relative to
    ``max |X|``), ``direct_targets`` (summed over calls) and ``reason`` of any fall-back; with
    ``clusters``: ``cluster_steps`` (steps whose partition was accepted), ``cluster_calls``
    (evaluations by the cluster expansion, counted in ``calls`` but not in ``fast_calls``),
    ``max_clusters`` and ``cluster_bound``, its largest relative bound))."""

    times: np.ndarray
    positions: np.ndarray
    velocity: dict = field(default_factory=lambda: {"method": "direct"})

    def mean(self) -> np.ndarray:
        """Empirical first moment ``(1/n) Σ_i x_i(t)`` at each saved time, shape (nt, d)."""
        return self.positions.mean(axis=1)


def simulate_particles(
    model: Model,
    x0: np.ndarray,
    T: float,
    *,
    dt: float = 0.01,
    save_every: float | None = None,
    comm=None,
    progress: bool = False,
    geometry: str = "sphere",
    velocity: str = "auto",
    tolerance: float = 1e-10,
    fast_options: dict | None = None,
    clusters: bool = True,
) -> ParticleResult:
    """Integrate the particle system from ``x0`` (n, d) to time ``T``.

    Parameters are frozen over each step at the step's midpoint (steps land on the model's
    parameter jumps), as in the PDE solver. ``geometry``: ``"sphere"`` (tokens on S^{d-1},
    ``x0`` of unit rows), ``"euclidean"`` (``ż_i = Σ_j P_ij V (z_j − z_i)`` in ``R^d``, any
    finite ``x0``) or ``"euclidean-rescaled"`` (the same with ``Q e^{tV}``, ``K e^{tV}``: the
    authors' code); see the module docstring.

    ``velocity``: ``"direct"`` (the ``O(n²)`` sum, any ``d``), ``"fast"`` (the expansion,
    ``O(n r)``: sphere, ``d = 2, 3`` only; every evaluation within ``tolerance`` relative to
    ``max_i |X_i|``) or ``"auto"``: fast for ``d = 2, 3`` on the sphere when ``n >=
    FAST_MIN_N[d]`` (500; measured with ``A = I``, tolerance 1e-10, one thread each: the
    crossover lies between ``n = 250``, where the direct sum is 1.2x faster, and ``n = 500``,
    where the fast path is 2.1x (S^1) / 2.6x (S^2) faster; 24x at 2,000 and about 280x at
    20,000, docs/benchmarks/particles.md) unless the expansion's cost model says it would not
    pay for this ``‖A‖`` (then the direct sum, silently); the direct sum otherwise. Positions
    from the fast path differ from the direct sum's by at most about ``tolerance · ‖V‖
    (e^{LT} − 1) / L`` (``L`` the Lipschitz constant of the particle field, see
    tests/test_particles.py). ``fast_options``: extra keyword arguments of
    :class:`~solver.velocity.FastVelocity` (``backend``, ``threads``, ``chunk``, ...).

    ``clusters`` (with the fast path, numba installed): at the start of every step the
    particles are grouped (:func:`solver.velocity.grid_clusters`); when they sit in few tight
    clusters (after the collapse) the step's four evaluations take the cluster expansion of
    :class:`solver.velocity.ClusterVelocity` (each cluster one Taylor-moment term, ``O(n K)``
    for ``K`` clusters, against ``O(n (deg + 1)²)``), under the same guarantee
    ``max_i |X̃_i − X_i| <= tolerance · max_i |X_i|`` (a-posteriori bound per target, targets
    that miss it summed directly; a call where more than 1 % miss it goes to the expansion;
    measured 2.6x (2 ranks) to 3.5x (1 rank) faster per step than the expansion once
    n = 100,000 tokens on S^2 have collapsed, docs/benchmarks/particles_scale.md).
    ``False``: the expansion alone.
    """
    if geometry not in GEOMETRIES:
        raise ValueError(f"geometry must be one of {GEOMETRIES}, got {geometry!r}")
    if velocity not in VELOCITY_METHODS:
        raise ValueError(f"velocity must be one of {VELOCITY_METHODS}, got {velocity!r}")
    if not (np.isfinite(tolerance) and 0 < tolerance < 1):
        raise ValueError(f"tolerance (of the fast velocity) must be in (0, 1), got {tolerance}")
    sphere = geometry == "sphere"
    rescaled = geometry == "euclidean-rescaled"
    if not isinstance(model, Model):
        raise TypeError(f"model must be a solver.Model, got {type(model).__name__}")
    T = as_real("T", T, positive=True)
    if T / as_real("dt", dt, positive=True) > MAX_STEPS:
        raise ValueError(f"dt = {dt!r} makes {T / dt:.3g} steps to T = {T:g} (limit "
                         f"{MAX_STEPS:.0e}): raise dt")  # fmt: skip
    if save_every is not None and T / as_real("save_every", save_every, positive=True) > MAX_STEPS:
        raise ValueError(f"save_every = {save_every!r} makes {T / save_every:.3g} saves: raise it")
    if np.iscomplexobj(x0):
        raise TypeError("x0 must be real, got complex entries")
    x0 = np.asarray(x0, dtype=float)
    if x0.ndim != 2 or x0.shape[1] != model.d or len(x0) == 0:
        raise ValueError(f"x0 must be (n, {model.d}) with n >= 1 for this model, got shape "
                         f"{x0.shape}")  # fmt: skip
    if not np.all(np.isfinite(x0)):
        raise ValueError("x0 contains NaN or infinite entries")
    if sphere and np.abs(np.linalg.norm(x0, axis=1) - 1).max() > 1e-8:
        raise ValueError(
            "x0: every particle must lie on the unit sphere (|x| = 1); "
            "pass geometry='euclidean' for tokens in R^d"
        )
    n = len(x0)
    expansion = sphere and model.d in (2, 3)  # S^1 / S^2: where the fast path exists
    if velocity == "fast" and not expansion:
        raise ValueError(
            f"velocity='fast' needs geometry='sphere' and d = 2 or 3 (S^1, S^2), got "
            f"geometry={geometry!r}, d = {model.d}; pass velocity='direct' (or 'auto', which "
            "takes the direct sum there)"
        )
    if not sphere and isinstance(model, MultiHeadModel):
        raise ValueError(f"geometry={geometry!r} takes one head: several heads "
                         "(MultiHeadModel) run on the sphere only")  # fmt: skip
    if rescaled and len(model.breakpoints(T)):
        raise ValueError("geometry='euclidean-rescaled' needs parameters without jumps (e^{tV})")
    size, rank = (1, 0) if comm is None else (comm.size, comm.rank)
    bounds = np.linspace(0, n, size + 1).astype(int)
    counts = np.diff(bounds)
    lo, hi = bounds[rank], bounds[rank + 1]
    w = np.full(n, 1.0 / n)

    def gather(xl: np.ndarray) -> np.ndarray:
        return xl if comm is None or size == 1 else allgather_rows(comm, xl, counts)

    if not isinstance(clusters, (bool, np.bool_)):
        raise TypeError(f"clusters must be True or False, got {clusters!r}")
    fast = None
    if velocity == "fast" or (velocity == "auto" and expansion and n >= FAST_MIN_N[model.d]):
        from mpi4py import MPI

        fast = FastVelocity(MPI.COMM_SELF if comm is None else comm, x0[lo:hi], x0,
                            tolerance=tolerance, auto=velocity == "auto",
                            **dict(fast_options or {}))  # fmt: skip
    info = {"method": "direct"} if fast is None else {
        "method": "fast", "tolerance": float(tolerance), "backend": fast.backend, "calls": 0,
        "fast_calls": 0, "max_degree": 0, "max_bound": 0.0, "direct_targets": 0,
    }  # fmt: skip
    cluster = None
    if fast is not None and clusters and HAVE_NUMBA:
        cluster = ClusterVelocity(fast.comm, x0[lo:hi], x0, tolerance=tolerance, target_offset=lo)
        info.update(cluster_steps=0, cluster_calls=0, max_clusters=0, cluster_bound=0.0)
    use_cluster = [False]  # this step: the cluster expansion (set at its first stage)

    last = [None, None]  # the stage's positions and their gathered copy (one gather a stage)

    def gather_stage(xl):
        if last[0] is not xl:
            last[0], last[1] = xl, gather(xl)
        return last[1]

    def fast_velocity(xl, A, V):
        fast.set_points(xl, gather_stage(xl))
        out = fast(w, A, V)
        rep = fast.report
        info["calls"] += 1
        if rep["method"] == "fast":
            info["fast_calls"] += 1
            info["max_degree"] = max(info["max_degree"], int(rep["degree"]))
            info["max_bound"] = max(info["max_bound"], float(rep["bound"]))
            info["direct_targets"] += int(rep["direct_targets"])
        elif "reason" in rep:
            info["reason"] = rep["reason"]
        return out

    def cluster_velocity(xl, A, V, first):
        if not (first or use_cluster[0]):
            return None
        cluster.set_points(xl, gather_stage(xl))
        if first:  # pays when cheaper than half the expansion at its degree (cost models)
            deg = max(info["max_degree"], 12)
            cluster.max_cost = 0.5 * FAST_NS_PER_TERM[model.d] * num_terms(deg, model.d)
            use_cluster[0] = cluster.partition(A)
            if use_cluster[0]:
                info["cluster_steps"] += 1
        if not use_cluster[0]:
            return None
        out = cluster(w, A, V)
        if out is None:  # too many targets missed the bound: the expansion, this step
            use_cluster[0] = False
            return None
        rep = cluster.report
        info["calls"] += 1
        info["cluster_calls"] += 1
        info["max_clusters"] = max(info["max_clusters"], int(rep["clusters"]))
        info["cluster_bound"] = max(info["cluster_bound"], float(rep["bound"]))
        info["direct_targets"] += int(rep["direct_targets"])
        return out

    def vel(xl, A, V, t, first=False):
        if cluster is not None:
            out = cluster_velocity(xl, A, V, first)
            if out is not None:
                return out
        if fast is not None:
            return fast_velocity(xl, A, V)
        if sphere:
            return equal_weight_velocity(xl, gather(xl), A, V)
        if not rescaled:
            return euclidean_velocity(xl, gather(xl), A, V)
        c = float(np.linalg.eigvals(V).real.max())
        E = expm(t * (V - c * np.eye(model.d)))  # e^{tV} = e^{ct} E
        return euclidean_velocity(xl, gather(xl), E.T @ A @ E, V, math.exp(min(2 * c * t, 700)))

    step = retract if sphere else np.add

    times, saved = time_grid(T, dt, save_every, model.breakpoints(T))
    x = x0[lo:hi].copy()
    snaps = [x0.copy()]
    saved_set = set(int(s) for s in saved[1:])
    bar = progress_bar(len(times) - 1, disable=(not progress) or rank != 0, delay=2.0,
                       desc="particles", unit="step")  # fmt: skip
    # all (few) particles here, direct sum on the sphere: each step one compiled call
    compiled = (
        _nb is not None
        and sphere
        and fast is None
        and size == 1
        and n <= COMPILED_MAX_N
        and np.ndim(model.parameters(0.0)[0]) == 2
    )  # several heads: the Python loop
    # the fast path's products are thin ((n, d) by (d, d)): BLAS threads only add their
    # start-up and, on a loaded machine, their spin-waits (one (100000, 3) @ (3, 3) at load 5
    # on 2 cores: 3 to 50 ms of CPU with two threads, 1.2 ms with one)
    with _one_blas_thread(fast is not None):
        for k in range(len(times) - 1):
            t, h = times[k], times[k + 1] - times[k]
            A, V = model.parameters(t + 0.5 * h)
            if compiled:
                x = _nb_rk4_sphere(x, np.ascontiguousarray(A, dtype=float),
                                   np.ascontiguousarray(V, dtype=float), float(h))  # fmt: skip
            else:
                k1 = vel(x, A, V, t, first=True)
                k2 = vel(step(x, 0.5 * h * k1), A, V, t + 0.5 * h)
                k3 = vel(step(x, 0.5 * h * k2), A, V, t + 0.5 * h)
                k4 = vel(step(x, h * k3), A, V, t + h)
                x = step(x, h / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4))
            if k + 1 in saved_set:
                snaps.append(gather(x).copy())
            bar.update(1)
    bar.close()
    return ParticleResult(times=times[saved], positions=np.array(snaps), velocity=info)
