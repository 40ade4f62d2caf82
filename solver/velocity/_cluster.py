r"""Cluster (Taylor-moment) evaluation of the attention velocity for collapsed particles.

After the tokens collapse, the sources sit in a few tight clusters. A cluster ``c`` of
sources ``y_j = c_c + δ_j`` (``c_c`` the weighted mean, ``|δ_j| <= ρ_c``, weights ``w_j``,
mass ``m_c``) is one term of a Taylor expansion in ``δ``, for every target ``x`` (``u = A x``,
``t_j = <u, δ_j>``, ``|t_j| <= a = |u| ρ_c``):

.. math::

    \sum_{j\in c} w_j e^{<u, y_j>} = e^{<u, c_c>} \Big( m_c + \sum_{k=1}^{p}
        \frac{M_k[u^k]}{k!} \Big) + r_D ,\qquad
    \sum_{j\in c} w_j e^{<u, y_j>} δ_j = e^{<u, c_c>} \sum_{k=0}^{p}
        \frac{M_{k+1}[u^k, \cdot]}{k!} + r_S ,

with the moment tensors ``M_k = Σ_j w_j δ_j^{⊗k}`` (``k <= p + 1``, ``p`` the ``order``; stored
as the ``r_p = C(d + p + 1, d)`` coefficients ``c_α = Σ_j w_j δ_j^α / α!``, ``|α| <= p + 1``, of
the polynomial ``P_c(u) = Σ_α c_α u^α``, so that the two sums are ``Σ_{|β|<=p} c_β u^β`` and
the gradient ``∇P_c(u)``) and
the Lagrange remainders ``|e^t - Σ_{k<=p} t^k/k!| <= a^{p+1} e^a / (p+1)!``, so
``|r_D| <= e^{<u,c_c>} m_c τ_p(a)`` and ``|r_S| <= e^{<u,c_c>} m_c ρ_c τ_p(a)``,
``τ_p(a) = a^{p+1} e^a / (p+1)!``. The kernel is entire, so unlike the singular kernels of
the fast multipole method no target is "near": the error depends on ``|u| ρ_c <= ‖A‖₂ ρ_c``
only, and the members of a cluster see each other through the same few moments. The cost is
``O(m r_p)`` for the moments of ``m`` sources and ``O(K d r_{p-1} + L)`` per target for ``K``
clusters and ``L`` loose sources (the sources of no cluster, summed directly; ``r_2 = 20``
for ``p = 3`` on S^2), against ``O((n + 1)²)`` per source and target for the
spherical-harmonic expansion of :class:`~solver.velocity.FastVelocity` at degree ``n``.

A-posteriori bound (every call, every target)
---------------------------------------------
With a reference point ``g_i`` (the centre of the target's own cluster, else ``x_i``), the
computed ``D̃_i = Σ_c D̃_c + Σ_loose w_j e^{<u,y_j>}`` and
``Ñ_i = Σ_c ((c_c - g_i) D̃_c + S̃_c) + Σ_loose w_j e^{<u,y_j>} (y_j - g_i)`` (everything
scaled by ``e^{-s_i}``, ``s_i`` the largest exponent), the velocity is
``X̃_i = P_{x_i} V (g_i + Ñ_i / D̃_i)`` and, exactly,

.. math::

    |X̃_i - X_i| <= B_i = ‖V‖₂ \frac{η_N + |Ñ_i / D̃_i|\, η_D}{D̃_i - η_D},\qquad
    η_D = \sum_c e_c m_c (τ_p(a_c) + ε e^{a_c}),\quad
    η_N = \sum_c e_c m_c \big(|c_c - g_i| (τ_p(a_c) + ε e^{a_c}) + ρ_c (τ_p(a_c) + ε e^{a_c})
    \big),

(``e_c = e^{<u_i, c_c> - s_i}``; loose sources add ``ε`` times their terms; ``ε = λ u
(√m_c + r_p + 2|u|(1 + ρ_c) + K + L + p + 8)`` models the round-off of the moments, the
polynomial, the exponent and the sums, ``λ = 4``, with ``Σ_α |c_α u^α| <= m_c e^{a_c}`` by
Cauchy-Schwarz). As in :class:`FastVelocity` a target is accepted when ``B_i <= tol · scale /
2`` (``scale = max(max_i |X̃_i|, 10^4 u max_i |V m_i| / tol)``, ``u`` the unit round-off),
the others are summed directly, so every call meets ``max_i |X̃_i - X_i| <= tol · scale``.

Clusters are found by hashing the sources to a grid of cell ``h = a_max / ‖A‖₂``
(``τ_p(a_max) = tol / 16``, :func:`cluster_radius`): a cell of at least :data:`MIN_MEMBERS`
sources is a cluster (radius at most ``√d h``), the other sources are loose. Any partition
gives a correct result (the bound is computed from the actual radii), so the partition is found once
per time step and reused on its Runge-Kutta stages, where the centres, radii and moments are
recomputed at the moved points. Every rank holds all sources and partitions them identically;
each target's sums run over the clusters and loose sources in a fixed order, so the result does
not depend on the number of ranks.
"""

from __future__ import annotations

import math

import numpy as np

from ._direct import attention_velocity

__all__ = ["ClusterVelocity", "grid_clusters", "cluster_radius", "taylor_tail", "MAX_ORDER"]

#: highest Taylor order ``p`` (moments up to ``p + 1``)
MAX_ORDER = 4
#: a grid cell with fewer sources is loose (summed directly: cheaper than a cluster term)
MIN_MEMBERS = 5
#: cost model of one evaluation, nanoseconds per target (order 3 on S^2, one core, measured
#: on 2026-12-08 on the 2-core box): a fixed part (moments, the velocity and its bound), each
#: cluster, each loose source
COST_NS = {"fixed": 150.0, "cluster": 50.0, "loose": 11.0}
_U = np.finfo(float).eps / 2
_LAMBDA = 4.0

try:
    import numba as _nb
except ImportError:  # pragma: no cover - depends on the environment
    _nb = None

#: the cluster expansion runs in compiled loops; without numba it is not offered
HAVE_NUMBA = _nb is not None


def taylor_tail(a, order: int):
    """``τ_p(a) = a^{p+1} e^a / (p+1)!``: bound of ``|e^t - Σ_{k<=p} t^k / k!|``, ``|t| <= a``."""
    a = np.asarray(a, dtype=float)
    return a ** (order + 1) * np.exp(a) / math.factorial(order + 1)


def cluster_radius(R: float, tol: float, order: int) -> float:
    """Largest ``ρ`` with ``τ_p(R ρ) <= tol / 16``: the radius of an accepted cluster
    (``R = ‖A‖₂``; ``inf`` for ``R = 0``)."""
    if R <= 0:
        return math.inf
    lo, hi = 0.0, 1.0
    while taylor_tail(hi, order) <= tol / 16:
        hi *= 2
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if taylor_tail(mid, order) <= tol / 16 else (lo, mid)
    return lo / R


def grid_clusters(y: np.ndarray, h: float, min_members: int = MIN_MEMBERS):
    """Group the sources ``y`` (M, d) by a grid of cell ``h``.

    Returns ``(perm, starts, loose)``: the sources of group ``c`` are ``perm[starts[c] :
    starts[c + 1]]`` (groups of at least ``min_members`` sources, in the order of their
    hashed cell keys, the members of a group ascending), ``loose`` the indices of the others
    (ascending). Deterministic: the same points give the same partition on every rank.
    """
    y = np.asarray(y, dtype=float)
    if not (np.isfinite(h) and h > 0):
        raise ValueError(f"h (cell of the cluster grid) must be finite and > 0, got {h}")
    cell = np.floor(y / h).astype(np.int64)
    key = cell[:, 0].copy()
    for k in range(1, y.shape[1]):  # a hash: distinct cells may collide (then merge)
        key = key * np.int64(1_000_003) + cell[:, k]
    order = np.argsort(key, kind="stable")
    ks = key[order]
    starts = np.concatenate([[0], np.flatnonzero(ks[1:] != ks[:-1]) + 1, [len(y)]])
    sizes = np.diff(starts)
    big = sizes >= min_members
    member = np.repeat(big, sizes)
    st = np.zeros(int(big.sum()) + 1, dtype=np.int64)
    st[1:] = np.cumsum(sizes[big])
    return order[member].astype(np.int64), st, np.sort(order[~member]).astype(np.int64)


def monomials(d: int, degree: int):
    """Exponents ``α`` of the monomials ``z^α`` in ``d`` variables of degree ``<= degree``,
    degree by degree (``(count, d)`` int array, row 0 the constant), with ``parent[m]`` the
    row of ``α - e_{var[m]}`` (``var[m]`` the first variable of ``α``), so that
    ``z^α = z^{parent} z_{var}``."""
    rows = [(0,) * d]
    for k in range(1, degree + 1):
        level = sorted({tuple(a + (i == v) for i, a in enumerate(r)) for r in rows
                        if sum(r) == k - 1 for v in range(d)}, reverse=True)  # fmt: skip
        rows += level
    alpha = np.array(rows, dtype=np.int64)
    index = {r: m for m, r in enumerate(rows)}
    var = np.zeros(len(rows), dtype=np.int64)
    parent = np.zeros(len(rows), dtype=np.int64)
    for m, r in enumerate(rows[1:], 1):
        v = next(i for i in range(d) if r[i] > 0)
        var[m] = v
        parent[m] = index[tuple(e - (i == v) for i, e in enumerate(r))]
    return alpha, parent, var


class _Tables:
    """Monomial tables of order ``p``: ``D`` uses the ``low`` monomials of degree ``<= p``,
    ``S_a = ∂_a P`` takes coefficient ``grad_idx[a, β]`` times ``grad_fac[a, β]``."""

    def __init__(self, d: int, p: int):
        self.alpha, self.parent, self.var = monomials(d, p + 1)
        self.fact = np.array([math.prod(math.factorial(e) for e in a) for a in self.alpha],
                             dtype=float)  # fmt: skip
        self.low = int((self.alpha.sum(axis=1) <= p).sum())
        index = {tuple(a): m for m, a in enumerate(self.alpha.tolist())}
        self.grad_idx = np.zeros((d, self.low), dtype=np.int64)
        self.grad_fac = np.zeros((d, self.low))
        for m, a in enumerate(self.alpha[: self.low].tolist()):
            for v in range(d):
                up = list(a)
                up[v] += 1
                self.grad_idx[v, m] = index[tuple(up)]
                self.grad_fac[v, m] = a[v] + 1


if _nb is not None:

    @_nb.njit(cache=True)
    def _nb_moments(y, w, perm, starts, parent, var, mass, centre, rho, mom):
        """Per cluster ``c``: mass, weighted mean (the centre), radius and the raw moments
        ``mom[c, m] = Σ_j w_j δ_j^{α_m}`` (``δ_j = y_j - c_c``), in the order of ``perm``."""
        d = y.shape[1]
        K = len(starts) - 1
        nm = mom.shape[1]
        val = np.empty(nm)
        dl = np.empty(d)
        for c in range(K):
            m = 0.0
            for a in range(d):
                centre[c, a] = 0.0
            for t in range(starts[c], starts[c + 1]):
                j = perm[t]
                m += w[j]
                for a in range(d):
                    centre[c, a] += w[j] * y[j, a]
            for a in range(d):
                centre[c, a] = centre[c, a] / m if m > 0 else y[perm[starts[c]], a]
            mass[c] = m
            r2max = 0.0
            for q in range(nm):
                mom[c, q] = 0.0
            for t in range(starts[c], starts[c + 1]):
                j = perm[t]
                r2 = 0.0
                for a in range(d):
                    dl[a] = y[j, a] - centre[c, a]
                    r2 += dl[a] * dl[a]
                r2max = max(r2max, r2)
                val[0] = w[j]
                mom[c, 0] += val[0]
                for q in range(1, nm):
                    val[q] = val[parent[q]] * dl[var[q]]
                    mom[c, q] += val[q]
            rho[c] = math.sqrt(r2max)

    @_nb.njit(cache=True)
    def _nb_targets(x, A, V, normV, g_idx, centre, mass, rho, count, dco, gco, parent, var,
                    nterms, ly, lw, p, out):  # fmt: skip
        """For each target ``t``: ``out[t] = [X̃_t (d), B_t, |V (g_t + Ñ_t / D̃_t)|]`` of the
        module docstring (``D̃``, ``Ñ``, ``η`` scaled by ``e^{-s_t}``), the clusters then the
        loose sources, each in their order. ``dco[c, β] = c_β`` and ``gco[c, a, β]`` the
        coefficients of ``D_c`` and ``S_{c,a} = ∂_a P_c`` on the monomials ``u^β``,
        ``|β| <= p``."""
        d = x.shape[1]
        K = centre.shape[0]
        L = ly.shape[0]
        nl = dco.shape[1]
        mono = np.empty(nl)
        g = np.empty(d)
        N = np.empty(d)
        u = np.empty(d)
        num = np.empty(d)
        fp1 = 1.0
        for k in range(2, p + 2):
            fp1 *= k
        base = _LAMBDA * _U
        for t in range(x.shape[0]):
            un = 0.0
            for a in range(d):
                acc = 0.0
                for b in range(d):
                    acc += A[a, b] * x[t, b]
                u[a] = acc
                un += acc * acc
            un = math.sqrt(un)
            mono[0] = 1.0
            for q in range(1, nl):
                mono[q] = mono[parent[q]] * u[var[q]]
            gi = g_idx[t]
            for a in range(d):
                g[a] = centre[gi, a] if gi >= 0 else x[t, a]
            s = -np.inf
            for c in range(K):
                e = un * rho[c]
                for a in range(d):
                    e += u[a] * centre[c, a]
                s = max(s, e)
            for j in range(L):
                e = 0.0
                for a in range(d):
                    e += u[a] * ly[j, a]
                s = max(s, e)
            D = 0.0
            etaD = 0.0
            etaN = 0.0
            for a in range(d):
                N[a] = 0.0
            for c in range(K):
                e = 0.0
                for a in range(d):
                    e += u[a] * centre[c, a]
                ec = math.exp(e - s)
                ac = un * rho[c]
                Dc = 0.0
                for q in range(nl):
                    Dc += dco[c, q] * mono[q]
                dist = 0.0
                for a in range(d):
                    Sa = 0.0
                    for q in range(nl):
                        Sa += gco[c, a, q] * mono[q]
                    N[a] += ec * ((centre[c, a] - g[a]) * Dc + Sa)
                    dist += (centre[c, a] - g[a]) ** 2
                eps = base * (math.sqrt(count[c]) + nterms + 2 * un * (1 + rho[c]) + K + L + p + 8)
                err = ec * mass[c] * (ac ** (p + 1) / fp1 + eps) * math.exp(ac)
                D += ec * Dc
                etaD += err
                etaN += err * (math.sqrt(dist) + rho[c])
            for j in range(L):
                e = 0.0
                for a in range(d):
                    e += u[a] * ly[j, a]
                ej = lw[j] * math.exp(e - s)
                D += ej
                dist = 0.0
                for a in range(d):
                    N[a] += ej * (ly[j, a] - g[a])
                    dist += (ly[j, a] - g[a]) ** 2
                er = ej * base * (2 * un + K + L + 8)
                etaD += er
                etaN += er * math.sqrt(dist)
            m2 = 0.0
            for a in range(d):
                N[a] = N[a] / D if D > 0 else 0.0
                m2 += N[a] * N[a]
            xn = 0.0
            q2 = 0.0
            for a in range(d):
                acc = 0.0
                for b in range(d):
                    acc += V[a, b] * (g[b] + N[b])
                num[a] = acc
                xn += x[t, a] * acc
                q2 += acc * acc
            for a in range(d):
                out[t, a] = num[a] - xn * x[t, a]
            den = D - etaD
            out[t, d] = normV * (etaN + math.sqrt(m2) * etaD) / den if den > 0 else np.inf
            out[t, d + 1] = math.sqrt(q2)


class ClusterVelocity:
    """Error-controlled cluster evaluation of :func:`attention_velocity` (module docstring).

    Parameters
    ----------
    comm : mpi4py communicator
    targets : (m_local, d) array
        This rank's targets.
    sources : (M, d) array
        All sources, identical on every rank.
    tolerance : float
        ``max_i |X̃_i - X_i| <= tolerance · scale`` as in :class:`FastVelocity`.
    target_offset : int, optional
        The targets are ``sources[target_offset : target_offset + m_local]`` (particles): the
        reference point ``g_i`` of a target is then its cluster's centre, which cancels the
        ``|c - g|`` part of the bound inside a cluster; ``None``: ``g_i = x_i``.
    order : int
        Taylor order ``p`` in ``1..MAX_ORDER`` (moments up to ``p + 1``).
    max_cost : float
        :meth:`partition` accepts a partition when its modelled cost per target,
        ``COST_NS["fixed"] + COST_NS["cluster"] K + COST_NS["loose"] L`` nanoseconds
        (``K`` clusters, ``L`` loose sources), is at most this (default: half the cost of
        the expansion at degree 13 on S^2).
    max_fail : float
        Fraction of the targets that may be summed directly; beyond it a call returns
        ``None`` (the caller evaluates otherwise).
    """

    def __init__(self, comm, targets, sources, *, tolerance: float, target_offset=None,
                 order: int = 3, max_cost: float = 700.0, max_fail: float = 0.01):  # fmt: skip
        if not HAVE_NUMBA:
            raise RuntimeError("ClusterVelocity needs numba")
        if not (np.isfinite(tolerance) and 0 < tolerance < 1):
            raise ValueError(f"tolerance must be in (0, 1), got {tolerance}")
        if (
            isinstance(order, bool)
            or not isinstance(order, (int, np.integer))
            or not (1 <= order <= MAX_ORDER)
        ):
            raise ValueError(f"order must be an integer in 1..{MAX_ORDER}, got {order!r}")
        if not max_cost > 0:  # inf: any partition
            raise ValueError(f"max_cost must be > 0, got {max_cost}")
        self.comm, self.tol, self.p = comm, float(tolerance), int(order)
        self.offset = target_offset
        self.max_cost, self.max_fail = float(max_cost), float(max_fail)
        self.set_points(targets, sources)
        self.d = self.y.shape[1]
        self._tables = _Tables(self.d, self.p)
        self.N = int(comm.allreduce(len(self.x))) if comm.size > 1 else len(self.x)
        self.parts = self._g_idx = None
        self.report: dict = {}

    def set_points(self, targets, sources) -> None:
        """Move the points (same counts); the partition is kept (its radii are recomputed)."""
        self.x = np.ascontiguousarray(targets, dtype=float)
        self.y = np.ascontiguousarray(sources, dtype=float)

    def partition(self, A, h: float | None = None) -> bool:
        """Group the current sources for ``A`` (or stacked heads, the largest ``‖A_h‖₂``) on a
        grid of cell ``h`` (default: :func:`cluster_radius`, at most 1); the partition is kept
        for the following calls. Returns whether it is worth using (the cost model
        at most ``max_cost``)."""
        A = np.asarray(A, dtype=float)
        R = max(float(np.linalg.norm(a, 2)) for a in A.reshape(-1, self.d, self.d))
        if h is None:
            h = min(cluster_radius(R, self.tol, self.p), 1.0)
        perm, starts, loose = grid_clusters(self.y, h)
        K, L = len(starts) - 1, len(loose)
        cost = COST_NS["fixed"] + COST_NS["cluster"] * K + COST_NS["loose"] * L
        self.parts = (perm, starts, loose) if cost <= self.max_cost else None
        self._g_idx = None  # the targets' clusters, found at the first call
        self.report = {"clusters": K, "loose": L, "cost": cost, "h": h}
        return self.parts is not None

    def _allmax(self, v):
        from mpi4py import MPI

        return self.comm.allreduce(v, op=MPI.MAX) if self.comm.size > 1 else v

    def _allsum(self, v):
        return self.comm.allreduce(v) if self.comm.size > 1 else v

    def __call__(self, w, A, V):
        """Velocity at this rank's targets, or ``None`` when more than ``max_fail`` of the
        targets miss the bound (nothing is summed directly then) or there is no partition.
        Stacked heads ``(H, d, d)``: the sum, each head within the tolerance."""
        if self.parts is None:
            return None
        if np.ndim(A) == 3:
            out = None
            for a in range(len(A)):
                v = self(w, A[a], V[a])
                if v is None:
                    return None
                out = v if out is None else out + v
            return out
        A = np.ascontiguousarray(A, dtype=float)
        V = np.ascontiguousarray(V, dtype=float)
        w = np.ascontiguousarray(w, dtype=float)
        perm, starts, loose = self.parts
        d, p = self.d, self.p
        K = len(starts) - 1
        mass, rho = np.empty(K), np.empty(K)
        centre = np.empty((K, d))
        tb = self._tables
        mom = np.empty((K, len(tb.alpha)))
        _nb_moments(self.y, w, perm, starts, tb.parent, tb.var, mass, centre, rho, mom)
        coef = mom / tb.fact  # c_α = Σ_j w_j δ_j^α / α!
        dco = np.ascontiguousarray(coef[:, : tb.low])
        gco = np.ascontiguousarray(coef[:, tb.grad_idx] * tb.grad_fac)
        g_idx = self._g_idx
        if g_idx is None or len(g_idx) != len(self.x):
            g_idx = np.full(len(self.x), -1, dtype=np.int64)
            if self.offset is not None and K:
                lab = np.full(len(self.y), -1, dtype=np.int64)
                lab[perm] = np.repeat(np.arange(K), np.diff(starts))
                g_idx = np.ascontiguousarray(lab[self.offset : self.offset + len(self.x)])
            self._g_idx = g_idx
        out = np.empty((len(self.x), d + 2))
        _nb_targets(self.x, A, V, float(np.linalg.norm(V, 2)), np.ascontiguousarray(g_idx),
                    centre, mass, rho, np.diff(starts).astype(float), dco, gco, tb.parent,
                    tb.var, float(len(tb.alpha)), np.ascontiguousarray(self.y[loose]),
                    np.ascontiguousarray(w[loose]), p, out)  # fmt: skip
        X, B, q = np.ascontiguousarray(out[:, :d]), out[:, d], out[:, d + 1]
        self.bounds = B  # per target, of the expansion (before any direct sum)
        xmax = self._allmax(float(np.linalg.norm(X, axis=1).max(initial=0.0)))
        qmax = self._allmax(float(q.max(initial=0.0)))
        scale = max(xmax, 1e4 * _U * qmax / self.tol)
        fail = ~(B <= 0.5 * self.tol * scale)
        nfail = int(self._allsum(int(fail.sum())))
        self.report.update(method="cluster", order=p, direct_targets=nfail,
                           bound=self._allmax(float(B[~fail].max(initial=0.0))) / scale,
                           max_radius=float(rho.max(initial=0.0)))  # fmt: skip
        if nfail > self.max_fail * self.N:
            self.report["method"] = "declined"
            return None
        if fail.any():
            X[fail] = attention_velocity(self.x[fail], self.y, w, A, V)
        return X
