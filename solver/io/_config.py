"""TOML run configuration: schema, validation with messages that name the field, builders.

A config is a TOML file with the sections below (see README "Config reference"); missing
keys take the defaults shown, unknown sections or keys are errors. :func:`load_config`
returns the resolved configuration as a plain ``dict`` (every key present), which the run
writes back next to its results.
"""

from __future__ import annotations

import math
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ..model import (
    Density,
    Expression,
    Mixture,
    Model,
    Perturbation,
    RandomLoRA,
    TiedLoRA,
    Uniform,
    VonMisesFisher,
    low_rank,
)
from ..model._lora import as_real

__all__ = [
    "defaults",
    "ConfigError",
    "load_config",
    "resolve_config",
    "default_config_text",
    "build_model",
    "build_initial",
    "dump_toml",
    "toml_value",
    "estimate_resources",
    "check_config",
    "mesh_defect",
]


class ConfigError(ValueError):
    """An invalid configuration; the message names the offending field."""


_NONE = object()  # "no default": optional key, absent unless given

# section -> key -> default (``_NONE``: optional without default)
SCHEMA: dict[str, dict[str, Any]] = {
    "mesh": {"sphere": _NONE, "refinement": _NONE, "cells": _NONE, "file": _NONE, "project": _NONE},
    "model": {"Q": _NONE, "K": _NONE, "V": _NONE},
    "perturbation": {
        "kind": _NONE,
        "dV": _NONE,
        "B": _NONE,
        "A": _NONE,
        "dA": _NONE,
        "eta": _NONE,
        "s": _NONE,
        "layer_length": _NONE,
        "seed": _NONE,
        "on": _NONE,
    },
    "initial": {
        "kind": _NONE,
        "centre": _NONE,
        "kappa": _NONE,
        "expression": _NONE,
        "components": _NONE,
        "weights": _NONE,
    },
    "time": {
        "T": _NONE,
        "cfl": 0.9,
        "save_every": _NONE,
        "stepping": "adaptive",
        "max_dt": 0.5,
        "tail_mass": 1e-9,
    },
    "scheme": {"degree": 0},
    "velocity": {"method": "auto", "tolerance": 1e-10, "active": False, "stages": "each"},
    "output": {"vtx": True, "w2": True},
    "clusters": {"delta": 0.1, "tol": 1e-2, "criterion": "reach"},
    "validation": {  # read by `python -m solver validate` only
        "levels": _NONE,
        "sizes": [100, 400, 1600],
        "seeds": 3,
        "particle_dt": 0.02,
        "w2_method": "auto",
    },
}


#: the keys that belong to each kind of a table (besides ``kind``); a table without ``kind``
#: takes the one kind its keys belong to (written into the resolved config)
def defaults(section: str) -> dict:
    """The defaults of one config section (keys without a default left out): the schema is
    their only home."""
    return {k: v for k, v in SCHEMA[section].items() if v is not _NONE}


PERTURBATION_KINDS = {
    "none": set(),
    "tied": {"dV", "B", "A", "dA"},
    "random": {"eta", "s", "layer_length", "seed", "on"},
}
INITIAL_KINDS = {
    "uniform": set(),
    "vmf": {"centre", "kappa"},
    "mixture": {"components", "weights"},
    "expression": {"expression"},
}

#: refusal limits of :func:`estimate_resources`
MAX_STEPS = 10**7
#: the cluster state's columns whose crossing of ``delta`` gives a run's ``t_enter`` /
#: ``t_exit`` (``[clusters] criterion``, ``evolve(cluster_criterion=...)``)
CLUSTER_CRITERIA = ("reach", "atoms_w2", "atoms_w2_hull")
MAX_SNAPSHOT_BYTES = 2 * 1024**3
MAX_CELLS = 10**7
#: ``validate``: the largest particle system, and particles x steps x seeds over all sizes
#: (about 1e5 particle-steps a second for the fast path on one core: a day at the limit)
MAX_PARTICLES = 10**6
MAX_PARTICLE_WORK = 10**10
#: the sharpest von Mises-Fisher blob (width 1/sqrt(kappa) = 1e-4, far below any cell; the
#: density is NaN from about 1e15)
MAX_KAPPA = 1e8
#: mixtures of mixtures nested deeper than this are refused (not a RecursionError)
MAX_DEPTH = 16
#: memory of a run (peak resident set of `run`, measured 2026-12-07 with DOLFINx 0.11 on the
#: 2-core machine, icosphere levels 4-7, one rank): Python, NumPy, SciPy, numba and DOLFINx
#: take 0.30 GB; each cell 2.8 kB with one flow (levels 5-7), 3.7 kB with two at levels 5-6
#: and 4.45 kB at level 7 (1.76 GB in all), taken here as 3.2 and 5 kB; the address space
#: (``ulimit -v``) is 0.8 GB above the resident set (shared libraries, thread stacks)
MEM_BASE = 0.30e9
MEM_PER_CELL = {1: 3.2e3, 2: 5.0e3}
MEM_VIRTUAL_EXTRA = 0.8e9


def default_config_text() -> str:
    """The embedded default configuration (TOML)."""
    return resources.files("solver.io").joinpath("default.toml").read_text()


def _num(name: str, v, *, integer=False, positive=False, nonneg=False) -> float | int:
    """:func:`solver.model.as_real`, its errors as :class:`ConfigError` (a TOML value of
    the wrong type is bad input, exit 2, like a wrong value)."""
    try:
        return as_real(name, v, integer=integer, positive=positive, nonneg=nonneg)
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None


def _numbers(name: str, v, depth: int) -> np.ndarray:
    """A ``depth``-deep nested list of numbers (not strings, not booleans) as a float array."""

    def ok(x, k):
        if k == 0:
            return not isinstance(x, bool) and isinstance(x, int | float)
        return isinstance(x, list) and all(ok(y, k - 1) for y in x)

    shape = "list of numbers" if depth == 1 else "nested list of numbers (a matrix)"
    if not ok(v, depth):
        raise ConfigError(f"{name} must be a {shape}, got {v!r}"[:300])
    try:
        M = np.array(v, dtype=float)
    except ValueError:  # ragged rows
        raise ConfigError(f"{name} must be a {shape} with rows of equal length") from None
    if not np.all(np.isfinite(M)):
        raise ConfigError(f"{name} contains NaN or infinite entries")
    return M


def _matrix(name: str, v, d: int, cols: int | None = None) -> list:
    cols = d if cols is None else cols
    flat = cols == 1 and isinstance(v, list) and not any(isinstance(x, list) for x in v)
    M = _numbers(name, v, 1)[:, None] if flat else _numbers(name, v, 2)
    if M.ndim != 2 or M.shape[0] != d or (cols != -1 and M.shape[1] != cols):
        want = f"{d} x {cols}" if cols != -1 else f"{d} x r"
        raise ConfigError(f"{name} must be a {want} matrix, got shape {M.shape}")
    return M.tolist()


def _kind(name: str, table: dict, kinds: dict[str, set], default: str | None) -> str:
    """The table's kind: given (its other keys must belong to it) or inferred from its keys."""
    given = set(table) - {"kind"}
    unknown = sorted(given - set().union(*kinds.values()))
    if unknown:
        allowed = sorted({"kind"}.union(*kinds.values()))
        raise ConfigError(f"unknown key(s) {unknown} in {name}; allowed: {allowed}")
    if "kind" in table:
        kind = table["kind"]
        if not isinstance(kind, str) or kind not in kinds:
            raise ConfigError(f"{name}.kind must be one of {sorted(kinds)}, got {kind!r}")
        extra = sorted(given - kinds[kind])
        if extra:
            raise ConfigError(f"{name}: key(s) {extra} do not apply to kind = {kind!r}")
        return kind
    if not given:
        if default is None:
            raise ConfigError(f"{name}.kind is required (one of {sorted(kinds)})")
        return default
    fits = [k for k, keys in kinds.items() if given <= keys]
    if len(fits) != 1:
        owners = {k: sorted(given & keys) for k, keys in kinds.items() if given & keys}
        raise ConfigError(f"{name}: keys of different kinds {owners} given together; keep the "
                          f"keys of one kind and set {name}.kind")  # fmt: skip
    return fits[0]


def _flag(name: str, v) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"{name} must be true or false (a TOML boolean), got {v!r}")
    return v


def _check_keys(section: str, table: dict, allowed) -> None:
    if not isinstance(table, dict):
        raise ConfigError(f"[{section}] must be a table")
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in [{section}]; allowed: {sorted(allowed)}")


def resolve_config(raw: dict) -> dict:
    """Validate a parsed TOML document and fill in defaults."""
    unknown = sorted(set(raw) - set(SCHEMA))
    if unknown:
        raise ConfigError(f"unknown section(s) {unknown}; allowed: {sorted(SCHEMA)}")
    cfg: dict[str, dict] = {}
    for sec, keys in SCHEMA.items():
        table = raw.get(sec, {})
        _check_keys(sec, table, keys)
        cfg[sec] = {k: table.get(k, dflt) for k, dflt in keys.items()}
        cfg[sec] = {k: v for k, v in cfg[sec].items() if v is not _NONE}

    cfg["mesh"] = m = _resolve_mesh(cfg["mesh"])
    d = {1: 2, 2: 3}.get(m.get("sphere"))

    mod = cfg["model"]
    if d is None:  # mesh from a file: the model fixes d (checked against the mesh later)
        given = [mod[k] for k in ("V", "Q", "K") if isinstance(mod.get(k), list) and mod[k]]
        d = len(given[0]) if given else 3
    for k in ("Q", "K", "V"):
        mod[k] = _matrix(f"model.{k}", mod.get(k, np.eye(d).tolist()), d)

    cfg["perturbation"] = _resolve_perturbation(cfg["perturbation"], d)
    cfg["initial"] = _resolve_initial("initial", cfg["initial"], d)

    t = cfg["time"]
    if "T" not in t:
        raise ConfigError("time.T (final time) is required")
    t["T"] = _num("time.T", t["T"], positive=True)
    t["cfl"] = _num("time.cfl", t["cfl"], positive=True)
    if t["cfl"] > 1:
        raise ConfigError(f"time.cfl must be <= 1 (positivity of the scheme), got {t['cfl']}")
    t["save_every"] = _num("time.save_every", t.get("save_every", t["T"]), positive=True)
    if t["stepping"] not in ("adaptive", "fixed"):
        raise ConfigError(f"time.stepping must be 'adaptive' or 'fixed', got {t['stepping']!r}")
    t["max_dt"] = _num("time.max_dt", t["max_dt"], positive=True)
    t["tail_mass"] = _num("time.tail_mass", t["tail_mass"])
    if not 0 <= t["tail_mass"] < 1:
        raise ConfigError(f"time.tail_mass must be in [0, 1), got {t['tail_mass']}")

    deg = _num("scheme.degree", cfg["scheme"]["degree"], integer=True)
    if deg not in (0, 1, 2):
        raise ConfigError(
            f"scheme.degree must be 0 (finite volume), 1 or 2 (DG on curved cells), got {deg}"
        )
    cfg["scheme"]["degree"] = deg

    v = cfg["velocity"]
    if v["method"] not in ("direct", "fast", "auto"):
        raise ConfigError(f"velocity.method must be direct, fast or auto, got {v['method']!r}")
    v["tolerance"] = _num("velocity.tolerance", v["tolerance"], positive=True)
    if v["tolerance"] >= 1:
        raise ConfigError(f"velocity.tolerance must be in (0, 1) (a relative error of the fast "
                          f"method), got {v['tolerance']}")  # fmt: skip
    if v["active"] is not False:
        v["active"] = _num("velocity.active", v["active"], nonneg=True)
        if v["active"] >= 1:
            raise ConfigError(f"velocity.active must be false or a mass tail in [0, 1), got "
                              f"{v['active']}")  # fmt: skip
    if v["stages"] not in ("each", "frozen"):
        raise ConfigError(f"velocity.stages must be \"each\" or \"frozen\", got "
                          f"{v['stages']!r}")  # fmt: skip
    if v["stages"] == "frozen" and v["active"] is False:
        raise ConfigError("velocity.stages = \"frozen\" needs velocity.active (a mass tail): "
                          "it freezes the velocity while the active set holds every cell")
    c = cfg["clusters"]
    c["delta"] = _num("clusters.delta", c["delta"], positive=True)
    c["tol"] = _num("clusters.tol", c["tol"], nonneg=True)
    if c["tol"] >= 1:
        raise ConfigError(f"clusters.tol must be < 1 (a fraction of the mass), got {c['tol']}")
    if c["criterion"] not in CLUSTER_CRITERIA:
        raise ConfigError(f"clusters.criterion must be one of {CLUSTER_CRITERIA}, got "
                          f"{c['criterion']!r}")  # fmt: skip
    for k in ("vtx", "w2"):
        if not isinstance(cfg["output"][k], bool):
            raise ConfigError(f"output.{k} must be true or false")
    _resolve_validation(cfg["validation"], m)
    _check_derived(cfg)
    _refuse(estimate_resources(cfg))
    return cfg


def _resolve_mesh(m: dict) -> dict:
    if "file" in m:
        extra = sorted(set(m) & {"sphere", "cells", "refinement"})
        if extra:
            raise ConfigError(f"mesh.{extra[0]} does not apply to mesh.file (the file fixes the "
                              f"mesh); give either mesh.file or mesh.{extra[0]}")  # fmt: skip
        if not isinstance(m["file"], str) or not m["file"]:
            raise ConfigError("mesh.file must be a path string")
        return {"file": m["file"], "project": _flag("mesh.project", m.get("project", False))}
    if "project" in m:
        raise ConfigError("mesh.project applies to mesh.file only (generated meshes lie on the "
                          "sphere already)")  # fmt: skip
    s = _num("mesh.sphere", m.get("sphere", 1 if "cells" in m else 2), integer=True)
    if s not in (1, 2):
        raise ConfigError(f"mesh.sphere must be 1 (circle) or 2 (sphere), got {s}")
    if s == 1:
        if "refinement" in m:
            raise ConfigError("mesh.refinement applies to sphere = 2; the circle (sphere = 1) "
                              "takes mesh.cells")  # fmt: skip
        if "cells" not in m:
            raise ConfigError("mesh.cells (number of segments) is required when sphere = 1")
        n = _num("mesh.cells", m["cells"], integer=True)
        if not 3 <= n <= MAX_CELLS:
            raise ConfigError(f"mesh.cells must be in 3..{MAX_CELLS}, got {n}")
        return {"sphere": 1, "cells": n}
    if "cells" in m:
        raise ConfigError("mesh.cells applies to sphere = 1; the sphere (sphere = 2) takes "
                          "mesh.refinement (icosphere level 0..7)")  # fmt: skip
    if "refinement" not in m:
        raise ConfigError("mesh.refinement (icosphere level 0..7) is required")
    r = _num("mesh.refinement", m["refinement"], integer=True)
    if not 0 <= r <= 7:
        raise ConfigError(f"mesh.refinement must be in 0..7, got {r}")
    return {"sphere": 2, "refinement": r}


def _resolve_perturbation(p: dict, d: int) -> dict:
    kind = _kind("perturbation", p, PERTURBATION_KINDS, "none")
    out: dict[str, Any] = {"kind": kind}
    if kind == "tied":
        if "dV" in p and ("B" in p or "A" in p):
            raise ConfigError("give either perturbation.dV or its factors B and A, not both")
        if "dV" in p:
            out["dV"] = _matrix("perturbation.dV", p["dV"], d)
        elif "B" in p or "A" in p:
            if "B" not in p or "A" not in p:
                miss = "A" if "B" in p else "B"
                raise ConfigError(f"perturbation.{miss} is missing: dV = B Aᵀ needs both factors")
            B = _matrix("perturbation.B", p["B"], d, -1)
            A = _matrix("perturbation.A", p["A"], d, -1)
            if np.shape(B) != np.shape(A):
                raise ConfigError(f"perturbation.B and .A must both be {d} x r")
            out["B"], out["A"] = B, A
        elif "dA" not in p:
            raise ConfigError("a tied perturbation needs dV (or B and A) and/or dA")
        if "dA" in p:
            out["dA"] = _matrix("perturbation.dA", p["dA"], d)
    elif kind == "random":
        for k in ("eta", "layer_length"):
            if k not in p:
                raise ConfigError(f"perturbation.{k} is required for random adapters")
        out["eta"] = _num("perturbation.eta", p["eta"], nonneg=True)
        out["layer_length"] = _num("perturbation.layer_length", p["layer_length"], positive=True)
        out["seed"] = _num("perturbation.seed", p.get("seed", 0), integer=True, nonneg=True)
        s = p.get("s", [1.0])
        if not isinstance(s, list) or not s:
            raise ConfigError("perturbation.s must be a non-empty list of singular values")
        out["s"] = [_num("perturbation.s[]", v, nonneg=True) for v in s]
        out["on"] = p.get("on", "V")
        if out["on"] not in ("V", "A", "both"):
            raise ConfigError(f"perturbation.on must be 'V', 'A' or 'both', got {out['on']!r}")
    return out


def _check_derived(cfg: dict) -> None:
    """Products of finite entries can overflow: ``A = KᵀQ``, ``B Aᵀ``, ``V + ΔV``, ``η s``."""
    mod, p = cfg["model"], cfg["perturbation"]
    Q, K, V = (np.array(mod[k]) for k in ("Q", "K", "V"))
    with np.errstate(all="ignore"):
        A = K.T @ Q
        derived = [("model.K^T model.Q (the bilinear form A)", A)]
        if "B" in p:
            dV = np.array(p["B"]) @ np.array(p["A"]).T
            derived += [("perturbation.B perturbation.A^T", dV), ("model.V + B A^T", V + dV)]
        if "dV" in p:
            derived.append(("model.V + perturbation.dV", V + np.array(p["dV"])))
        if "dA" in p:
            derived.append(("model.K^T Q + perturbation.dA", A + np.array(p["dA"])))
        if p["kind"] == "random":
            derived.append(("perturbation.eta * perturbation.s", p["eta"] * np.array(p["s"])))
        derived.append(("the norm of model.V", np.linalg.norm(V, 2)))
    for what, M in derived:
        if not np.all(np.isfinite(M)) or np.max(np.abs(M)) > 1e150:
            raise ConfigError(f"{what} overflows (entries beyond 1e150): scale the weights down")


def estimate_resources(cfg: dict, *, cells: int | None = None,
                       min_ratio: float | None = None) -> dict:  # fmt: skip
    """Lower bounds of the cost of a run, from a resolved config, without building the mesh.

    ``dt_max = cfl · min_K(|K|/|∂K|) / ‖V(0)‖₂`` (``‖V(t)‖₂`` bounds the speed; the DG CFL
    factors are <= 1 and only shrink it), with ``min_K |K|/|∂K|`` taken as ``sin(π/n)`` for
    the circle of ``n`` segments and ``3^{1/4} sqrt(a)/6`` for the icosphere (the equilateral
    triangle of area ``a = 4π/N``, an upper bound of the smallest cell's ratio); a mesh file
    gives ``cells`` and ``min_ratio`` (else the mesh terms are omitted). Then
    ``steps >= max(T/dt_max, T/save_every, T/layer_length, T/max_dt)`` (``max_dt`` for
    adaptive stepping; ``steps_set_by`` names the key of the largest term),
    ``saves = ceil(T/save_every) + 1`` and ``snapshot_bytes = saves · cells · 8 · flows`` (the
    saved densities, 2 flows with a perturbation). The speed is ``max ‖V(t)‖₂`` over the base
    ``V``, ``V + ΔV`` of a tied perturbation and of the first 64 random adapters on ``V``.
    ``validate``'s particles: ``particle_steps = ceil(T/particle_dt)`` and ``particle_work =
    particle_steps · seeds · Σ sizes``.
    """
    m, t, p = cfg["mesh"], cfg["time"], cfg["perturbation"]
    T = t["T"]
    if cells is None and "file" not in m:
        cells = m["cells"] if m["sphere"] == 1 else 20 * 4 ** m["refinement"]
    if min_ratio is None and cells is not None and "file" not in m:
        if m["sphere"] == 1:
            min_ratio = math.sin(math.pi / cells)
        else:
            min_ratio = 3**0.25 * math.sqrt(4 * math.pi / cells) / 6
    V = np.array(cfg["model"]["V"])
    speed, speed_key = float(np.linalg.norm(V, 2)), "model.V"
    if "dV" in p or "B" in p:
        dV = np.array(p["dV"]) if "dV" in p else np.array(p["B"]) @ np.array(p["A"]).T
        speed = max(speed, float(np.linalg.norm(V + dV, 2)))
    if p["kind"] == "random" and p["on"] in ("V", "both"):  # the first layers' exact ΔV
        lora = RandomLoRA(d=V.shape[0], eta=p["eta"], h=p["layer_length"], s=tuple(p["s"]),
                          seed=p["seed"], on=p["on"])  # fmt: skip
        layers = min(64, math.ceil(T / p["layer_length"] - 1e-12))
        lora_speed = max(float(np.linalg.norm(V + lora.at(k * lora.h)[1], 2))
                         for k in range(layers))  # fmt: skip
        if lora_speed > speed:
            speed, speed_key = lora_speed, "perturbation.eta"
    saves = math.ceil(T / t["save_every"] - 1e-12) + 1
    bounds = {"time.save_every": float(saves - 1)}
    if t["stepping"] == "adaptive":  # no step is longer than max_dt
        bounds["time.max_dt"] = float(math.ceil(T / t["max_dt"] - 1e-12))
    if p["kind"] == "random":
        bounds["perturbation.layer_length"] = float(math.ceil(T / p["layer_length"] - 1e-12))
    dt_max = None
    if min_ratio is not None and speed > 0:
        dt_max = t["cfl"] * min_ratio / speed
        key = (f"the speed bound {speed:.3g} ({speed_key}) with time.T, time.cfl and the "
               "mesh (mesh.refinement / mesh.cells)")  # fmt: skip
        bounds[key] = T / dt_max
    cause = max(bounds, key=bounds.get)
    flows = 1 if p["kind"] == "none" else 2
    v = cfg["validation"]
    particle_steps = math.ceil(T / v["particle_dt"] - 1e-12)
    return {"cells": cells, "dt_max": dt_max, "steps": math.ceil(bounds[cause]),
            "steps_set_by": cause, "saves": saves, "flows": flows,
            "snapshot_bytes": None if cells is None else saves * cells * 8 * flows,
            "particle_steps": particle_steps,
            "particle_work": particle_steps * v["seeds"] * sum(v["sizes"])}  # fmt: skip


def _refuse(est: dict) -> None:
    if est["steps"] > MAX_STEPS:
        dt = "" if est["dt_max"] is None else f"; dt_max = {est['dt_max']:.3g}"
        raise ConfigError(
            f"this run needs at least {est['steps']:.3g} time steps (limit {MAX_STEPS:.0e}{dt}),"
            f" set by {est['steps_set_by']}: change it"
        )
    if est.get("particle_steps", 0) > MAX_STEPS:
        raise ConfigError(
            f"validate's particles would take {est['particle_steps']:.3g} steps of "
            f"validation.particle_dt (limit {MAX_STEPS:.0e}): raise validation.particle_dt"
        )
    if est.get("particle_work", 0) > MAX_PARTICLE_WORK:
        raise ConfigError(
            f"validate's particle runs would take {est['particle_work']:.3g} particle-steps "
            f"(validation.sizes x validation.seeds x steps; limit {MAX_PARTICLE_WORK:.0e}, "
            "about a day): lower validation.sizes or validation.seeds, or raise "
            "validation.particle_dt"
        )
    b = est["snapshot_bytes"]
    if b is not None and b > MAX_SNAPSHOT_BYTES:
        raise ConfigError(
            f"the saved densities would take {b / 1024**3:.3g} GiB ({est['saves']} saves x "
            f"{est['cells']} cells; limit {MAX_SNAPSHOT_BYTES / 1024**3:.0f} GiB): raise "
            "time.save_every or coarsen the mesh"
        )


def memory_needed(est: dict, ranks: int = 1) -> float:
    """Peak resident bytes of one rank of a run (rank 0, which also holds the saved
    densities), from :func:`estimate_resources` and the constants ``MEM_*``."""
    cells = est["cells"] or 0
    return MEM_BASE + MEM_PER_CELL[est["flows"]] * cells / ranks + (est["snapshot_bytes"] or 0)


def memory_available() -> tuple[float, str] | None:
    """``(bytes, what)``: the smallest of this process's address-space limit (``ulimit -v``,
    less what the libraries map: compared with the resident set), the cgroup's memory
    limit less its use, and the machine's available memory; ``None`` if none is known."""
    import resource

    found = []
    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    if soft != resource.RLIM_INFINITY:
        found.append((soft - MEM_VIRTUAL_EXTRA, f"ulimit -v {soft // 1024}"))
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            found.append((int(limit) - used, "the cgroup's memory.max"))
    except (OSError, ValueError):
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append((int(line.split()[1]) * 1024, "MemAvailable of /proc/meminfo"))
    except (OSError, ValueError, IndexError):
        pass
    return min(found) if found else None


def _refuse_memory(est: dict, cfg: dict, comm=None) -> None:
    """Refuse a run whose estimated memory (:func:`memory_needed`) exceeds what this rank may
    use (:func:`memory_available`; the ranks of one node share the machine's memory)."""
    if est["cells"] is None:
        return
    ranks = 1 if comm is None else comm.size
    per_rank = memory_needed(est, ranks)
    avail = memory_available()
    if avail is None:
        return
    node = 1 if comm is None or ranks == 1 else _ranks_on_node(comm)
    have, what = avail
    need = per_rank if what.startswith("ulimit") else per_rank * node
    if need > have:
        m = cfg["mesh"]
        key = ("mesh.file" if "file" in m else
               f"mesh.cells = {m['cells']}" if m["sphere"] == 1 else
               f"mesh.refinement = {m['refinement']}")  # fmt: skip
        per = "" if need == per_rank else f" ({node} ranks on this machine)"
        raise ConfigError(
            f"{key} ({est['cells']:,} cells, {est['flows']} flow(s)) needs about "
            f"{need / 1e9:.2f} GB of memory{per}: {MEM_PER_CELL[est['flows']] / 1e3:.1f} kB a "
            f"cell on {ranks} rank(s), {MEM_BASE / 1e9:.2f} GB for Python and DOLFINx, "
            f"{(est['snapshot_bytes'] or 0) / 1e9:.2f} GB of saved densities; "
            f"{max(have, 0) / 1e9:.2f} GB is available ({what}): coarsen the mesh, raise "
            "time.save_every, or run on more ranks or machines"
        )


def _ranks_on_node(comm) -> int:
    from mpi4py import MPI

    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return node.size
    finally:
        node.Free()


def _resolve_validation(v: dict, mesh: dict) -> None:
    if "levels" in v:
        if "file" in mesh:
            raise ConfigError("validation.levels does not apply to mesh.file (validation runs "
                              "on the file's mesh); remove validation.levels")  # fmt: skip
        if not isinstance(v["levels"], list) or not v["levels"]:
            raise ConfigError("validation.levels must be a non-empty list of mesh levels")
        lo, hi, what = (3, MAX_CELLS, "cell counts") if mesh["sphere"] == 1 else (0, 7, "levels")
        v["levels"] = [_num("validation.levels[]", x, integer=True) for x in v["levels"]]
        bad = [x for x in v["levels"] if not lo <= x <= hi]
        if bad:
            raise ConfigError(f"validation.levels {bad} out of range: sphere = {mesh['sphere']} "
                              f"takes {what} in {lo}..{hi}")  # fmt: skip
    if not isinstance(v["sizes"], list) or len(v["sizes"]) < 2:
        raise ConfigError("validation.sizes must list at least two particle counts")
    v["sizes"] = sorted(_num("validation.sizes[]", x, integer=True, positive=True)
                        for x in v["sizes"])  # fmt: skip
    if v["sizes"][-1] > MAX_PARTICLES:
        raise ConfigError(f"validation.sizes: {v['sizes'][-1]} particles is more than "
                          f"{MAX_PARTICLES:.0e} (positions of every saved time are kept): "
                          "lower it")  # fmt: skip
    v["seeds"] = _num("validation.seeds", v["seeds"], integer=True, positive=True)
    v["particle_dt"] = _num("validation.particle_dt", v["particle_dt"], positive=True)
    if v["w2_method"] not in ("auto", "exact", "sinkhorn", "sliced"):
        raise ConfigError(
            f"validation.w2_method must be auto, exact, sinkhorn or sliced, got {v['w2_method']!r}"
        )


def _resolve_initial(name: str, ini: dict, d: int, depth: int = 0) -> dict:
    if depth > MAX_DEPTH:
        raise ConfigError(f"{name}: mixtures nested more than {MAX_DEPTH} deep; flatten them "
                          "into one mixture")  # fmt: skip
    if not isinstance(ini, dict):
        raise ConfigError(f'{name} must be a table, e.g. {{ kind = "vmf", ... }}, got {ini!r}')
    kind = _kind(name, ini, INITIAL_KINDS, "uniform")
    out = {"kind": kind}
    if kind == "vmf":
        for k in ("centre", "kappa"):
            if k not in ini:
                raise ConfigError(f"{name}.{k} is required for kind = 'vmf'")
        c = _numbers(f"{name}.centre", ini["centre"], 1)
        if c.shape != (d,) or not np.any(c):
            raise ConfigError(f"{name}.centre must be a non-zero list of {d} numbers")
        out["centre"] = c.tolist()
        out["kappa"] = _num(f"{name}.kappa", ini["kappa"], nonneg=True)
        if out["kappa"] > MAX_KAPPA:
            raise ConfigError(
                f"{name}.kappa must be <= {MAX_KAPPA:.0e} (a blob of width "
                f"1/sqrt(kappa) below any cell), got {out['kappa']:.3g}"
            )
    elif kind == "mixture":
        comps = ini.get("components")
        if not isinstance(comps, list) or not comps:
            raise ConfigError(f"{name}.components must be a non-empty list of tables")
        w = ini.get("weights", [1.0] * len(comps))
        if not isinstance(w, list) or len(w) != len(comps):
            raise ConfigError(f"{name}.weights must list one weight per component")
        w = [_num(f"{name}.weights[]", x, nonneg=True) for x in w]
        if sum(w) <= 0:
            raise ConfigError(f"{name}.weights must have a positive sum")
        out["weights"] = w
        out["components"] = [
            _resolve_initial(f"{name}.components[{i}]", c, d, depth + 1)
            for i, c in enumerate(comps)
        ]
    elif kind == "expression":
        if "expression" not in ini:
            raise ConfigError(f"{name}.expression is required for kind = 'expression'")
        if not isinstance(ini["expression"], str):
            raise ConfigError(f"{name}.expression must be a string (an expression in x, y, z)")
        try:
            Expression(ini["expression"])
        except ValueError as e:
            raise ConfigError(str(e).replace("initial.expression", f"{name}.expression")) from None
        out["expression"] = ini["expression"]
    return out


def mesh_defect(points: np.ndarray, cells: np.ndarray) -> str | None:
    """What keeps a mesh of S^1 (segments) or S^2 (triangles) from being a closed,
    consistently oriented mesh covering the sphere once; ``None`` when it is one.

    Closed: every facet (a vertex of the circle, an edge of the sphere) lies in exactly two
    cells. Oriented: the signed angle of every cell seen from the centre (``atan2`` of the
    segment; the solid angle ``2 atan2(a·(b×c), 1 + a·b + b·c + c·a)`` of the triangle, Van
    Oosterom and Strackee 1983) has one sign. Covered once: the angles sum to ``±2π`` (circle)
    or ``±4π`` (sphere), to ``1e-6`` relative (the sum is exact up to round-off for any
    closed oriented mesh of degree one).
    """
    points, cells = np.asarray(points, float), np.asarray(cells)
    if len(cells) == 0:
        return "it has no cells"
    nv = cells.shape[1]
    if nv == 2:
        facets = cells.reshape(-1, 1)
    else:
        facets = np.sort(cells[:, [[0, 1], [1, 2], [2, 0]]].reshape(-1, 2), axis=1)
    _, counts = np.unique(facets, axis=0, return_counts=True)
    kind = "vertices" if nv == 2 else "edges"
    if np.any(counts == 1):
        return (f"it is not closed ({int(np.sum(counts == 1))} {kind} lie in one cell only: "
                "an open boundary)")  # fmt: skip
    if np.any(counts > 2):
        return f"{int(np.sum(counts > 2))} {kind} lie in more than two cells"
    p = points / np.linalg.norm(points, axis=1, keepdims=True)
    if nv == 2:
        a, b = p[cells[:, 0]], p[cells[:, 1]]
        ang = np.arctan2(a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0], np.sum(a * b, axis=1))
        full = 2 * np.pi
    else:
        a, b, c = (p[cells[:, i]] for i in range(3))
        num = np.einsum("ij,ij->i", a, np.cross(b, c))
        den = 1 + np.einsum("ij,ij->i", a, b) + np.einsum("ij,ij->i", b, c)
        den += np.einsum("ij,ij->i", c, a)
        ang = 2 * np.arctan2(num, den)
        full = 4 * np.pi
    if 0 < np.sum(ang > 0) < len(ang):
        return (f"its cells are not consistently oriented ({int(np.sum(ang < 0))} of "
                f"{len(ang)} turn the other way)")  # fmt: skip
    cover = abs(float(ang.sum())) / full
    if abs(cover - 1) > 1e-6:
        return f"it covers the sphere {cover:.6g} times, not once"
    return None


def xdmf_problem(path: str | Path) -> str | None:
    """What is wrong with an XDMF mesh file before DOLFINx reads it (which blames the
    ``.h5`` file for any of these): not XML, no ``<Grid>``, or a missing heavy-data file
    named by a ``DataItem``; ``None`` when none of these."""
    import xml.etree.ElementTree as ET

    p = Path(path)
    try:
        root = ET.parse(p).getroot()
    except (ET.ParseError, UnicodeDecodeError) as e:
        return f"{p} is not an XDMF file (not XML: {e})"
    if root.find(".//Grid") is None:
        return f"{p} holds no mesh (no <Grid> in the XDMF)"
    for item in root.iter("DataItem"):
        text = (item.text or "").strip()
        if item.get("Format") == "HDF" and ":" in text:
            h5 = p.parent / text.split(":", 1)[0]
            if not h5.is_file():
                return f"{p} refers to {h5}, which does not exist (copy it next to the .xdmf)"
    return None


def check_config(cfg: dict, comm=None) -> dict:
    """Every check of a resolved config short of the time loop; the resource estimate.

    Builds the model and the initial density, builds the mesh (generated meshes: the pure
    NumPy generators; a mesh file: read with DOLFINx on ``comm``, default ``COMM_SELF``, and
    checked by :func:`mesh_defect`: closed, consistently oriented, covering the sphere once),
    evaluates the initial density at the cell centroids (finite, >= 0, not all zero) and
    refuses runs beyond the limits of :func:`estimate_resources`. Raises :class:`ConfigError`
    (or ``ValueError``) naming the key to fix; returns the resource estimate.
    """
    from ..mesh import circle_mesh, icosphere, normalize

    base, _ = build_model(cfg)
    init = build_initial(cfg["initial"])
    m = cfg["mesh"]
    if "file" in m:
        from mpi4py import MPI

        from ..mesh import load_mesh

        if Path(m["file"]).suffix.lower() == ".xdmf" and Path(m["file"]).is_file():
            if (problem := xdmf_problem(m["file"])) is not None:
                raise ConfigError(f"mesh.file: {problem}")
        sm = load_mesh(comm or MPI.COMM_SELF, m["file"], project=m["project"])
        if sm.gdim != base.d:
            raise ConfigError(f"mesh.file is a mesh of S^{sm.gdim - 1} but the model has "
                              f"d = {base.d} (model.V is {base.d} x {base.d})")  # fmt: skip
        mesh = sm.gather_mesh()
        defect = sm.comm.bcast(mesh_defect(*mesh) if sm.comm.rank == 0 else None, root=0)
        if defect is not None:
            raise ConfigError(f"mesh.file {m['file']}: {defect}; the solver needs a closed "
                              "mesh covering the sphere once")  # fmt: skip
        x, reduce = sm.centroids, sm.comm.allreduce
        est = estimate_resources(cfg, cells=sm.num_cells, min_ratio=sm.min_area_per_perimeter())
        _refuse(est)
        _refuse_memory(est, cfg, comm)
    else:
        est = estimate_resources(cfg)  # refused before the mesh is made
        _refuse(est)
        _refuse_memory(est, cfg, comm)
        pts, cells = circle_mesh(m["cells"]) if m["sphere"] == 1 else icosphere(m["refinement"])
        x, reduce = normalize(pts[cells].mean(axis=1)), (lambda v, op=None: v)
    try:
        f = np.asarray(init(x), dtype=float)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if not np.all(np.isfinite(f)) or np.any(f < 0):
        raise ConfigError("the initial density is NaN, infinite or negative at a cell centroid")
    if not reduce(float(f.sum())) > 0:
        raise ConfigError("the initial density is zero at every cell centroid: check [initial]")
    return est


def load_config(path: str | Path | None) -> dict:
    """Read, validate and resolve a TOML config (``None``: the embedded default).

    A relative ``mesh.file`` is taken relative to the config file's folder (the resolved
    config holds the absolute path)."""
    if path is None:
        text, where = default_config_text(), "<default config>"
    else:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist or is not a file")
        try:
            text, where = p.read_text(encoding="utf-8"), str(p)
        except UnicodeDecodeError as e:
            raise ConfigError(f"config file {p} is not UTF-8 text (byte {e.start}: "
                              f"{e.reason}): save it as UTF-8") from None  # fmt: skip
        except OSError as e:
            raise ConfigError(f"config file {p} cannot be read: {e.strerror or e}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{where} is not valid TOML: {e}") from None
    except RecursionError:
        raise ConfigError(f"{where}: tables or arrays nested too deeply") from None
    mesh = raw.get("mesh")
    if path is not None and isinstance(mesh, dict) and isinstance(mesh.get("file"), str):
        f = Path(mesh["file"]).expanduser()
        if mesh["file"] and not f.is_absolute():  # relative to the config, not to the cwd
            mesh["file"] = str(Path(path).resolve().parent / f)
    return resolve_config(raw)


def build_model(cfg: dict) -> tuple[Model, Model | None]:
    """``(base model, perturbed model or None)`` from a resolved config."""
    m = cfg["model"]
    base = Model(m["Q"], m["K"], m["V"])
    p = cfg["perturbation"]
    pert: Perturbation | None = None
    if p["kind"] == "tied":
        dV = np.zeros((base.d, base.d))
        if "dV" in p:
            dV = np.array(p["dV"])
        elif "B" in p:
            dV = low_rank(p["B"], p["A"])
        dA = np.array(p.get("dA", np.zeros((base.d, base.d))))
        pert = TiedLoRA(dA=dA, dV=dV)
    elif p["kind"] == "random":
        pert = RandomLoRA(
            d=base.d, eta=p["eta"], h=p["layer_length"], s=tuple(p["s"]), seed=p["seed"],
            on=p["on"],
        )  # fmt: skip
    return base, (None if pert is None else base.perturbed(pert))


def build_initial(ini: dict) -> Density:
    """The initial :class:`~solver.Density` of a resolved ``[initial]`` table."""
    kind = ini["kind"]
    if kind == "uniform":
        return Uniform()
    if kind == "vmf":
        return VonMisesFisher(tuple(ini["centre"]), ini["kappa"])
    if kind == "mixture":
        return Mixture(tuple(build_initial(c) for c in ini["components"]), tuple(ini["weights"]))
    return Expression(ini["expression"])


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    return "[" + ", ".join(toml_value(x) for x in v) + "]"


def dump_toml(cfg: dict) -> str:
    """Serialise a resolved config (tables of scalars, lists and inline tables) as TOML."""
    out = []
    for sec, table in cfg.items():
        out.append(f"[{sec}]")
        out += [f"{k} = {toml_value(v)}" for k, v in table.items()]
        out.append("")
    return "\n".join(out)
