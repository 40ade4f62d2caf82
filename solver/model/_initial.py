"""Initial densities on S^{d-1}: named families and user expressions, any dimension ``d``.

Every density is a function ``f(x)`` of points ``x`` (rows, unit vectors) with respect to the
surface measure of S^{d-1}, and can draw i.i.d. samples, so that the PDE (cell averages of
``f``) and the particle system (samples of ``f``) start from the same measure.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

import numpy as np
from scipy.special import gammaln, ive

__all__ = [
    "Density",
    "Uniform",
    "VonMisesFisher",
    "Mixture",
    "Expression",
    "parse_expression",
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


# --- user expressions: parsed with ``ast``, checked against a whitelist, evaluated by walking
# the tree over float arrays. Nothing of Python beyond this grammar is reachable: no attribute,
# subscript, lambda, comprehension, keyword argument, string, or name outside the lists below.

#: coordinates of a point x in R^d (z = 0 on S^1; theta = atan2(y, x))
COORDINATES = ("x", "y", "z", "theta")
#: named constants
CONSTANTS = {"pi": np.pi, "e": np.e}
#: functions and their number of (positional) arguments
FUNCTIONS = {
    **{f: (getattr(np, f), 1) for f in (
        "sin cos tan arcsin arccos arctan sinh cosh tanh exp log log1p sqrt abs sign".split()
    )},
    **{f: (getattr(np, f), 2) for f in ("arctan2", "minimum", "maximum", "heaviside")},
    **{f: (getattr(np, f), 3) for f in ("where", "clip")},
}  # fmt: skip
#: limits on the source: characters, syntax-tree nodes, nesting depth
MAX_LENGTH, MAX_NODES, MAX_DEPTH = 2000, 500, 100

_BINOPS = {
    ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply, ast.Div: np.divide,
    ast.Pow: np.power, ast.Mod: np.mod,
}  # fmt: skip
_UNARY = {ast.UAdd: np.positive, ast.USub: np.negative}
_COMPARE = {
    ast.Lt: np.less, ast.LtE: np.less_equal, ast.Gt: np.greater, ast.GtE: np.greater_equal,
    ast.Eq: np.equal, ast.NotEq: np.not_equal,
}  # fmt: skip
_HINT = {
    ast.Attribute: "attribute access (.name)",
    ast.Subscript: "indexing ([...])",
    ast.Lambda: "lambda",
    ast.BoolOp: "'and'/'or' (use where(), or multiply comparisons)",
    ast.IfExp: "'a if c else b' (use where(c, a, b))",
    ast.Starred: "*args",
    ast.NamedExpr: "':='",
}
_WHAT = "initial.expression"


def _fail(node: ast.AST | None, why: str, src: str) -> ValueError:
    at = f" (at '{ast.get_source_segment(src, node)}')" if node is not None else ""
    return ValueError(f"{_WHAT}: {why}{at} is not allowed; allowed: numbers, the coordinates "
                      f"{', '.join(COORDINATES)}, the constants {', '.join(CONSTANTS)}, "
                      "+ - * / ** %, comparisons, and calls of "
                      f"{', '.join(sorted(FUNCTIONS))}")  # fmt: skip


def parse_expression(source: str) -> ast.Expression:
    """Parse and check a user expression; raise ``ValueError`` naming what is not allowed.

    Grammar: numbers (int or float), the names :data:`COORDINATES` and :data:`CONSTANTS`,
    binary ``+ - * / ** %``, unary ``+ -``, comparisons (value 1.0 or 0.0, chains allowed),
    and calls ``f(a, ...)`` of the :data:`FUNCTIONS` with their exact number of positional
    arguments. At most :data:`MAX_LENGTH` characters, :data:`MAX_NODES` nodes and nesting
    depth :data:`MAX_DEPTH`. Constant subexpressions are folded in float arithmetic and must
    stay finite (so ``9**9**9`` is refused here rather than computed).
    """
    if not isinstance(source, str):
        raise ValueError(f"{_WHAT} must be a string, got {type(source).__name__}")
    if len(source) > MAX_LENGTH:
        raise ValueError(f"{_WHAT} is {len(source)} characters long; at most {MAX_LENGTH}")
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as e:
        raise ValueError(f"{_WHAT} is not a valid expression: {e.msg}") from None
    except (RecursionError, MemoryError):
        raise ValueError(f"{_WHAT} is nested too deeply (at most {MAX_DEPTH} levels)") from None
    src = source.strip()
    nodes, stack = 0, [(tree.body, 1)]
    while stack:  # iterative: the depth is checked before any recursion
        node, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise ValueError(f"{_WHAT} has more than {MAX_NODES} syntax nodes; simplify it")
        if depth > MAX_DEPTH:
            spine, n = 0, tree.body  # a + b + c + ... is BinOp(BinOp(a, b), c): a left spine
            while isinstance(n, ast.BinOp):
                spine, n = spine + 1, n.left
            chain = spine >= MAX_DEPTH
            hint = ("; a flat sum or product of more terms is that deep (a + b + c nests "
                    "left to right): fewer terms, or group them as (a + b) + (c + d)"
                    if chain else "")  # fmt: skip
            raise ValueError(f"{_WHAT} is nested too deeply (at most {MAX_DEPTH} levels{hint})")
        _check_node(node, src)
        kids = node.args if isinstance(node, ast.Call) else ast.iter_child_nodes(node)
        stack.extend((c, depth + 1) for c in kids if isinstance(c, ast.expr))
    _fold(tree.body, src)
    return tree


def _check_node(node: ast.AST, src: str) -> None:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise _fail(node, f"the constant {node.value!r} ({type(node.value).__name__})", src)
    elif isinstance(node, ast.Name):
        if node.id in FUNCTIONS:
            raise _fail(node, f"the function {node.id!r} used as a value (call it)", src)
        if node.id not in CONSTANTS and node.id not in COORDINATES:
            raise _fail(node, f"the unknown name {node.id!r}", src)
    elif isinstance(node, ast.BinOp):
        if type(node.op) not in _BINOPS:
            raise _fail(node, f"the operator {type(node.op).__name__}", src)
    elif isinstance(node, ast.UnaryOp):
        if type(node.op) not in _UNARY:
            raise _fail(node, f"the unary operator {type(node.op).__name__}", src)
    elif isinstance(node, ast.Compare):
        for op in node.ops:
            if type(op) not in _COMPARE:
                raise _fail(node, f"the comparison {type(op).__name__}", src)
    elif isinstance(node, ast.Call):
        f = node.func
        if not isinstance(f, ast.Name) or f.id not in FUNCTIONS:
            if isinstance(f, ast.Name):
                what = f"calling the unknown function {f.id!r}"
            else:
                what = f"calling the result of {_HINT.get(type(f), type(f).__name__)}"
            raise _fail(node, what, src)
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            raise _fail(node, f"keyword or * arguments to {f.id}", src)
        n = FUNCTIONS[f.id][1]
        if len(node.args) != n:
            raise ValueError(f"{_WHAT}: {f.id} takes {n} argument(s), got {len(node.args)}")
    else:
        why = _HINT.get(type(node), f"the syntax {type(node).__name__}")
        raise _fail(node, why, src)


def _constant(node: ast.AST, src: str) -> float:
    try:
        v = float(node.value)
    except OverflowError:
        raise _fail(node, "a number this large", src) from None
    return v


def _fold(node: ast.AST, src: str) -> float | None:
    """Value of a constant subtree (``None`` if it depends on the point); refuse non-finite."""
    if isinstance(node, ast.Constant):
        return _constant(node, src)
    if isinstance(node, ast.Name):
        return CONSTANTS.get(node.id)
    kids = node.args if isinstance(node, ast.Call) else ast.iter_child_nodes(node)
    vals = [_fold(c, src) for c in kids if isinstance(c, ast.expr)]
    if any(v is None for v in vals):
        return None
    with np.errstate(all="ignore"):
        v = float(_eval(node, {}, src))
    if not np.isfinite(v):
        raise ValueError(f"{_WHAT}: the constant part '{ast.get_source_segment(src, node)}' "
                         "overflows or is undefined (not a finite number)")  # fmt: skip
    return v


def _eval(node: ast.AST, ns: dict, src: str):
    """Evaluate a checked tree over float arrays (``ns``: the coordinates)."""
    if isinstance(node, ast.Constant):
        return _constant(node, src)
    if isinstance(node, ast.Name):
        return CONSTANTS[node.id] if node.id in CONSTANTS else ns[node.id]
    if isinstance(node, ast.BinOp):
        return _BINOPS[type(node.op)](_eval(node.left, ns, src), _eval(node.right, ns, src))
    if isinstance(node, ast.UnaryOp):
        return _UNARY[type(node.op)](_eval(node.operand, ns, src))
    if isinstance(node, ast.Compare):
        left, out = _eval(node.left, ns, src), True
        for op, c in zip(node.ops, node.comparators, strict=True):
            right = _eval(c, ns, src)
            out = np.logical_and(out, _COMPARE[type(op)](left, right))
            left = right
        return np.asarray(out, dtype=float)
    fn = FUNCTIONS[node.func.id][0]
    return fn(*(_eval(a, ns, src) for a in node.args))


@dataclass(frozen=True)
class Expression(Density):
    """Unnormalised density given as an expression in ``x, y, z`` (and ``theta`` on S^1).

    The grammar is that of :func:`parse_expression`: numbers, the coordinates, ``pi``, ``e``,
    ``+ - * / ** %``, comparisons (1.0 where true, else 0.0) and the functions ``sin cos tan
    arcsin arccos arctan sinh cosh tanh exp log log1p sqrt abs sign`` (one argument),
    ``arctan2 minimum maximum heaviside`` (two), ``where clip`` (three). It is parsed and
    checked here and evaluated by walking its syntax tree over NumPy arrays (never ``eval``).
    The solver normalises it to unit mass on the mesh; particles sample it by rejection.
    """

    source: str

    def __post_init__(self):
        object.__setattr__(self, "_tree", parse_expression(self.source))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        ns = {"x": x[:, 0], "y": x[:, 1], "z": x[:, 2] if x.shape[1] > 2 else np.zeros(len(x)),
              "theta": np.arctan2(x[:, 1], x[:, 0])}  # fmt: skip
        with np.errstate(all="ignore"):
            v = _eval(self._tree.body, ns, self.source.strip())
        v = np.broadcast_to(np.asarray(v, dtype=float), (len(x),)).copy()
        if not np.all(np.isfinite(v)):
            raise ValueError(f"{_WHAT} is NaN or infinite somewhere on the sphere")
        if np.any(v < 0):
            raise ValueError(
                f"{_WHAT} is negative somewhere (min {v.min():.3g}): a density must be >= 0"
            )
        return v
