"""The two back-ends of FastVelocity compute the same truncated sums, to round-off."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from scipy.special import eval_legendre, spherical_in

from solver.velocity import num_terms
from solver.velocity._backends import NumbaBackend, NumPyBackend
from solver.velocity._kernels import HAVE_NUMBA

U = np.finfo(float).eps / 2


def fibonacci_sphere(n: int) -> np.ndarray:
    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    t = np.pi * (1 + 5**0.5) * i
    s = np.sqrt(1 - z * z)
    return np.c_[s * np.cos(t), s * np.sin(t), z]


@pytest.mark.skipif(not HAVE_NUMBA, reason="numba not installed")
@pytest.mark.parametrize("threads", [1, 2])
def test_numba_and_numpy_backends_agree(threads):
    """Moments ``Σ_j Y_k(y_j) W_j`` and target sums ``Σ_k b_l(r_i) Y_k(û_i) mom_k`` at a fixed
    degree ``n``, by both back-ends on the same chunks (the last one padded).

    Bounds (worst-case, Higham): a sum of ``m`` terms is exact to ``m u Σ|terms|``; the
    Legendre recurrences add ``O(n u)`` relative error per value. Moments: ``|Y_lm| <=
    sqrt((2l+1)/4π)`` (addition theorem), so entry ``k`` errs by at most
    ``(chunk + C + 4(n+1)) u sqrt((2l+1)/4π) Σ_j |W_j|``. Target sums: ``Σ_k |b_l Y_k(û)
    Y_k(y)| <= 1`` (the scaled kernel, Cauchy-Schwarz), so with the same moments the sums
    differ by at most ``2 (r_n + chunk + C + 4(n+1)) u Σ_j |W_j|``.
    """
    rng = np.random.default_rng(0)
    y = fibonacci_sphere(1000) @ np.linalg.qr(rng.normal(size=(3, 3)))[0]
    x = fibonacci_sphere(300)
    n, chunk = 14, 128
    C = -(-len(y) // chunk)
    W = np.zeros((C * chunk, 4))
    W[: len(y)] = rng.normal(size=(len(y), 4))
    W[: len(y), 0] = np.abs(W[: len(y), 0])
    u = x @ (3.0 * np.linalg.qr(rng.normal(size=(3, 3)))[0]).T
    r = np.linalg.norm(u, axis=1)
    backends = NumbaBackend(y, 0, C, chunk, threads), NumPyBackend(y, 1, 0, 0, C, chunk)
    sts = [SimpleNamespace(uh=u / r[:, None], ri=r, phi=None, bw=None) for _ in backends]
    for be, st in zip(backends, sts, strict=True):
        be.prepare(st, n)  # target side, and the source table of the NumPy back-end
    m1, m2 = (be.moments(n, W) for be in backends)
    assert m1.shape == m2.shape == (C, num_terms(n, 3), 4)
    l = np.sqrt(np.arange(num_terms(n, 3))).astype(int)  # degree of term k = l² + ...
    scale = np.sqrt((2 * l + 1) / (4 * np.pi))[:, None] * np.abs(W).sum(axis=0)
    gamma = (chunk + C + 4 * (n + 1)) * U
    assert np.all(np.abs(m1 - m2).sum(axis=0) <= gamma * scale)

    outs = [be.targets(st, m2.sum(axis=0), n) for be, st in zip(backends, sts, strict=True)]
    gamma = 2 * (num_terms(n, 3) + chunk + C + 4 * (n + 1)) * U
    assert np.all(np.abs(outs[0] - outs[1]) <= gamma * np.abs(W).sum(axis=0))
    # and both are the truncated expansion itself: by the addition theorem the target sums
    # are Σ_j W_j Σ_{l<=n} (2l+1) i_l(r) e^{-r} P_l(û·y_j), summed here straight from SciPy
    # (measured 2.8e-16 Σ|W|; asserted within the worst-case bound above, 9e-14 Σ|W|). This
    # replaces a check that the two back-ends differ: a correct change making them equal
    # would have failed it, a wrong weight b_l common to both would not.
    cos = np.clip((u / r[:, None]) @ y.T, -1.0, 1.0)
    kern = sum((2 * k + 1) * spherical_in(k, r)[:, None] * np.exp(-r)[:, None]
               * eval_legendre(k, cos) for k in range(n + 1))  # fmt: skip
    ref = kern @ W[: len(y)]
    for out in outs:
        assert np.all(np.abs(out - ref) <= gamma * np.abs(W).sum(axis=0))
