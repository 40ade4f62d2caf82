"""The velocity from the sources that hold the mass, at the targets where it is needed.

After a measure has clustered almost every source holds a negligible weight and almost
every target carries no mass, yet a full evaluation sums every source at every target.
:class:`ActiveSum` evaluates ``X[μ]`` at a given subset of the targets (the *active targets*,
chosen by the caller: for the transport, the cells that hold the mass and their neighbours,
:mod:`solver.transport._active`) from the sources that hold all but a tail ``δ`` of the mass
(the *active sources*), by the direct sum in compiled loops (exact up to round-off), with an
a-posteriori bound of what the dropped tail contributes.

Tail bound
----------
At a target ``x_i`` with ``u_i = A x_i``, ``r_i = |u_i|``, every kernel value lies in
``e^{y·u_i} <= e^{r_i}``. Split ``μ`` into the active part (numerator ``N_a``, denominator
``D_a``, mean ``q_i = N_a / D_a``) and the tail (``N_t``, ``D_t``, total weight ``δ``). Then
``D_t <= δ e^{r_i}`` and ``|N_t - q_i D_t| <= D_t (v_max + |q_i|)`` with ``v_max = max_j |V y_j|``,
so (exact algebra; the projection ``P_x`` is a contraction)

.. math::

    |X_i - X_i^{active}| <= \\frac{|N_t - q_i D_t|}{D_a + D_t}
        <= β_i\\, δ, \\qquad β_i = \\frac{(v_{max} + |q_i|)\\, e^{r_i}}{D_a} .

The compiled sum returns ``log D_a = top_i + log D̃_i`` (max-shifted) and ``q_i``, so ``β_i``
is computed on every call without overflow. The tail is accepted when
``δ max_i β_i <= tol · scale / 2`` (``scale = max_i |X_i|`` over all active targets of all
ranks, never below a thousand round-offs of ``|q|``, as for the fast expansion); otherwise it
is cut to a quarter of the largest accepted tail and the sum is done again (rarely: the tail
for the next call is chosen from this call's ``β`` with a factor 4 margin). The other half
of the tolerance covers the round-off of the sum (``~ S u`` for ``S`` active sources).

Every rank sees the same gathered weights, so the active sources (the heaviest, in key
order) and the tail are the same on every rank, and each target's sum is taken in the same
order on any number of ranks: the result does not depend on the partition.
"""

from __future__ import annotations

import math

import numpy as np

from ._direct import tangent_project

__all__ = ["ActiveSum", "active_sum", "split_tail", "tail_cut", "tail_cuts"]

try:  # numba is optional
    import numba as _nb
except ImportError:  # pragma: no cover - depends on the environment
    _nb = None

_U = np.finfo(float).eps / 2


#: the tail cut is searched among ``tail · 2^-k``, ``k = 0..TAIL_LADDER`` (:func:`tail_cut`)
TAIL_LADDER = 60


def tail_cut(values: np.ndarray, tail: float, comm=None) -> float:
    """A cut ``θ`` with ``Σ_{v < θ} v <= tail`` (sum over all ranks of ``comm``; ``None``: this
    array alone): the largest of ``tail · 2^-k``, ``k = 0..TAIL_LADDER``, that qualifies, or 0
    (nothing dropped). ``O(n)``, one reduction of ``TAIL_LADDER + 1`` numbers, no sort; the
    same on every rank. Everything at or above ``θ`` is kept."""
    return tail_cuts([values], tail, comm)[0]


def tail_cuts(arrays: list, tail: float, comm=None) -> list[float]:
    """:func:`tail_cut` of each array (e.g. one per flow) with one reduction for all."""
    if not tail > 0:
        return [0.0] * len(arrays)
    s = np.concatenate([_ladder(np.asarray(v, dtype=float), float(tail)) for v in arrays])
    if comm is not None and comm.size > 1:
        from mpi4py import MPI

        comm.Allreduce(MPI.IN_PLACE, s, op=MPI.SUM)
    cuts = []
    for part in s.reshape(len(arrays), TAIL_LADDER + 1):
        ok = np.flatnonzero(part <= tail)
        cuts.append(float(tail * 2.0 ** -ok[0]) if ok.size else 0.0)
    return cuts


def _ladder(values: np.ndarray, tail: float) -> np.ndarray:
    """``s[k] = Σ_{v < tail 2^-k} v``, ``k = 0..TAIL_LADDER``, of this array (contiguous)."""
    if _nb is not None:
        s = _nb_ladder(np.ascontiguousarray(values), tail, TAIL_LADDER)
    else:  # pragma: no cover - without numba
        v = values[values < tail]
        with np.errstate(divide="ignore", over="ignore"):
            e = np.log2(tail / v)  # v < tail·2^-k  <=>  e > k (v = 0: e = inf)
        b = np.clip(np.ceil(e) - 1, 0, TAIL_LADDER).astype(np.int64)
        s = np.bincount(b, v, TAIL_LADDER + 1)
    return np.ascontiguousarray(np.cumsum(s[::-1])[::-1])


def split_tail(w: np.ndarray, tail: float) -> tuple[np.ndarray, float]:
    """``(active, δ)``: the indices (ascending) of the sources that hold all but at most
    ``tail`` of the weight (all at or above :func:`tail_cut`), and the weight ``δ <= tail``
    of the others."""
    theta = tail_cut(w, tail)
    if _nb is not None and theta > 0:  # one compiled pass for the split
        active, delta = _nb_split(np.ascontiguousarray(w, dtype=float), theta)
        return active, float(delta)
    active = np.flatnonzero(w >= theta) if theta > 0 else np.flatnonzero(w > 0)
    return active, float(np.sum(np.where(w < theta, np.maximum(w, 0.0), 0.0)))


def active_sum(x, y, w, A, V) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(X, q, log D)`` at the targets ``x`` from the weighted sources ``(y, w > 0)``:
    the velocity, ``|q_i|`` (the softmax mean of ``V y``, before projection) and the log of
    the denominator ``Σ_j w_j e^{y_j·A x_i}``."""
    x = np.ascontiguousarray(x, dtype=float)
    y = np.ascontiguousarray(y, dtype=float)
    logw = np.log(np.asarray(w, dtype=float))
    Ay = np.ascontiguousarray(y @ A)  # row j: y_jᵀ A
    Vy = np.ascontiguousarray(y @ np.asarray(V, dtype=float).T)
    if _nb is not None:
        return _nb_active_sum(x, Ay, Vy, logw)
    m = np.empty((len(x), x.shape[1]))  # pragma: no cover - without numba
    logd = np.empty(len(x))  # pragma: no cover
    for s in range(0, len(x), 256):  # pragma: no cover
        lg = x[s : s + 256] @ Ay.T + logw
        top = lg.max(axis=1, keepdims=True)
        e = np.exp(lg - top)
        den = e.sum(axis=1)
        m[s : s + 256] = (e @ Vy) / den[:, None]
        logd[s : s + 256] = top[:, 0] + np.log(den)
    return tangent_project(x, m), np.linalg.norm(m, axis=1), logd  # pragma: no cover


if _nb is not None:

    @_nb.njit(cache=True)
    def _nb_ladder(values, tail, K):
        """``s[b]``: the sum of the values ``v < tail`` whose rung is ``b``: ``b = k`` for
        ``tail 2^-(k+1) <= v < tail 2^-k`` (``b = ceil(log2(tail / v)) - 1``), clipped to
        ``[0, K]`` (0 goes to rung ``K``). No logarithm: with ``v = 1.f_v 2^{e_v}`` and
        ``tail = 1.f_t 2^{e_t}`` (normal numbers), ``b = e_t - e_v - [f_v >= f_t]`` exactly
        (the rungs have the mantissa of ``tail``); values below ``tail 2^-K`` (subnormal
        ones among them) go to rung ``K`` by one comparison."""
        s = np.zeros(K + 1)
        bits = values.view(np.int64)
        tb = np.array([tail]).view(np.int64)[0]
        et = (tb >> 52) & 0x7FF
        ft = tb & 0xFFFFFFFFFFFFF
        low = tail * 2.0**-K
        for j in range(values.size):
            v = values[j]
            if v < tail:
                if v < low:  # 0 (and anything below the last rung) goes to rung K
                    s[K] += v
                    continue
                vb = bits[j]
                b = et - ((vb >> 52) & 0x7FF)
                if (vb & 0xFFFFFFFFFFFFF) >= ft:
                    b -= 1
                s[min(K, max(0, b))] += v
        return s

    @_nb.njit(cache=True)
    def _nb_split(w, theta):
        """The indices of ``w >= θ`` (ascending) and the sum of the others' ``max(w, 0)``."""
        keep = np.empty(w.size, np.int64)
        n = 0
        delta = 0.0
        for j in range(w.size):
            if w[j] >= theta:
                keep[n] = j
                n += 1
            elif w[j] > 0:
                delta += w[j]
        return keep[:n], delta

    @_nb.njit(cache=True)
    def _nb_active_sum(x, Ay, Vy, logw):
        m, d = x.shape
        n = Ay.shape[0]
        out = np.empty((m, d))
        q = np.empty(m)
        logd = np.empty(m)
        lg = np.empty(n)
        num = np.empty(d)
        for i in range(m):
            top = -np.inf
            for j in range(n):
                s = logw[j]
                for a in range(d):
                    s += x[i, a] * Ay[j, a]
                lg[j] = s
                top = max(top, s)
            total = 0.0
            for a in range(d):
                num[a] = 0.0
            for j in range(n):
                e = math.exp(lg[j] - top)
                total += e
                for a in range(d):
                    num[a] += e * Vy[j, a]
            dot = 0.0
            nq = 0.0
            for a in range(d):
                num[a] /= total
                dot += num[a] * x[i, a]
                nq += num[a] * num[a]
            for a in range(d):
                out[i, a] = num[a] - dot * x[i, a]
            q[i] = math.sqrt(nq)
            logd[i] = top + math.log(total)
        return out, q, logd


class ActiveSum:
    """``X[μ]`` at chosen targets from the sources holding all but a bounded tail (module doc).

    Parameters
    ----------
    comm : mpi4py communicator
    sources : (n, d) array
        All sources in global key order (the same on every rank).
    tolerance : float
        Relative error (max norm over the active targets of all ranks) the tail may cause,
        together with the sum's round-off: the tail is held to half of it.
    """

    def __init__(self, comm, sources: np.ndarray, *, tolerance: float):
        if not (np.isfinite(tolerance) and 0 < tolerance < 1):
            raise ValueError(f"tolerance must be in (0, 1), got {tolerance}")
        self.comm, self.tol = comm, float(tolerance)
        self.y = np.ascontiguousarray(sources, dtype=float)
        self._tail: dict[bytes, float] = {}  # per A: the tail to try first (a mass fraction)
        self._vmax: tuple | None = None
        self.report: dict = {}

    def _allmax(self, v: np.ndarray) -> np.ndarray:
        if self.comm.size == 1:
            return v
        from mpi4py import MPI

        out = np.empty_like(v)
        self.comm.Allreduce(v, out, op=MPI.MAX)
        return out

    def _v_max(self, V: np.ndarray) -> float:
        key = V.tobytes()
        if self._vmax is None or self._vmax[0] != key:
            self._vmax = (key, float(np.linalg.norm(self.y @ V.T, axis=1).max(initial=0.0)))
        return self._vmax[1]

    def __call__(self, w: np.ndarray, x: np.ndarray, A: np.ndarray, V: np.ndarray):
        """Velocity at the targets ``x`` (this rank's active targets) for the gathered,
        key-ordered weights ``w``; collective (every rank calls, with or without targets)."""
        A = np.ascontiguousarray(A, dtype=float)
        V = np.ascontiguousarray(V, dtype=float)
        mass = float(w[w > 0].sum())
        if not mass > 0:
            raise ValueError("the measure has no mass: all source weights are zero")
        key = A.tobytes()
        frac = self._tail.get(key, self.tol)  # first guess: a tail of the tolerance
        vmax = self._v_max(V)
        r = np.linalg.norm(x @ A.T, axis=1)
        for attempt in range(4):
            keep, delta = split_tail(w, frac * mass if attempt < 3 else 0.0)
            X, q, logd = active_sum(x, self.y[keep], w[keep], A, V)
            xmax, qmax, beta = self._allmax(np.array([
                np.linalg.norm(X, axis=1).max(initial=0.0), q.max(initial=0.0),
                np.max((vmax + q) * np.exp(r - logd), initial=0.0)]))  # fmt: skip
            scale = max(xmax, 1e4 * _U * qmax / self.tol)
            allowed = 0.5 * self.tol * scale
            # the largest tail this call allows, with a factor 4 margin for the next one
            frac = 0.25 * allowed / max(beta * mass, 1e-300)
            if delta * beta <= allowed:
                break
        self._tail[key] = min(frac, 0.5)
        self.report = {"method": "active", "sources": int(keep.size), "tail": delta / mass,
                       "tail_bound": delta * beta / max(scale, 1e-300),
                       "attempts": attempt + 1}  # fmt: skip
        return X
