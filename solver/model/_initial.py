"""Initial densities on S^{d-1}: named families and user expressions, any dimension ``d``.

Every density is a function ``f(x)`` of points ``x`` (rows, unit vectors) with respect to the
surface measure of S^{d-1}, and can draw i.i.d. samples, so that the PDE (cell averages of
``f``) and the particle system (samples of ``f``) start from the same measure.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import gammaln, ive

__all__ = [
    "Density",
    "Uniform",
    "VonMisesFisher",
    "Mixture",
    "Expression",
    "sphere_area",
]


def sphere_area(d: int) -> float:
    """Surface area of S^{d-1} ⊂ R^d: ``2 π^{d/2} / Γ(d/2)``."""
    return float(np.exp(np.log(2) + 0.5 * d * np.log(np.pi) - gammaln(0.5 * d)))


def _unit(name: str, v) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    if v.ndim != 1 or v.size < 2 or not np.all(np.isfinite(v)) or np.linalg.norm(v) == 0:
        raise ValueError(f"{name} must be a non-zero finite vector, got {v!r}")
    return v / np.linalg.norm(v)


class Density:
    """A probability density on S^{d-1} (``d`` is fixed by the family or the mesh)."""

    d: int | None = None

    def __call__(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def sample(self, n: int, d: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` i.i.d. points on S^{d-1} (rejection from the uniform law by default)."""
        return _rejection(self, n, d, rng)


def _uniform_sphere(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    g = rng.normal(size=(n, d))
    return g / np.linalg.norm(g, axis=1, keepdims=True)


def _rejection(f, n: int, d: int, rng: np.random.Generator, probe: int = 20000) -> np.ndarray:
    # Envelope: 1.5 x the maximum of f on a dense uniform probe. Exact when f has no peak
    # narrower than the probe spacing; named families override sample() with exact samplers.
    bound = 1.5 * float(np.max(f(_uniform_sphere(probe, d, rng))))
    if not np.isfinite(bound) or bound <= 0:
        raise ValueError("cannot sample the initial density: it is zero or not finite")
    out, have = np.empty((n, d)), 0
    while have < n:
        x = _uniform_sphere(max(2 * (n - have), 1024), d, rng)
        fx = f(x)
        if np.any(fx > bound):
            raise ValueError("initial density is too peaked to sample by rejection; use vmf")
        acc = x[rng.random(len(x)) * bound < fx][: n - have]
        out[have : have + len(acc)] = acc
        have += len(acc)
    return out


@dataclass(frozen=True)
class Uniform(Density):
    """The uniform law ``1 / |S^{d-1}|``."""

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.full(len(x), 1.0 / sphere_area(x.shape[1]))

    def sample(self, n: int, d: int, rng: np.random.Generator) -> np.ndarray:
        return _uniform_sphere(n, d, rng)


@dataclass(frozen=True)
class VonMisesFisher(Density):
    """von Mises-Fisher law ``C_d(κ) exp(κ <m, x>)`` with mean direction ``m``.

    ``C_d(κ) = κ^{d/2-1} / ((2π)^{d/2} I_{d/2-1}(κ))`` (``1/|S^{d-1}|`` at ``κ = 0``).
    """

    centre: tuple
    kappa: float

    def __post_init__(self):
        object.__setattr__(self, "centre", tuple(_unit("initial.centre", self.centre)))
        if not (np.isfinite(self.kappa) and self.kappa >= 0):
            raise ValueError(f"initial.kappa must be finite and >= 0, got {self.kappa}")

    @property
    def d(self) -> int:
        return len(self.centre)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        d, k = self.d, float(self.kappa)
        if x.shape[1] != d:
            raise ValueError(
                f"initial.centre has {d} entries but the sphere lives in R^{x.shape[1]}"
            )
        if k == 0:
            return np.full(len(x), 1.0 / sphere_area(d))
        nu = 0.5 * d - 1
        logc = nu * np.log(k) - 0.5 * d * np.log(2 * np.pi) - np.log(ive(nu, k)) - k
        return np.exp(logc + k * (x @ np.asarray(self.centre)))

    def sample(self, n: int, d: int, rng: np.random.Generator) -> np.ndarray:
        """Wood's (1994) algorithm: exact samples in any dimension."""
        if d != self.d:
            raise ValueError(f"initial.centre has {self.d} entries, particles live in R^{d}")
        k, m = float(self.kappa), np.asarray(self.centre)
        if k == 0:
            return _uniform_sphere(n, d, rng)
        b = (d - 1) / (2 * k + np.sqrt(4 * k * k + (d - 1) ** 2))
        x0 = (1 - b) / (1 + b)
        c = k * x0 + (d - 1) * np.log(1 - x0 * x0)
        w = np.empty(n)
        have = 0
        while have < n:
            z = rng.beta((d - 1) / 2, (d - 1) / 2, size=2 * (n - have))
            u = rng.random(2 * (n - have))
            ww = (1 - (1 + b) * z) / (1 - (1 - b) * z)
            ok = k * ww + (d - 1) * np.log(1 - x0 * ww) - c >= np.log(u)
            ww = ww[ok][: n - have]
            w[have : have + len(ww)] = ww
            have += len(ww)
        v = rng.normal(size=(n, d))
        v -= np.outer(v @ m, m)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        return w[:, None] * m + np.sqrt(np.clip(1 - w * w, 0, None))[:, None] * v


@dataclass(frozen=True)
class Mixture(Density):
    """Convex combination ``Σ_i p_i f_i`` of normalised densities (``p`` normalised here)."""

    components: tuple
    weights: tuple

    def __post_init__(self):
        p = np.asarray(self.weights, dtype=float)
        if len(self.components) == 0 or p.shape != (len(self.components),):
            raise ValueError("initial.components and their weights must be non-empty, same length")
        if not np.all(np.isfinite(p)) or np.any(p < 0) or p.sum() <= 0:
            raise ValueError(f"initial mixture weights must be >= 0 with a positive sum, got {p}")
        object.__setattr__(self, "weights", tuple(p / p.sum()))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return sum(p * c(x) for p, c in zip(self.weights, self.components, strict=True))

    def sample(self, n: int, d: int, rng: np.random.Generator) -> np.ndarray:
        counts = rng.multinomial(n, self.weights)
        x = np.concatenate(
            [c.sample(k, d, rng) for c, k in zip(self.components, counts, strict=True)]
        )
        return x[rng.permutation(n)]


_NAMESPACE = {
    name: getattr(np, name)
    for name in (
        "sin cos tan arcsin arccos arctan arctan2 sinh cosh tanh exp log log1p sqrt abs "
        "minimum maximum where clip pi e heaviside sign"
    ).split()
}


@dataclass(frozen=True)
class Expression(Density):
    """Unnormalised density given as a NumPy expression in ``x, y, z`` (and ``theta`` on S^1).

    Allowed names: the coordinates and ``sin cos tan arcsin arccos arctan arctan2 sinh cosh
    tanh exp log log1p sqrt abs minimum maximum where clip pi e heaviside sign``. The solver
    normalises it to unit mass on the mesh; particles sample it by rejection.
    """

    source: str

    def __post_init__(self):
        try:
            code = compile(self.source, "<initial.expression>", "eval")
        except SyntaxError as e:
            raise ValueError(f"initial.expression is not a valid expression: {e.msg}") from None
        object.__setattr__(self, "_code", code)
        allowed = set(_NAMESPACE) | {"x", "y", "z", "theta"}
        bad = sorted(set(code.co_names) - allowed)
        if bad:
            raise ValueError(
                f"initial.expression uses unknown names {bad}; allowed: {sorted(allowed)}"
            )

    def __call__(self, x: np.ndarray) -> np.ndarray:
        ns = dict(_NAMESPACE)
        ns.update(x=x[:, 0], y=x[:, 1], z=x[:, 2] if x.shape[1] > 2 else np.zeros(len(x)))
        ns["theta"] = np.arctan2(x[:, 1], x[:, 0])
        try:
            with np.errstate(all="ignore"):
                v = eval(self._code, {"__builtins__": {}}, ns)  # noqa: S307 - restricted names
        except Exception as e:
            raise ValueError(f"initial.expression failed to evaluate: {e}") from None
        v = np.broadcast_to(np.asarray(v, dtype=float), (len(x),)).copy()
        if not np.all(np.isfinite(v)):
            raise ValueError("initial.expression is NaN or infinite somewhere on the sphere")
        if np.any(v < 0):
            raise ValueError(
                f"initial.expression is negative somewhere (min {v.min():.3g}): a density "
                "must be >= 0"
            )
        return v
