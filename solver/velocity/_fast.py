"""Fast, error-controlled attention velocity: a truncated plane-wave expansion.

The kernel of :func:`solver.attention_velocity` is ``k(x, y) = e^{yᵀ A x} = e^{<u, y>}`` with
``u = A x``, ``r = |u| <= ‖A‖₂``. On the unit sphere it has the classical expansions

.. math::

    S^2:\\; e^{r\\,\\hat u\\cdot y}
        = \\sum_{l\\ge 0} 4π\\, i_l(r) \\sum_{m} Y_{lm}(\\hat u) Y_{lm}(y),
    \\qquad
    S^1:\\; e^{r\\cos(α-β)}
        = I_0(r) + 2\\sum_{k\\ge 1} I_k(r)\\,(\\cos kα\\cos kβ + \\sin kα\\sin kβ),

(``i_l`` modified spherical Bessel functions, ``Y_lm`` real orthonormal spherical harmonics,
``I_k`` modified Bessel functions). Truncating at degree ``n`` separates the kernel into
``r_n = (n+1)²`` (``S^2``) or ``2n+1`` (``S^1``) terms ``φ_k(x) ψ_k(y)``, so that numerator and
denominator of the softmax become

.. math::

    \\sum_j w_j k(x_i, y_j) [1, V y_j] ≈ \\sum_k φ_k(x_i)\\, \\underbrace{\\sum_j ψ_k(y_j)\\,
    w_j [1, V y_j]}_{\\text{moments}} ,

``O((N + M) r_n)`` per evaluation instead of ``O(N M)``. Sources (cell centroids) and
targets (mesh vertices) are fixed and only the weights change between calls; ``A`` enters
only the target side (``u_i = A x_i``), so a new ``A`` costs ``O(N n)`` set-up. Moving
points (particles: sources = targets, every Runge-Kutta stage) are passed to
:meth:`FastVelocity.set_points`, which rebuilds only what depends on them, ``O((N + M) n)``
(plus ``O((N + M) r_n)`` for the NumPy tables), so a call stays ``O((N + M) r_n)``.

For large ``‖A‖`` the degree needed grows like ``sqrt(‖A‖ log(1/tol))`` (``i_l(r) e^{-r}``
decays like ``e^{-l²/2r}``); on the icosphere, ``‖A‖₂ = 10`` and ``tol = 1e-8`` take degree
24 (625 terms) against 20,480 sources at level 5.

Two back-ends compute the same sums (:mod:`solver.velocity._backends`, chosen once per
evaluator; the maths is in :mod:`~solver.velocity._harmonics`, the compiled loops in
:mod:`~solver.velocity._kernels`):

* ``numba`` (``S^2``, when numba is installed): the harmonics are generated on the fly by
  the Legendre recurrences in blocks of 256 points that stay in L1 and are consumed at once
  (moments ``Σ_j ψ_k(y_j) W_j``, then ``Σ_k b_l(r_i) Y_k(û_i) mom_k``): compute-bound, no
  tables, about 3x faster than the tabulated products on one core;
* ``numpy``: ``ψ`` (sources) and ``φ`` (targets, per ``A``) tabulated once, then two skinny
  BLAS products per call (memory-bound; ``8 (M + N) r_n`` bytes, capped by a memory budget).

Error control
-------------
Everything is scaled by ``e^{-r_i}`` per target, so the scaled kernel lies in
``[e^{-2 r_i}, 1]``. Two facts give an a-posteriori bound computed on every call:

* truncation (rigorous): ``|k - k_n| e^{-r} <= τ_n(r) = Σ_{l>n} (2l+1) i_l(r) e^{-r}``
  (``S^2``; ``2 Σ_{k>n} I_k(r) e^{-r}`` on ``S^1``), because ``|P_l| <= 1``;
* round-off: by Cauchy-Schwarz and the addition theorem ``Σ_k |φ_k(x) ψ_k(y)| <= 1``
  (scaled), so the floating-point error of the sums is ``ε_n Σ_j w_j`` with the
  probabilistic model ``ε_n = λ u (√r_n + √chunk + √C + n + 1)`` (Higham-Mary for the
  sums of ``r_n``, ``chunk`` and ``C`` terms, plus the recurrences; ``λ = 2``; the bounds
  are 10-100x above the errors measured in the tests).

With ``η_i = τ_n(r_i) + ε_n``, ``D̃_i`` the computed (scaled) denominator, ``q_i = |Ñ_i| / D̃_i``
and ``S_wV = Σ_j w_j |V y_j|``, the computed velocity satisfies (exact algebra, ``P_x`` is a
contraction)

.. math::

    |X̃_i - X_i| <= B_i = η_i (S_{wV} + q_i Σ_j w_j) / (D̃_i - η_i Σ_j w_j) .

The tolerance is relative in the max norm over all targets: ``max_i |X̃_i - X_i| <= tol
max_i |X_i|``. A target is accepted when ``B_i <= tol max|X̃| / 2``; the others (targets
whose denominator is tiny because the weights sit where their kernel is ``~e^{-2r}``) are
recomputed by the direct sum, so every call meets the tolerance whatever the weights are.

The degree is picked per ``A``: a first evaluation at a generous degree gives ``D̃``, then the
smallest degree that leaves at most ``max_fail`` of the targets (or about the fewest
possible, when round-off is the limit) to the direct sum is kept, plus one for weight drift;
it is raised again on a later call if the weights make it fail. Each new ``A`` is also
checked against the direct sum on a sample of targets (evenly spaced ones plus those with
the largest bound); the achieved error is in :attr:`FastVelocity.report`.

The method gives up (direct sum for this ``A``, with a ``RuntimeWarning`` and the reason in
:attr:`FastVelocity.report`) when the kernel is too peaked: when the degree needed for a
uniform density exceeds the degree cap (160 on ``S^2``; ``‖A‖₂`` of several hundred at
``tol = 1e-10``) or the memory budget (NumPy back-end), when more than a quarter of the
targets fail the bound, or when the sampled check exceeds the tolerance. ``auto`` also
requires the expansion to be clearly cheaper than the direct sum (cost model
``(N + M) r_n <= 4 N M``; silent for small problems).

MPI: every rank evaluates its own targets. The key-ordered sources are cut into fixed
chunks of ``chunk`` sources (independent of the number of ranks); each rank forms the
moments of its chunks (one thread per chunk, fixed order), the per-chunk moments are
all-gathered and summed in chunk order, so the result does not depend on the number of
ranks or threads (bitwise in the benchmark; in any case far below ``1e-12``). All
decisions (degrees, fall-backs) are collective. A call on a known ``A`` synchronises the ranks
twice besides the weights' gather: the moments' ``Allgatherv`` and one ``Allgather`` of four
numbers per rank (the maxima of ``|X|`` and ``q``, a failure count against the rank's own
threshold, the largest bound; :meth:`FastVelocity._settle`), a third reduction only where a
target fails.
"""

from __future__ import annotations

import math
import os
import warnings
from collections import OrderedDict

import numpy as np
from scipy.special import ive

from ..parallel import allgather_rows, threads_per_rank
from ._backends import NumbaBackend, NumPyBackend
from ._direct import attention_velocity
from ._harmonics import num_terms, truncation_tails
from ._kernels import HAVE_NUMBA, finish

__all__ = ["FastVelocity"]

_U = np.finfo(float).eps / 2
#: Highest expansion degree ever used (S^2 / S^1).
MAX_DEGREE = {3: 160, 2: 20000}
#: above this ‖A‖₂ a quick look at the tail (:func:`_quick_tail`) comes before the exact
#: tails, whose recurrence takes O(‖A‖) steps (about 0.1 s at 1e4)
QUICK_TAIL_R = 1e4


def _quick_tail(R: float, m: int, d: int) -> float:
    """``τ_m(R) = 1 - Σ_{l<=m} g_l(R)`` from SciPy's scaled Bessel functions, ``O(m)``:
    ``g_0 = I_0 e^{-R}``, ``g_l = 2 I_l e^{-R}`` (S^1); ``g_l = (2l+1) sqrt(π/2R)
    I_{l+1/2} e^{-R}`` (S^2); the ``g_l`` sum to 1. Absolute error about ``m`` ulps."""
    from scipy.special import ive

    l = np.arange(m + 1, dtype=float)
    if d == 2:
        g = 2.0 * ive(l, R)
        g[0] *= 0.5
    else:
        g = (2 * l + 1) * math.sqrt(math.pi / (2 * R)) * ive(l + 0.5, R)
    return float(1.0 - g.sum())


#: Moving points: the truncation tails are tabulated once per ``A`` at ``r = ‖A‖₂ · g`` for
#: these ``g`` (geometric, 0.45 % apart, the top one above ``‖A‖₂`` by a round-off margin)
#: and each target takes the grid value at or above ``r_i = |A x_i| <= ‖A‖₂``: an upper
#: bound, since ``τ_m(r)`` increases with ``r`` (the weights ``g_l(r)`` of the expansion have
#: ratios ``g_l / g_{l-1} ∝ I_{ν+1}(r) / I_ν(r)``, increasing in ``r``: the distribution of
#: the degree grows stochastically with ``r``), about ``1.0045^{m+1}`` above the exact tail.
_TAIL_GRID = np.geomspace(1e-4, 1.0, 2048) * (1.0 + 1e-12)


def _memory_default() -> int:
    try:
        phys = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        phys = 16 * 2**30
    return int(min(0.35 * phys, 16 * 2**30))


class _Setup:
    """Per-``A`` state: target factors, truncation tails, chosen degree, statistics."""

    def __init__(self, A: np.ndarray, R: float):
        self.A, self.R = A, R
        self.mode = "fast"  # or "direct"
        self.new = True
        self.n_phi = -1  # degree up to which the target side is ready
        self.n_tail = -1  # degrees with known truncation tails
        self.n_use = -1  # degree used for evaluation
        self.phi = None  # NumPy backend: (N_local, r_{n_phi}) table, Fortran order
        self.bw = None  # numba backend: degree weights b_l(r_i), (n_phi + 1, N_local)
        self.tails = None  # (n_tail + 1, N_local), or (n_tail + 1, grid) for moving points
        self.tail_idx = None  # moving points: the grid value of the tails of each target
        self.calls = 0
        self.direct_targets = 0
        self.report: dict = {}
        self.epoch = 0  # the evaluator's points epoch the target side was built for


class FastVelocity:
    """Error-controlled fast evaluation of :func:`attention_velocity`.

    Parameters
    ----------
    comm : mpi4py communicator
    targets : (m_local, d) array
        This rank's targets (fixed, or moved by :meth:`set_points`).
    sources : (n, d) array
        All sources in global key order (identical on every rank; fixed, or moved by
        :meth:`set_points`).
    tolerance : float
        Relative error in the max norm over all targets (relative to ``max |X|``; never below
        a thousand round-offs of the softmax mean ``|V m|``, where the field nearly vanishes).
    auto : bool
        ``True``: also require the expansion to be clearly cheaper than the direct sum.
    memory_bytes : int, optional
        Budget for the tabulated factors over all ranks (default: 35% of the memory, at
        most 16 GiB); it caps the degree.
    chunk : int, optional
        Sources per moment chunk (fixes the summation order for any rank count; default
        ``M / 64`` rounded to a power of two in ``[256, 4096]``, so the chunks balance over
        the ranks).
    sample : int
        Targets per rank checked against the direct sum for each new ``A``.
    cache : int
        Number of ``A`` values whose target factors are kept.
    max_fail : float
        Fraction of the targets that may be left to the direct sum before the degree is
        raised.
    backend : {"auto", "numba", "numpy"}
        ``numba``: harmonics generated on the fly in compiled loops (``S^2``; compute-bound,
        no tables); ``numpy``: tabulated bases and BLAS products (memory-bound; always
        available, and used on ``S^1``). ``auto``: numba where available.
    threads : int, optional
        Numba threads per rank (default: the cores shared among the ranks of a node).
    roundoff : float
        ``λ`` of the round-off model ``ε_n = λ u (√r_n + √chunk + √C + n + 1)`` (probabilistic
        bound of Higham and Mary for the sums, plus the basis recurrences).
    """

    #: per-call overhead cut (:meth:`_finish`, :meth:`_settle`): one compiled pass over the
    #: targets and one collective per call; ``False`` (per instance or on the class): the
    #: step-by-step NumPy path and its three reductions (the same numbers bit for bit;
    #: scripts/bench_spread.py times both)
    lean = True

    def __init__(
        self,
        comm,
        targets: np.ndarray,
        sources: np.ndarray,
        *,
        tolerance: float,
        auto: bool = False,
        memory_bytes: int | None = None,
        chunk: int | None = None,
        sample: int = 32,
        cache: int = 2,
        max_fail: float = 1e-3,
        backend: str = "auto",
        threads: int | None = None,
        roundoff: float = 2.0,
    ):
        self.comm = comm
        self.x = np.ascontiguousarray(targets, dtype=float)
        self.y = np.ascontiguousarray(sources, dtype=float)
        self.d = self.x.shape[1]
        if self.d not in (2, 3) or self.y.shape[1] != self.d:
            raise ValueError("the fast method works on S^1 (d = 2) and S^2 (d = 3) only")
        if not (np.isfinite(tolerance) and 0 < tolerance < 1):
            raise ValueError(f"tolerance must be in (0, 1), got {tolerance}")
        self.tol, self.auto = float(tolerance), bool(auto)
        if chunk is None:
            chunk = 2 ** int(np.clip(round(math.log2(max(len(self.y), 1) / 64)), 8, 12))
        self.chunk, self.sample = int(chunk), int(sample)
        self.cache, self.max_fail = max(1, int(cache)), float(max_fail)
        self.lam = float(roundoff)
        if memory_bytes is None:
            memory_bytes = comm.bcast(_memory_default() if comm.rank == 0 else None, root=0)
        self.memory_bytes = int(memory_bytes)
        self.N = int(comm.allreduce(len(self.x)))
        self.M = len(self.y)
        P, p = comm.size, comm.rank
        self.C = max(1, -(-self.M // self.chunk))
        self._chunk_counts = np.array([(q + 1) * self.C // P - q * self.C // P for q in range(P)])
        lo, hi = p * self.C // P, (p + 1) * self.C // P
        self._src_rows = (lo * self.chunk, min(hi * self.chunk, self.M))
        if backend not in ("auto", "numba", "numpy"):
            raise ValueError(f"backend must be auto, numba or numpy, got {backend!r}")
        if backend == "numba" and (not HAVE_NUMBA or self.d != 3):
            raise ValueError("the numba backend needs numba and S^2 (d = 3)")
        # the back-end, chosen once: both have the same methods (see ._backends)
        if backend != "numpy" and HAVE_NUMBA and self.d == 3:
            if threads is None:
                threads = threads_per_rank(comm)
            self._backend = NumbaBackend(self.y, lo, hi, self.chunk, threads)
        else:
            self._backend = NumPyBackend(self.y, P, p, lo, hi, self.chunk)
        self.backend = self._backend.name
        self._C_local = hi - lo
        self._setups: OrderedDict = OrderedDict()
        self._vcache: tuple | None = None
        self._epoch = 0  # incremented by set_points
        self.n_cap_mem = self._n_cap(cost=False)
        self.n_cap = self._n_cap(cost=self.auto)
        self._told = False  # the peaked-kernel fall-back of auto said once
        self.report: dict = {"method": "fast"}

    @property
    def threads(self) -> int:
        """Numba threads per rank (numba back-end only)."""
        return self._backend.threads

    @property
    def _kernels(self):
        """The compiled ``(moments, targets)`` pair in use (numba back-end only)."""
        return self._backend.kernels

    # ------------------------------------------------------------------ helpers

    def _allmax(self, v: float) -> float:
        return float(self.comm.allreduce(v, op=_mpi_op("MAX"))) if self.comm.size > 1 else v

    def _allsum(self, a):
        return self.comm.allreduce(a, op=_mpi_op("SUM")) if self.comm.size > 1 else a

    def _warn(self, msg: str) -> None:
        if self.comm.rank == 0:
            warnings.warn(msg, RuntimeWarning, stacklevel=4)

    def _roundoff(self, n: int) -> float:
        r = num_terms(n, self.d)
        return self.lam * _U * (math.sqrt(r) + math.sqrt(self.chunk) + math.sqrt(self.C) + n + 1)

    def _n_cap(self, cost: bool) -> int:
        """Largest degree allowed by the memory budget, the degree cap and the cost model."""
        d, N, M = self.d, self.N, self.M
        n = 0
        while n < MAX_DEGREE[d]:
            r = num_terms(n + 1, d)
            tables = self._backend.table_bytes(r, M + self.cache * N)
            if tables > self.memory_bytes:
                break
            # fast ~ 1 ns per tabulated term and evaluation, direct ~ 9 ns per pair
            if cost and (N + M) * r > 4 * N * M:
                break
            n += 1
        return n

    @staticmethod
    def _rho_uniform(R: float, d: int) -> float:
        """Mean of the scaled kernel for a uniform density (denominator / mass)."""
        if R < 1e-8:
            return 1.0
        return float(-np.expm1(-2 * R) / (2 * R)) if d == 3 else float(ive(0, R))

    def _vdata(self, V: np.ndarray):
        key = V.tobytes()
        if self._vcache is None or self._vcache[0] != key:
            Vy = self.y @ V.T
            self._vcache = (key, Vy, np.linalg.norm(Vy, axis=1))
        return self._vcache[1], self._vcache[2]

    def set_points(self, targets: np.ndarray, sources: np.ndarray) -> None:
        """Move the targets and sources (same counts, same order): particles, every RK stage.

        Everything that depends on the points is rebuilt, nothing else: the source side (the
        numba back-end copies this rank's chunks, ``O(M)``; the NumPy back-end tabulates
        ``ψ`` again, ``O(M r_n)``), ``V y_j``, and, lazily at the next call with each cached
        ``A``, the target side ``u_i = A x_i``, ``b_l(|u_i|)``, the truncation tails
        ``τ_m(|u_i|)`` (``O(N n)``) and, NumPy back-end, the table ``φ`` (``O(N r_n)``). The
        degree chosen for each ``A`` (and a fall-back to the direct sum) is kept: the bound
        ``B_i`` is computed on every call with the new points and raises the degree where
        they need it, and targets that miss it still go to the direct sum, so every call
        meets the tolerance as for fixed points. The check against the direct sum on
        sampled targets is done for a new ``A`` only.
        """
        x = np.ascontiguousarray(targets, dtype=float)
        y = np.ascontiguousarray(sources, dtype=float)
        if x.shape != self.x.shape or y.shape != self.y.shape:
            raise ValueError(
                f"set_points: expected targets {self.x.shape} and sources {self.y.shape} "
                f"(the counts are fixed), got {x.shape} and {y.shape}"
            )
        self.x, self.y = x, y
        self._backend.set_sources(y)
        self._vcache = None
        self._epoch += 1

    # ------------------------------------------------------------------ set-up per A

    def get_state(self) -> list[dict]:
        """The degree chosen for each ``A`` so far (JSON-able): with :meth:`set_state` a
        resumed run evaluates exactly as the uninterrupted one (the degree is chosen from the
        density at the first call with each ``A``)."""
        return [{"A": st.A.tolist(), "mode": st.mode, "n_use": st.n_use}
                for st in self._setups.values() if not st.new]  # fmt: skip

    def set_state(self, state: list[dict]) -> None:
        """Restore the degrees of :meth:`get_state` (before the first call)."""
        for s in state:
            st = self._setup(np.array(s["A"], dtype=float))
            st.new = False
            if s["mode"] == "direct":
                if st.mode != "direct":
                    self._to_direct(st, "as before the restart", warn=False)
            else:
                st.n_use = int(s["n_use"])
                if st.n_use > st.n_phi:
                    self._prepare(st, st.n_use)

    def _setup(self, A: np.ndarray) -> _Setup:
        key = A.tobytes()
        st = self._setups.get(key)
        if st is not None:
            self._setups.move_to_end(key)
            if st.epoch != self._epoch and st.mode == "fast":  # the points moved
                self._place(st, st.n_phi if st.new else st.n_use)
            return st
        d, tol, n_cap = self.d, self.tol, self.n_cap
        R = float(np.linalg.norm(A, 2))
        st = _Setup(A.copy(), R)
        big = MAX_DEGREE[3] if d == 3 else min(MAX_DEGREE[2], int(3 * R) + 200)
        rho = self._rho_uniform(R, d)
        if R > QUICK_TAIL_R and _quick_tail(R, n_cap, d) > tol * rho / 4 + 1e-12:
            # the exact tails take O(R) recurrence steps (22 s at ‖A‖ = 2e6): degree n_cap
            # surely misses the tolerance, so the expansion is out; the degree it would need
            # lies above n_cap (above n_cap_mem too where the quick tail says so)
            n_feas = (self.n_cap_mem if _quick_tail(R, self.n_cap_mem, d) > tol * rho / 4
                      + 1e-12 else n_cap) + 1  # fmt: skip
            tauR = None
        else:
            tauR = truncation_tails(np.array([R]), max(big, n_cap), d)[:, 0]

        def degree_for(eps):
            ok = np.nonzero(tauR <= eps)[0]
            return int(ok[0]) if ok.size else max(big, n_cap) + 1

        if tauR is not None:
            n_feas = degree_for(tol * rho / 4)
        st.report = {"R": R, "n_cap": n_cap, "n_uniform": n_feas, "backend": self.backend}
        if n_feas > self.n_cap_mem:
            self._to_direct(
                st,
                f"kernel too peaked for the expansion: ‖A‖₂ = {R:.3g} needs degree >= {n_feas} "
                f"(tolerance {tol:g}), above the cap {self.n_cap_mem} (memory budget / degree "
                "cap); using the direct sum",
            )
        elif n_feas > n_cap:  # auto: the expansion would not pay off
            self._to_direct(
                st,
                f"auto: the expansion needs degree >= {n_feas} ({num_terms(n_feas, d)} terms; "
                f"‖A‖₂ = {R:.3g}, tolerance {tol:g}), not cheaper than the direct sum for "
                f"{self.N} targets x {self.M} sources; using the direct sum",
                warn=self.N * self.M >= 10**7 or (R > QUICK_TAIL_R and not self._told),
            )
            self._told = self._told or R > QUICK_TAIL_R  # once: random adapters change A
        else:
            # start generous (denominators 1000x below uniform), allow growth up to ~1.5x
            n0 = min(n_cap, degree_for(tol * rho * 1e-3 / 4))
            st.n_tail = min(n_cap, max(n0 + 8, (3 * n0) // 2))
            self._place(st, n0)
        self._setups[key] = st
        while len(self._setups) > self.cache:
            self._setups.popitem(last=False)
        return st

    def _place(self, st: _Setup, n: int) -> None:
        """The per-point part of a set-up at the current targets: ``u_i = A x_i``, ``r_i``,
        ``û_i``, the tails ``τ_m(r_i)`` (``m <= n_tail``) and the target side to degree ``n``."""
        u = self.x @ st.A.T  # row i: A x_i
        st.ri = np.linalg.norm(u, axis=1)
        st.uh = np.zeros_like(u)
        st.uh[:, -1] = 1.0
        pos = st.ri > 0
        st.uh[pos] = u[pos] / st.ri[pos, None]
        if self._epoch == 0:  # fixed points: the tails at each r_i
            st.tails = truncation_tails(st.ri, st.n_tail, self.d)
        else:  # moving points: at the grid value above r_i (once per A; τ_m grows with r)
            if st.tail_idx is None:
                st.tails = truncation_tails(st.R * _TAIL_GRID, st.n_tail, self.d)
            st.tail_idx = np.minimum(np.searchsorted(st.R * _TAIL_GRID, st.ri), _TAIL_GRID.size - 1)
        st.n_phi = -1
        self._prepare(st, n)
        st.epoch = self._epoch

    def _prepare(self, st: _Setup, n: int) -> None:
        """Make the target side ready for degree ``n`` (weights ``b_l(r_i)``, or the table
        ``φ_k(x_i) = b_{l(k)}(r_i) ψ_k(A x_i / r_i)`` for the NumPy backend)."""
        if n <= st.n_phi:
            return
        self._backend.prepare(st, n)
        st.n_phi = n

    def _to_direct(self, st: _Setup, reason: str, warn: bool = True) -> None:
        st.mode = "direct"
        st.phi = st.tails = st.bw = None
        keep = ("R", "n_cap", "n_uniform", "sampled_error", "sampled_targets")
        st.report = {k: v for k, v in st.report.items() if k in keep}
        st.report.update(method="direct", reason=reason)
        if warn:
            self._warn(reason)

    # ------------------------------------------------------------------ evaluation

    def _moments(self, n: int, W: np.ndarray) -> np.ndarray:
        mom = self._backend.moments(n, W)
        if self.comm.size > 1:
            mom = allgather_rows(self.comm, mom, self._chunk_counts)  # (C, r, d + 1)
        # the chunks summed in chunk order (a reduction over the first axis adds the rows one
        # after the other: the same numbers as a loop, on any number of ranks)
        return mom.sum(axis=0)

    def _fast(self, st: _Setup, n: int, ctx: dict):
        """Velocity ``X̃``, scaled denominator ``D̃`` and ``q = |Ñ|/D̃`` at degree ``n``."""
        return self._fast_from(self._backend.targets(st, self._moments(n, ctx["W"]), n))

    def _fast_from(self, out: np.ndarray):
        """``(X̃, D̃, q)`` from the sums ``out = [D̃, Ñ]`` at the targets."""
        D = out[:, 0]
        good = D > 0
        num = np.zeros((len(D), self.d))
        num[good] = out[good, 1:] / D[good, None]
        # P_x num = num - <x, num> x, the product summed component by component in order
        # (as the compiled :meth:`_finish`: the same numbers bit for bit)
        dot = self.x[:, 0] * num[:, 0]
        for k in range(1, self.d):
            dot += self.x[:, k] * num[:, k]
        return num - dot[:, None] * self.x, D, np.linalg.norm(num, axis=1)

    def _bounds(self, st: _Setup, n, D, q, ctx) -> np.ndarray:
        """``B_i = η_i (S_wV + q_i Σw) / (D̃_i - η_i Σw)`` for each degree in ``n`` (rows)."""
        n = np.atleast_1d(n)
        tails = st.tails[n] if st.tail_idx is None else st.tails[n][:, st.tail_idx]
        eta = tails + np.array([self._roundoff(int(k)) for k in n])[:, None]
        mass = ctx["mass"]
        den = D[None, :] - eta * mass
        with np.errstate(divide="ignore", invalid="ignore"):
            B = eta * (ctx["SwV"] + q[None, :] * mass) / den
        return np.where(den > 0, B, np.inf)

    def _finish(self, st: _Setup, n: int, ctx: dict):
        """:meth:`_fast` and :meth:`_bounds` at degree ``n`` in one pass over the targets
        (compiled where numba is: the same operations, the same numbers bit for bit; NumPy
        otherwise): ``(X, D, q, B, max_i |X_i|, max_i q_i)`` on this rank (no communication).
        """
        out = self._backend.targets(st, self._moments(n, ctx["W"]), n)
        kernel = finish() if self.lean else None
        if kernel is None:
            X, D, q = self._fast_from(out)
            B = self._bounds(st, n, D, q, ctx)[0]
            xl = float(np.linalg.norm(X, axis=1).max(initial=0.0))
            return X, D, q, B, xl, float(np.max(q, initial=0.0))
        d, m = self.d, len(out)
        res, Dq = np.empty((m, d + 1)), np.empty((2, m))
        tails = st.tails[n]
        idx = st.tail_idx if st.tail_idx is not None else np.zeros(0, np.intp)
        xl, ql = kernel(self.x, out, tails, idx, self._roundoff(n), ctx["mass"], ctx["SwV"],
                        res, Dq)  # fmt: skip
        return res[:, :d], Dq[0], Dq[1], res[:, d], xl, ql

    def _fail_counts(self, st, lo, hi, D, q, ctx, thr) -> np.ndarray:
        B = self._bounds(st, np.arange(lo, hi + 1), D, q, ctx)
        return np.asarray(self._allsum((B > thr).sum(axis=1).astype(np.int64)))

    def _pick_degree(self, st, lo, D, q, ctx, thr) -> int:
        """Smallest degree in ``[lo, n_tail]`` leaving at most ``max_fail`` of the targets (or
        about the fewest possible) to the direct sum, plus one for weight drift."""
        counts = self._fail_counts(st, lo, st.n_tail, D, q, ctx, thr)
        # targets limited by round-off do not improve with the degree: aim at the best count
        target = max(int(self.max_fail * self.N), math.ceil(1.01 * int(counts.min())))
        first = int(np.nonzero(counts <= target)[0][0])
        return min(lo + first + 1, st.n_tail)

    def _settle(self, X, D, q, B, xl, ql):
        """The collective part of :meth:`_evaluate` and of the failure count for a lean call
        (:meth:`_finish`'s results), in one ``Allgather`` of four numbers per rank where no
        target fails: ``(X, D, q, scale, threshold, B, fail, nfail, bound)``.

        Each rank's own threshold ``tol · max(x_l, 1e4 u q_l / tol) / 2`` (its local maxima) is
        at most the global one, so a rank with no bound above its own threshold has no
        failing target; where every rank says so, ``fail`` is empty and the bound is the
        largest ``B_i``. Otherwise the failures are counted against the global threshold, as
        :meth:`__call__` always did (``bound = None``: computed there). The same numbers as
        the three reductions of :meth:`_evaluate` and :meth:`__call__`."""
        tol = self.tol
        thr_l = 0.5 * tol * max(xl, 1e4 * _U * ql / tol)
        loc = np.array([xl, ql, float(np.count_nonzero(B > thr_l)), float(B.max(initial=0.0))])
        if self.comm.size > 1:
            allv = np.empty((self.comm.size, 4))
            self.comm.Allgather(loc, allv)
            loc = allv.max(axis=0)
            loc[2] = allv[:, 2].sum()
        scale = max(float(loc[0]), 1e4 * _U * float(loc[1]) / tol)
        thr = 0.5 * tol * scale
        if loc[2] == 0:
            return (X, D, q, scale, thr, B, np.zeros(len(B), bool), 0,
                    float(loc[3]) / max(scale, 1e-300))  # fmt: skip
        fail = B > thr
        return X, D, q, scale, thr, B, fail, int(self._allsum(int(fail.sum()))), None

    def _evaluate(self, st, n, ctx):
        """``(X, D, q, scale, threshold)``: the error allowed is ``tol · scale / 2`` with
        ``scale = max(max_i |X_i|, 1000 u max_i q_i / tol)``, ``q_i = |Ñ_i| / D̃_i`` the length
        of the softmax mean ``V m(x_i)`` that ``X`` projects and ``u`` the unit round-off: the
        tolerance is relative to ``max |X|``, but never asks for less than a thousand
        round-offs of ``|V m|``. This changes nothing where ``max |X| >= 2e-3 max |V m|`` (at
        ``tol = 1e-10``); a field that vanishes by symmetry (a uniform density: ``|X| ~ 1e-7
        |V m|``) is computed to that floor instead of being declared out of reach."""
        X, D, q = self._fast(st, n, ctx)
        xmax = self._allmax(float(np.linalg.norm(X, axis=1).max(initial=0.0)))
        floor = 1e4 * _U * self._allmax(float(np.max(q, initial=0.0))) / self.tol
        scale = max(xmax, floor)
        return X, D, q, scale, 0.5 * self.tol * scale

    def __call__(self, w: np.ndarray, A: np.ndarray, V: np.ndarray) -> np.ndarray:
        """Velocity at this rank's targets; ``w`` are the gathered, key-ordered weights.
        ``A``, ``V`` of shape ``(H, d, d)``: the sum over the heads, each evaluated as one
        (the cache then holds at least ``H`` setups); :attr:`report` is the heads' combined
        one (``"fast"`` when every head was: the largest degree and relative bound (each head's
        bound is relative to its own ``max_i |X_i|``), the recomputed targets summed; else the
        first head's that was not)."""
        if np.ndim(A) == 3:
            return self._heads(w, A, V)
        A = np.ascontiguousarray(A, dtype=float)
        V = np.ascontiguousarray(V, dtype=float)
        w = np.asarray(w, dtype=float)
        if w.shape != (self.M,):
            raise ValueError(f"weights have shape {w.shape}, expected ({self.M},)")
        wp = np.where(w > 0, w, 0.0)
        if not np.any(wp > 0):
            raise ValueError("the measure has no mass: all source weights are zero")
        st = self._setup(A)
        st.calls += 1
        if st.mode == "direct":
            self.report = st.report
            return attention_velocity(self.x, self.y, w, A, V)
        d = self.d
        Vy, nVy = self._vdata(V)
        a, b = self._src_rows
        W = np.zeros((self._C_local * self.chunk, d + 1))
        W[: b - a, 0] = wp[a:b]
        W[: b - a, 1:] = wp[a:b, None] * Vy[a:b]
        ctx = {"W": W, "mass": float(wp.sum()), "SwV": float(wp @ nVy)}

        first = st.new
        if first:  # choose the degree from a generous first evaluation
            st.new = False
            n0 = st.n_phi
            ev = self._evaluate(st, n0, ctx)
            st.n_use = self._pick_degree(st, 0, ev[1], ev[2], ctx, ev[4])
            if st.n_use > st.n_phi:
                self._prepare(st, st.n_use)
        n = st.n_use
        bound = None
        if self.lean and not first:  # one pass, one collective where no target fails
            X, D, q, scale, thr, B, fail, nfail, bound = self._settle(*self._finish(st, n, ctx))
        else:
            X, D, q, scale, thr = ev if first and n == n0 else self._evaluate(st, n, ctx)
            B = self._bounds(st, n, D, q, ctx)[0]
            fail = B > thr
            nfail = int(self._allsum(int(fail.sum())))
        if nfail > int(self.max_fail * self.N) and n < st.n_tail:  # weights moved: raise
            st.n_use = n = self._pick_degree(st, n, D, q, ctx, thr)
            if n > st.n_phi:
                self._prepare(st, n)
            X, D, q, scale, thr = self._evaluate(st, n, ctx)
            B = self._bounds(st, n, D, q, ctx)[0]
            fail = B > thr
            nfail = int(self._allsum(int(fail.sum())))
            bound = None
        if first:  # drop unused tabulated columns
            self._backend.trim(st, st.n_use)
        if np.any(fail):
            X[fail] = attention_velocity(self.x[fail], self.y, w, A, V)
        st.direct_targets += nfail
        if bound is None:
            bound = self._allmax(float(B[~fail].max(initial=0.0))) / max(scale, 1e-300)
        st.report.update(
            method="fast",
            degree=n,
            terms=num_terms(n, d),
            bound=bound,
            direct_targets=nfail,
            calls=st.calls,
        )
        if first and not self._check(st, X, B, w, A, V, scale):
            X = attention_velocity(self.x, self.y, w, A, V)
        elif nfail > self.N // 4:
            self._to_direct(
                st,
                f"{nfail} of {self.N} targets missed the tolerance {self.tol:g} of the "
                f"expansion at degree {n} (‖A‖₂ = {st.R:.3g}: kernel too peaked for these "
                "weights); using the direct sum for this A",
            )
        self.report = st.report
        return X

    def _heads(self, w, A, V) -> np.ndarray:
        if np.shape(V) != np.shape(A) or len(A) == 0:
            raise ValueError(f"stacked heads: A and V must both be (H, d, d) with H >= 1, got "
                             f"{np.shape(A)} and {np.shape(V)}")  # fmt: skip
        self.cache = max(self.cache, len(A))
        out, reps = None, []
        for a in range(len(A)):
            v = self(w, A[a], V[a])
            out = v if out is None else out + v
            reps.append(self.report)
        slow = [r for r in reps if r["method"] != "fast"]
        self.report = (
            slow[0]
            if slow
            else {
                **reps[0],
                "degree": max(int(r["degree"]) for r in reps),
                "bound": float(max(r["bound"] for r in reps)),
                "direct_targets": int(sum(r["direct_targets"] for r in reps)),
                "heads": len(A),
            }
        )
        return out

    def _check(self, st, X, B, w, A, V, scale) -> bool:
        """Compare with the direct sum on a sample of targets (new ``A`` only)."""
        m = len(self.x)
        k = min(m, self.sample)
        worst = np.argsort(B)[-min(8, m) :] if m else np.zeros(0, int)
        idx = np.unique(
            np.concatenate([np.linspace(0, m - 1, max(k - 8, 0)).round().astype(int), worst])
        ).astype(int)
        err = 0.0
        if idx.size:
            Xd = attention_velocity(self.x[idx], self.y, w, A, V)
            err = float(np.linalg.norm(X[idx] - Xd, axis=1).max())
        err = self._allmax(err) / max(scale, 1e-300)
        st.report.update(sampled_error=err, sampled_targets=int(self._allsum(int(idx.size))))
        if not err <= self.tol:
            self._to_direct(
                st,
                f"fast method missed the tolerance on the sampled targets ({err:.2e} > "
                f"{self.tol:g}, ‖A‖₂ = {st.R:.3g}); using the direct sum for this A",
            )
            return False
        return True


def _mpi_op(name: str):
    from mpi4py import MPI

    return getattr(MPI, name)
