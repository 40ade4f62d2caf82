"""The two back-ends of :class:`~solver.velocity.FastVelocity`: the same sums, two ways.

Both have the same methods, so that :class:`FastVelocity` picks one in ``__init__`` and never
asks again which it has:

* ``table_bytes(terms, rows)`` — memory of the tabulated factors (``terms`` per row);
* ``prepare(st, n)`` — make the target side of a per-``A`` set-up ``st`` ready for degree
  ``n``;
* ``moments(n, W)`` — ``mom[c, k] = Σ_{j in chunk c} ψ_k(y_j) W_j`` for this rank's chunks of
  the key-ordered sources, shape ``(C_local, r_n, W.shape[1])``;
* ``targets(st, mom, n)`` — ``out_i = Σ_k b_{l(k)}(r_i) ψ_k(û_i) mom_k`` at this rank's
  targets;
* ``trim(st, n)`` — drop target-side factors above degree ``n + 2``;
* ``set_sources(points)`` — new positions of the same sources (moving particles).

:class:`NumbaBackend` (``S^2``): the harmonics generated on the fly by the compiled kernels of
:mod:`solver.velocity._kernels` (compute-bound, no tables). :class:`NumPyBackend`: ``ψ``
(sources) and ``φ_k(x_i) = b_{l(k)}(r_i) ψ_k(û_i)`` (targets, per ``A``) tabulated, then two
skinny BLAS products (memory-bound; ``8 (M + N) r_n`` bytes).
"""

from __future__ import annotations

import hashlib
import weakref

import numpy as np

from ._harmonics import degree_weights, num_terms, recurrence_tables, sphere_basis, target_basis
from ._kernels import kernels, max_threads, numba_threads

__all__ = ["NumbaBackend", "NumPyBackend"]


def _own_sources(points: np.ndarray, lo: int, hi: int, chunk: int) -> np.ndarray:
    """The sources of chunks ``lo..hi-1``, padded to ``(hi - lo) · chunk`` rows by a unit vector
    (the padding has zero weight)."""
    pts = np.zeros(((hi - lo) * chunk, points.shape[1]))
    pts[:, -1] = 1.0
    own = points[lo * chunk : min(hi * chunk, len(points))]
    pts[: len(own)] = own
    return pts


class NumbaBackend:
    """Harmonics generated in compiled loops (``S^2``), ``threads`` numba threads per rank."""

    name = "numba"

    def __init__(self, points: np.ndarray, lo: int, hi: int, chunk: int, threads: int):
        self._pts = _own_sources(points, lo, hi, chunk)
        self.chunk, self._rows = chunk, (lo, hi)
        self._rt = recurrence_tables(0)
        self.threads = int(min(max(1, threads), max_threads()))
        self.kernels = kernels(self.threads)

    def table_bytes(self, terms: int, rows: int) -> int:
        return 0

    def set_sources(self, points: np.ndarray) -> None:
        """This rank's chunks of the moved sources (the harmonics are generated per call)."""
        self._pts = _own_sources(points, *self._rows, self.chunk)

    def prepare(self, st, n: int) -> None:
        """Degree weights ``st.bw = b_l(r_i)``; recurrence tables grown to degree ``n``."""
        st.bw = np.ascontiguousarray(degree_weights(st.ri, n, 3))
        if n >= self._rt[0].shape[0]:
            self._rt = recurrence_tables(max(n, 2 * self._rt[0].shape[0]))

    def moments(self, n: int, W: np.ndarray) -> np.ndarray:
        with numba_threads(self.threads):
            return self.kernels[0](self._pts, W, n, self.chunk, *self._rt)

    def targets(self, st, mom: np.ndarray, n: int) -> np.ndarray:
        with numba_threads(self.threads):
            return self.kernels[1](st.uh, st.bw, mom, n, *self._rt)

    def trim(self, st, n: int) -> None:
        pass  # nothing tabulated


class NumPyBackend:
    """Tabulated bases and BLAS products; the source table is shared between evaluators on the
    same sources and partition (the model and its perturbed copy use the same centroids)."""

    name = "numpy"

    def __init__(self, points: np.ndarray, P: int, p: int, lo: int, hi: int, chunk: int):
        self.d, self.chunk, self.count, self._rows = points.shape[1], chunk, hi - lo, (lo, hi)
        key = (P, p, chunk, points.shape, hashlib.sha1(points.tobytes()).hexdigest())
        basis = _SHARED.get(key)
        if basis is None:
            basis = _SourceBasis(_own_sources(points, lo, hi, chunk), hi - lo, chunk)
            _SHARED[key] = basis
        self._psi = basis

    def table_bytes(self, terms: int, rows: int) -> int:
        return 8 * terms * rows

    def set_sources(self, points: np.ndarray) -> None:
        """A private source basis of the moved sources (tabulated again by ``prepare``)."""
        lo, hi = self._rows
        self._psi = _SourceBasis(_own_sources(points, lo, hi, self.chunk), hi - lo, self.chunk)

    def prepare(self, st, n: int) -> None:
        """The table ``st.phi = φ_k(x_i)`` (Fortran order) and ``ψ`` up to degree ``n``."""
        st.phi = None
        st.phi = np.asfortranarray(target_basis(st.uh, st.ri, n).T)
        self._psi.ensure(n)

    def moments(self, n: int, W: np.ndarray) -> np.ndarray:
        r = num_terms(n, self.d)
        return np.matmul(self._psi.psi[:, :r, :], W.reshape(self.count, self.chunk, W.shape[1]))

    def targets(self, st, mom: np.ndarray, n: int) -> np.ndarray:
        return st.phi[:, : num_terms(n, self.d)] @ mom

    def trim(self, st, n: int) -> None:
        if st.phi is not None and st.n_phi > n + 2:
            st.phi = np.asfortranarray(st.phi[:, : num_terms(n + 2, self.d)])
            st.n_phi = n + 2


class _SourceBasis:
    """``ψ`` at this rank's chunks of the key-ordered sources, shape ``(C_local, r_n, chunk)``."""

    def __init__(self, points: np.ndarray, count: int, chunk: int):
        self.d, self.chunk, self.n = points.shape[1], chunk, -1
        self.points = points
        self.psi = np.empty((count, 0, chunk))

    def ensure(self, n: int) -> None:
        if n <= self.n:
            return
        C, chunk = self.psi.shape[0], self.chunk
        psi = np.empty((C, num_terms(n, self.d), chunk))
        group = max(1, 32768 // chunk)
        for c in range(0, C, group):
            e = min(C, c + group)
            b = sphere_basis(self.points[c * chunk : e * chunk], n)
            psi[c:e] = b.reshape(b.shape[0], e - c, chunk).transpose(1, 0, 2)
        self.psi, self.n = psi, n


#: Source bases shared between evaluators on the same sources.
_SHARED: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
