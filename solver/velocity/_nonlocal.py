"""``X[μ]`` at this rank's targets against the sources of all ranks (the MPI distribution).

Sources are gathered in a rank-independent (global-key) order, so sums over sources are done
in the same order on any number of ranks; the direct sum (:func:`attention_velocity`) or the
fast expansion (:class:`FastVelocity`) evaluates them.
"""

from __future__ import annotations

import numpy as np

from ..parallel import allgather_rows, share_cores
from ._active import ActiveSum
from ._direct import attention_velocity
from ._fast import FastVelocity
from ._harmonics import num_terms

__all__ = ["NonlocalVelocity"]


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
        Extra keyword arguments of :class:`solver.velocity.FastVelocity` (memory budget,
        chunk size, sample size, ...).

    Notes
    -----
    ``"fast"`` and ``"auto"`` use the truncated spherical-harmonic (``S^2``) / Fourier
    (``S^1``) expansion of :mod:`solver.velocity` with an a-posteriori error bound on
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
        self._active = None  # ActiveSum, made at the first call of evaluate_active
        #: whether every target was active at the last :meth:`evaluate_active` (a spread
        #: density: the cells that hold all but the tail and their ring are the whole mesh;
        #: the same on every rank)
        self.all_active = True
        self._n_targets = int(comm.allreduce(len(self.targets)))
        self.report: dict = {"method": "direct"}
        # the same on every rank (gathered sources), even where a rank has no targets
        d = self.sources.shape[1] if self.sources is not None else self.targets.shape[-1]
        if method != "direct" and self.sources is not None and d in (2, 3):
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

    def get_state(self) -> list[dict]:
        """What a resumed run needs to evaluate exactly as before (the fast method's degrees)."""
        return self._fast.get_state() if self._fast is not None else []

    def set_state(self, state: list[dict]) -> None:
        if self._fast is not None:
            self._fast.set_state(state)

    def _gather(self, a: np.ndarray) -> np.ndarray:
        return allgather_rows(self.comm, a, self._counts)

    def gather(self, local: np.ndarray) -> np.ndarray:
        """Gather a per-source array from all ranks in global-key order (one rank: no
        communication, one reordering copy)."""
        if self.comm.size == 1:
            return np.asarray(local)[self._order]
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

    #: cost model of :meth:`evaluate_active`, seconds per unit (measured on one core with
    #: scripts/bench_active.py: the compiled direct sum ~4 ns per target-source pair, the
    #: fast expansion's moments and targets ~1 ns per point and term)
    PAIR_COST, TERM_COST = 4e-9, 1e-9

    def evaluate_active(
        self, weights: np.ndarray, A: np.ndarray, V: np.ndarray, active: np.ndarray,
        gathered: tuple | None = None,
    ) -> np.ndarray:  # fmt: skip
        """Velocity at the active targets (``active``: this rank's boolean mask over its
        targets) from the sources that hold all but an error-controlled tail of the mass
        (:class:`solver.velocity._active.ActiveSum`); zero at the other targets.

        Where the full evaluation is cheaper (cost model :attr:`PAIR_COST`,
        :attr:`TERM_COST` against the fast expansion at its current degree), it is done
        instead and every target gets its velocity. The error at the active targets is
        within :attr:`tolerance` (relative, max norm over the targets evaluated) either way.
        Collective; fixed sources, one head only (else the full evaluation).
        ``gathered``: ``(weights gathered in key order, global number of active targets)``
        where the caller has them (:meth:`solver.transport._active.ActiveTargets.keyed`: no
        second gather, no count reduction).
        """
        active = np.asarray(active, dtype=bool)
        if active.shape != (len(self.targets),):
            raise ValueError(f"active must be a boolean mask of shape ({len(self.targets)},), "
                             f"got {active.shape}")  # fmt: skip
        if self.sources is None or np.ndim(A) != 2:
            return self(weights, A, V)
        idx = np.flatnonzero(active)
        if gathered is not None:
            w, nt = gathered[0], int(gathered[1])
        else:
            w = self.gather(weights)
            nt = int(self.comm.allreduce(idx.size)) if self.comm.size > 1 else idx.size
        if self._active is not None and "sources" in self._active.report:
            ns = self._active.report["sources"]  # the last call's active sources
        else:
            ns = int(np.count_nonzero(w > 0))
        if self._fast is not None:
            st = self._fast._setups.get(np.ascontiguousarray(A, dtype=float).tobytes())
            if st is None or (st.mode == "fast" and st.new):  # degree not known yet
                full = True
            elif st.mode == "fast":
                terms = num_terms(st.n_use, self._fast.d)
                full = self.TERM_COST * (self._fast.N + self._fast.M) * terms < (
                    self.PAIR_COST * nt * ns
                )
            else:  # the fast method uses the direct sum for this A
                full = False
            if full:
                self.all_active = nt == self._n_targets
                out = self._fast(w, A, V)
                self.report = self._fast.report
                return out
        self.all_active = nt == self._n_targets
        if self._active is None:
            self._active = ActiveSum(self.comm, self.sources, tolerance=self.tolerance)
        out = np.zeros_like(self.targets)
        out[idx] = self._active(w, self.targets[idx], A, V)
        self.report = dict(self._active.report, targets=nt)
        return out
