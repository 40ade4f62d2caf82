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

__all__ = [
    "ConfigError",
    "load_config",
    "resolve_config",
    "default_config_text",
    "build_model",
    "build_initial",
    "dump_toml",
    "toml_value",
]


class ConfigError(ValueError):
    """An invalid configuration; the message names the offending field."""


_NONE = object()  # "no default": optional key, absent unless given

# section -> key -> default (``_NONE``: optional without default)
SCHEMA: dict[str, dict[str, Any]] = {
    "mesh": {"sphere": 2, "refinement": _NONE, "cells": _NONE, "file": _NONE, "project": False},
    "model": {"Q": _NONE, "K": _NONE, "V": _NONE},
    "perturbation": {
        "kind": "none",
        "dV": _NONE,
        "B": _NONE,
        "A": _NONE,
        "dA": _NONE,
        "eta": _NONE,
        "s": [1.0],
        "layer_length": _NONE,
        "seed": 0,
        "on": "V",
    },
    "initial": {
        "kind": "uniform",
        "centre": _NONE,
        "kappa": _NONE,
        "expression": _NONE,
        "components": _NONE,
        "weights": _NONE,
    },
    "time": {"T": _NONE, "cfl": 0.5, "save_every": _NONE},
    "scheme": {"degree": 0},
    "velocity": {"method": "auto", "tolerance": 1e-10},
    "output": {"vtx": True, "w2": True},
    "validation": {
        "levels": _NONE,
        "sizes": [100, 400, 1600],
        "seeds": 3,
        "particle_dt": 0.02,
        "w2_method": "auto",
    },
}


def default_config_text() -> str:
    """The embedded default configuration (TOML)."""
    return resources.files("solver.io").joinpath("default.toml").read_text()


def _num(name: str, v, *, integer=False, positive=False, nonneg=False) -> float | int:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ConfigError(f"{name} must be a number, got {v!r}")
    if not math.isfinite(v):
        raise ConfigError(f"{name} must be finite, got {v!r}")
    if integer and int(v) != v:
        raise ConfigError(f"{name} must be an integer, got {v!r}")
    if positive and v <= 0:
        raise ConfigError(f"{name} must be > 0, got {v!r}")
    if nonneg and v < 0:
        raise ConfigError(f"{name} must be >= 0, got {v!r}")
    return int(v) if integer else float(v)


def _matrix(name: str, v, d: int, cols: int | None = None) -> list:
    cols = d if cols is None else cols
    try:
        M = np.array(v, dtype=float)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a nested list of numbers (a matrix)") from None
    if M.ndim == 1 and cols == 1:
        M = M[:, None]
    if M.ndim != 2 or M.shape[0] != d or (cols != -1 and M.shape[1] != cols):
        want = f"{d} x {cols}" if cols != -1 else f"{d} x r"
        raise ConfigError(f"{name} must be a {want} matrix, got shape {M.shape}")
    if not np.all(np.isfinite(M)):
        raise ConfigError(f"{name} contains NaN or infinite entries")
    return M.tolist()


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

    m = cfg["mesh"]
    m["project"] = bool(m["project"])
    if "file" in m:
        if not isinstance(m["file"], str) or not m["file"]:
            raise ConfigError("mesh.file must be a path string")
        m.pop("sphere", None)
    else:
        s = _num("mesh.sphere", m["sphere"], integer=True)
        if s not in (1, 2):
            raise ConfigError(f"mesh.sphere must be 1 (circle) or 2 (sphere), got {s}")
        m["sphere"] = s
        if s == 1:
            if "cells" not in m:
                raise ConfigError("mesh.cells (number of segments) is required when sphere = 1")
            m["cells"] = _num("mesh.cells", m["cells"], integer=True)
            if m["cells"] < 3:
                raise ConfigError(f"mesh.cells must be >= 3, got {m['cells']}")
        else:
            if "refinement" not in m:
                raise ConfigError("mesh.refinement (icosphere level 0..7) is required")
            r = _num("mesh.refinement", m["refinement"], integer=True)
            if not 0 <= r <= 7:
                raise ConfigError(f"mesh.refinement must be in 0..7, got {r}")
            m["refinement"] = r
    d = {1: 2, 2: 3}.get(m.get("sphere"))

    mod = cfg["model"]
    if d is None:  # mesh from a file: the model fixes d (checked against the mesh later)
        given = [mod[k] for k in ("V", "Q", "K") if isinstance(mod.get(k), list) and mod[k]]
        d = len(given[0]) if given else 3
    for k in ("Q", "K", "V"):
        mod[k] = _matrix(f"model.{k}", mod.get(k, np.eye(d).tolist()), d)

    p = cfg["perturbation"]
    kind = p["kind"]
    if kind not in ("none", "tied", "random"):
        raise ConfigError(f"perturbation.kind must be 'none', 'tied' or 'random', got {kind!r}")
    if kind == "tied":
        if "dV" in p and ("B" in p or "A" in p):
            raise ConfigError("give either perturbation.dV or its factors B and A, not both")
        if "dV" in p:
            p["dV"] = _matrix("perturbation.dV", p["dV"], d)
        elif "B" in p and "A" in p:
            B = _matrix("perturbation.B", p["B"], d, -1)
            A = _matrix("perturbation.A", p["A"], d, -1)
            if np.shape(B) != np.shape(A):
                raise ConfigError(f"perturbation.B and .A must both be {d} x r")
            p["B"], p["A"] = B, A
        elif "dA" not in p:
            raise ConfigError("a tied perturbation needs dV (or B and A) and/or dA")
        if "dA" in p:
            p["dA"] = _matrix("perturbation.dA", p["dA"], d)
    elif kind == "random":
        for k in ("eta", "layer_length"):
            if k not in p:
                raise ConfigError(f"perturbation.{k} is required for random adapters")
        p["eta"] = _num("perturbation.eta", p["eta"], nonneg=True)
        p["layer_length"] = _num("perturbation.layer_length", p["layer_length"], positive=True)
        p["seed"] = _num("perturbation.seed", p["seed"], integer=True, nonneg=True)
        if not isinstance(p["s"], list) or not p["s"]:
            raise ConfigError("perturbation.s must be a non-empty list of singular values")
        p["s"] = [_num("perturbation.s[]", v, nonneg=True) for v in p["s"]]
        if p["on"] not in ("V", "A", "both"):
            raise ConfigError(f"perturbation.on must be 'V', 'A' or 'both', got {p['on']!r}")
    cfg["initial"] = _resolve_initial("initial", cfg["initial"], d)

    t = cfg["time"]
    if "T" not in t:
        raise ConfigError("time.T (final time) is required")
    t["T"] = _num("time.T", t["T"], positive=True)
    t["cfl"] = _num("time.cfl", t["cfl"], positive=True)
    if t["cfl"] > 1:
        raise ConfigError(f"time.cfl must be <= 1 (positivity of the scheme), got {t['cfl']}")
    t["save_every"] = _num("time.save_every", t.get("save_every", t["T"]), positive=True)

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
    for k in ("vtx", "w2"):
        if not isinstance(cfg["output"][k], bool):
            raise ConfigError(f"output.{k} must be true or false")
    _resolve_validation(cfg["validation"])
    return cfg


def _resolve_validation(v: dict) -> None:
    if "levels" in v:
        if not isinstance(v["levels"], list) or not v["levels"]:
            raise ConfigError("validation.levels must be a non-empty list of mesh levels")
        v["levels"] = [
            _num("validation.levels[]", x, integer=True, nonneg=True) for x in v["levels"]
        ]
    if not isinstance(v["sizes"], list) or len(v["sizes"]) < 2:
        raise ConfigError("validation.sizes must list at least two particle counts")
    v["sizes"] = sorted(_num("validation.sizes[]", x, integer=True, positive=True)
                        for x in v["sizes"])  # fmt: skip
    v["seeds"] = _num("validation.seeds", v["seeds"], integer=True, positive=True)
    v["particle_dt"] = _num("validation.particle_dt", v["particle_dt"], positive=True)
    if v["w2_method"] not in ("auto", "exact", "sinkhorn", "sliced"):
        raise ConfigError(
            f"validation.w2_method must be auto, exact, sinkhorn or sliced, got {v['w2_method']!r}"
        )


def _resolve_initial(name: str, ini: dict, d: int) -> dict:
    kind = ini.get("kind", "uniform")
    allowed = {
        "uniform": {"kind"},
        "vmf": {"kind", "centre", "kappa"},
        "mixture": {"kind", "components", "weights"},
        "expression": {"kind", "expression"},
    }
    if kind not in allowed:
        raise ConfigError(f"{name}.kind must be one of {sorted(allowed)}, got {kind!r}")
    extra = sorted(set(ini) - allowed[kind])
    if extra:
        raise ConfigError(f"{name}: key(s) {extra} do not apply to kind = {kind!r}")
    out = {"kind": kind}
    if kind == "vmf":
        for k in ("centre", "kappa"):
            if k not in ini:
                raise ConfigError(f"{name}.{k} is required for kind = 'vmf'")
        c = np.array(ini["centre"], dtype=float) if isinstance(ini["centre"], list) else None
        if c is None or c.shape != (d,) or not np.all(np.isfinite(c)) or not np.any(c):
            raise ConfigError(f"{name}.centre must be a non-zero list of {d} numbers")
        out["centre"] = c.tolist()
        out["kappa"] = _num(f"{name}.kappa", ini["kappa"], nonneg=True)
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
            _resolve_initial(f"{name}.components[{i}]", c, d) for i, c in enumerate(comps)
        ]
    elif kind == "expression":
        if not isinstance(ini.get("expression"), str):
            raise ConfigError(f"{name}.expression must be a string (NumPy expression in x, y, z)")
        try:
            Expression(ini["expression"])
        except ValueError as e:
            raise ConfigError(str(e)) from None
        out["expression"] = ini["expression"]
    return out


def load_config(path: str | Path | None) -> dict:
    """Read, validate and resolve a TOML config (``None``: the embedded default)."""
    if path is None:
        text, where = default_config_text(), "<default config>"
    else:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist or is not a file")
        text, where = p.read_text(), str(p)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{where} is not valid TOML: {e}") from None
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
