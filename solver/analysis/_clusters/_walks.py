"""The gradient paths of :func:`._modes.density_clusters` (its step 2): from every cell
centroid an Euler path up the least-squares cell gradient of the density to a cell near a
mode; compiled with numba (a walk over the adjacency) when numba is installed, otherwise
k-d tree queries step by step (the same cells, ties aside)."""

from __future__ import annotations

import math

import numpy as np
from scipy.sparse import csr_matrix
from scipy.spatial import cKDTree

try:  # numba is optional: without it the gradient paths query a k-d tree step by step
    import numba as _nb
except ImportError:  # pragma: no cover - depends on the environment
    _nb = None


def _gradient_paths(x, rho, size, i, j, root) -> np.ndarray:
    """Mode reached by the gradient path from every centroid (step 2 of
    :func:`density_clusters`); ``root`` is the provisional mode of every cell."""
    n, d = x.shape
    if root.size == 0 or np.all(root == root[0]):  # one mode: every path ends there
        return root.copy()
    a, b = np.concatenate((i, j)), np.concatenate((j, i))
    # least-squares tangential gradient: min_g Σ_b (ρ_b - ρ_a - g·t_ab)², t_ab the tangential
    # part of y_b - y_a; the normal direction is pinned by adding y_a y_aᵀ to the matrix
    t = x[b] - x[a]
    t -= np.sum(t * x[a], axis=1)[:, None] * x[a]
    lhs = x[:, :, None] * x[:, None, :]
    np.add.at(lhs, a, t[:, :, None] * t[:, None, :])
    rhs = np.zeros((n, d))
    np.add.at(rhs, a, t * (rho[b] - rho[a])[:, None])
    # a cell with fewer than d - 1 positive neighbours (an isolated speck of the tail) leaves
    # the matrix singular: the least-squares solution of least norm (0 with no neighbour)
    g = (np.linalg.pinv(lhs, hermitian=True) @ rhs[..., None])[..., 0]
    g -= np.sum(g * x, axis=1)[:, None] * x
    gnorm = np.linalg.norm(g, axis=1)
    # cells within two links of a mode: paths end there
    modes = np.flatnonzero(root == np.arange(n))
    adjacency = csr_matrix((np.ones(a.size), (a, b)), shape=(n, n))
    near = np.zeros(n)
    near[modes] = 1.0
    for _ in range(2):
        near += adjacency @ near
    done = (near > 0) | (gnorm == 0)
    tree = cKDTree(x)
    active = np.flatnonzero(~done)
    steps = int(np.ceil(4 * np.pi / size.min())) if active.size else 0
    if _nb is not None and active.size:  # the same paths, compiled (see _nb_gradient_walk)
        k = min(n, int(np.diff(adjacency.indptr).max()) + 2)
        far_d, far_i = tree.query(x, k=k)
        return _nb_gradient_walk(x, g, gnorm, size, done, root, active, adjacency.indptr,
                                 adjacency.indices, far_d.reshape(n, k), far_i.reshape(n, k),
                                 steps)  # fmt: skip
    out = root.copy()
    y = x.copy()
    cell = np.arange(n)
    for _ in range(steps):
        c = cell[active]
        step = y[active] + (size[c] / gnorm[c])[:, None] * g[c]
        y[active] = step / np.linalg.norm(step, axis=1)[:, None]
        _, cell[active] = tree.query(y[active])
        c = cell[active]
        out[active] = root[c]
        active = active[~done[c]]
        if active.size == 0:
            break
    return out


if _nb is not None:

    @_nb.njit(cache=True)
    def _nb_gradient_walk(x, g, gnorm, size, done, root, active, indptr, indices, knn_d, knn_i,
                          steps):  # fmt: skip
        """The gradient paths of :func:`_gradient_paths` from the ``active`` cells, one at a
        time. The cell holding a path's point (the nearest centroid) is found by walking the
        adjacency from the previous one to a cell nearer than all its neighbours, which is
        the nearest of all when the point is within half of ``r_c`` of it, ``r_c`` the
        distance from ``x_c`` to the nearest centroid that is neither ``c`` nor a neighbour
        (from the ``k`` nearest ``knn_*``): every other centroid is then farther by the
        triangle inequality. Otherwise (rare) all centroids are searched. The same cells as
        the k-d tree's nearest-centroid queries, ties aside."""
        n, d = x.shape
        r2 = np.full(n, np.inf)  # (r_c / 2)^2
        for c in range(n):
            for t in range(knn_i.shape[1]):
                j = knn_i[c, t]
                if j == c:
                    continue
                nb = False
                for q in range(indptr[c], indptr[c + 1]):
                    if indices[q] == j:
                        nb = True
                        break
                if not nb:
                    r2[c] = 0.25 * knn_d[c, t] * knn_d[c, t]
                    break
        out = root.copy()
        y = np.empty(d)
        for p in active:
            c = p
            for a in range(d):
                y[a] = x[p, a]
            for _ in range(steps):
                s, norm = size[c] / gnorm[c], 0.0
                for a in range(d):
                    y[a] += s * g[c, a]
                    norm += y[a] * y[a]
                norm = math.sqrt(norm)
                for a in range(d):
                    y[a] /= norm
                best = 0.0
                for a in range(d):
                    best += (y[a] - x[c, a]) ** 2
                while True:
                    nxt = c
                    for q in range(indptr[c], indptr[c + 1]):
                        j = indices[q]
                        dj = 0.0
                        for a in range(d):
                            dj += (y[a] - x[j, a]) ** 2
                        if dj < best:
                            best, nxt = dj, j
                    if nxt == c:
                        break
                    c = nxt
                if best >= r2[c]:  # not certified: search them all
                    for j in range(n):
                        dj = 0.0
                        for a in range(d):
                            dj += (y[a] - x[j, a]) ** 2
                        if dj < best:
                            best, c = dj, j
                out[p] = root[c]
                if done[c]:
                    break
        return out
