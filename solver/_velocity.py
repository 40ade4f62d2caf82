"""The nonlocal attention velocity ``X[μ]`` and its MPI distribution.

For a discrete measure ``μ = Σ_j w_j δ_{y_j}`` on the unit sphere ``S^{d-1}``,

.. math::

    X[μ](x) = P_x \\Big( \\frac{Σ_j w_j e^{y_jᵀ A x} V y_j}{Σ_j w_j e^{y_jᵀ A x}} \\Big),
    \\qquad P_x = I - x xᵀ,\\quad A = Kᵀ Q .

The ratio is a softmax over ``j`` with logits ``ℓ_ij = y_jᵀ A x_i + log w_j``; it is computed
with a max-shift (log-sum-exp), so it never overflows, whatever ``‖A‖`` is, and zero weights
drop out exactly. Targets are processed in blocks so memory stays bounded.

The PDE uses cell-centroid quadrature of ``μ`` (``y_j`` = cell centroids projected to the
sphere, ``w_j`` = ρ_j |cell_j|) and evaluates ``X`` at mesh vertices; the particle system
uses the particles as both targets and sources. Both go through :func:`attention_velocity`.
"""

from __future__ import annotations

import numpy as np

from ._threads import share_cores

__all__ = ["attention_velocity", "NonlocalVelocity", "tangent_project"]

#: Upper bound of the temporary (targets x sources) arrays per block, in bytes.
BLOCK_BYTES = 32 * 2**20


def tangent_project(x: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``P_x v = v - <x, v> x`` row by row (``x`` on the unit sphere)."""
    return v - np.einsum("ij,ij->i", x, v)[:, None] * x


def _log_weights(w: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(w > 0, np.log(np.where(w > 0, w, 1.0)), -np.inf)


def attention_velocity(
    x: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    A: np.ndarray,
    V: np.ndarray,
    *,
    block_bytes: int = BLOCK_BYTES,
) -> np.ndarray:
    """Attention velocity of ``μ = Σ_j w_j δ_{y_j}`` at the targets ``x``.

    Parameters
    ----------
    x : (m, d) array
        Targets on the unit sphere.
    y : (n, d) array
        Sources on the unit sphere.
    w : (n,) array
        Non-negative weights (need not sum to one: the softmax normalises).
    A, V : (d, d) arrays
        ``A = Kᵀ Q`` and the value matrix.

    Returns
    -------
    (m, d) array
        ``X[μ](x_i)``, tangent at ``x_i`` to round-off.
    """
    x = np.ascontiguousarray(x, dtype=float)
    y = np.ascontiguousarray(y, dtype=float)
    m, d = x.shape
    if y.ndim != 2 or y.shape[1] != d or w.shape != (y.shape[0],):
        raise ValueError(f"shapes do not match: x {x.shape}, y {y.shape}, w {w.shape}")
    out = np.empty_like(x)
    if m == 0:
        return out
    if not np.any(w > 0):
        raise ValueError("the measure has no mass: all source weights are zero")
    keep = w > 0
    if not np.any(A):  # uniform attention: the softmax is the normalised weights, O(n)
        mean = (w[keep] @ y[keep]) / w[keep].sum()
        return tangent_project(x, np.broadcast_to(V @ mean, x.shape))
    y, logw = y[keep], _log_weights(w[keep])
    Ay = y @ A  # row j: y_jᵀ A, so (x @ Ay.T)_ij = y_jᵀ A x_i
    Vy = y @ V.T  # row j: (V y_j)ᵀ
    block = max(1, int(block_bytes // (8 * max(1, y.shape[0]))))
    for s in range(0, m, block):
        xb = x[s : s + block]
        logits = xb @ Ay.T
        logits += logw
        logits -= logits.max(axis=1, keepdims=True)
        np.exp(logits, out=logits)
        num = logits @ Vy
        num /= logits.sum(axis=1, keepdims=True)
        out[s : s + block] = tangent_project(xb, num)
    return out


class NonlocalVelocity:
    """``X[μ]`` at this rank's targets against the sources of all ranks.

    The source points are gathered once (they are fixed: cell centroids or, for particles,
    re-gathered on every call); each call gathers the weights (``O(n)`` communication),
    then every rank evaluates its own targets against all sources. Sources are put in a
    rank-independent order (``keys``: global indices), so the sum over sources is done in
    the same order on any number of ranks and the result does not depend on the partition.

    Parameters
    ----------
    comm : mpi4py communicator
    targets : (m_local, d) array
        This rank's evaluation points.
    sources : (n_local, d) array or None
        This rank's source points (owned only, no ghosts). ``None`` for moving sources
        (particles): pass them to :meth:`__call__` instead.
    keys : (n_local,) int array
        Global indices of the local sources (a permutation of ``0..n-1`` over all ranks).
    method : {"direct", "fast", "auto"}
        Direct sum (the reference), an error-controlled fast method, or the fast method
        where it meets ``tolerance`` and the direct sum elsewhere.
    tolerance : float
        Requested relative error (max norm over targets) of the fast method.
    fast_options : dict, optional
        Extra keyword arguments of :class:`solver._fast_velocity.FastVelocity` (memory budget,
        chunk size, sample size, ...).

    Notes
    -----
    ``"fast"`` and ``"auto"`` use the truncated spherical-harmonic (``S^2``) / Fourier
    (``S^1``) expansion of :mod:`solver._fast_velocity` with an a-posteriori error bound on
    every call (rigorous truncation part, probabilistic round-off model; targets that miss it
    are recomputed by the direct sum) and a check against the direct sum on sampled targets
    for each new ``A``. They fall back to the
    direct sum, with a warning, where the kernel is too peaked (large ``‖A‖``). ``"auto"``
    also requires the expansion to be clearly cheaper than the direct sum, and uses the
    direct sum for moving sources (particles) and in dimensions other than 2 and 3;
    ``"fast"`` does the same there with a warning. :attr:`report` describes the last call.
    """

    METHODS = ("direct", "fast", "auto")

    def __init__(
        self,
        comm,
        targets: np.ndarray,
        sources: np.ndarray | None,
        keys: np.ndarray,
        *,
        method: str = "direct",
        tolerance: float = 1e-10,
        fast_options: dict | None = None,
    ):
        if method not in self.METHODS:
            raise ValueError(f"velocity.method must be one of {self.METHODS}, got {method!r}")
        if not (np.isfinite(tolerance) and 0 < tolerance < 1):
            raise ValueError(f"velocity.tolerance must be in (0, 1), got {tolerance}")
        self.method, self.tolerance = method, float(tolerance)
        self.comm = comm
        share_cores(comm)
        self.targets = np.ascontiguousarray(targets, dtype=float)
        self._counts = np.array(comm.allgather(len(keys)))
        allkeys = self._gather(np.asarray(keys, dtype=np.int64))
        self._order = np.argsort(allkeys, kind="stable")
        if not np.array_equal(allkeys[self._order], np.arange(allkeys.size)):
            raise ValueError("source keys must be a permutation of 0..n-1 across ranks")
        self.sources = None if sources is None else self.gather(sources)
        self._fast = None
        self._fast_options = dict(fast_options or {})
        self._warned_moving = False
        self.report: dict = {"method": "direct"}
        # the same on every rank (gathered sources), even where a rank has no targets
        d = self.sources.shape[1] if self.sources is not None else self.targets.shape[-1]
        if method != "direct" and self.sources is not None and d in (2, 3):
            from ._fast_velocity import FastVelocity

            self._fast = FastVelocity(
                comm,
                self.targets.reshape(-1, d),
                self.sources,
                tolerance=self.tolerance,
                auto=method == "auto",
                **self._fast_options,
            )
        elif method == "fast" and comm.rank == 0:
            import warnings

            warnings.warn(
                "velocity.method = 'fast' needs fixed sources on S^1 or S^2 "
                f"(got {'moving sources' if sources is None else f'd = {d}'}); "
                "using the direct sum",
                RuntimeWarning,
                stacklevel=2,
            )

    def _gather(self, a: np.ndarray) -> np.ndarray:
        a = np.ascontiguousarray(a)
        if self.comm.size == 1:
            return a.copy()
        shape = (int(self._counts.sum()),) + a.shape[1:]
        out = np.empty(shape, dtype=a.dtype)
        row = int(np.prod(a.shape[1:], dtype=int))
        self.comm.Allgatherv(a, [out, self._counts * row])
        return out

    def gather(self, local: np.ndarray) -> np.ndarray:
        """Gather a per-source array from all ranks in global-key order."""
        return self._gather(local)[self._order]

    def __call__(
        self, weights: np.ndarray, A: np.ndarray, V: np.ndarray, sources: np.ndarray | None = None
    ) -> np.ndarray:
        """Velocity at this rank's targets for the measure ``Σ_j w_j δ_{y_j}``."""
        w = self.gather(weights)
        if sources is None and self._fast is not None:
            out = self._fast(w, A, V)
            self.report = self._fast.report
            return out
        if sources is not None and self._fast is not None and not self._warned_moving:
            self._warned_moving = True
            if self.method == "fast" and self.comm.rank == 0:
                import warnings

                warnings.warn(
                    "moving sources: the fast method applies to fixed sources only; "
                    "using the direct sum",
                    RuntimeWarning,
                    stacklevel=2,
                )
        y = self.sources if sources is None else self.gather(sources)
        self.report = {"method": "direct"}
        return attention_velocity(self.targets, y, w, A, V)
