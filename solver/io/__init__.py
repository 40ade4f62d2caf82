"""Files: the config schema (the only home of defaults), results, atomic writes, VTX/XDMF.

:class:`FieldWriter` (DOLFINx's VTX writer, XDMF where DOLFINx lacks ADIOS2) is imported on
first use.
"""

from __future__ import annotations

import importlib

from ._config import (
    ConfigError,
    build_initial,
    build_model,
    check_config,
    default_config_text,
    defaults,
    dump_toml,
    estimate_resources,
    load_config,
    mesh_defect,
    resolve_config,
    toml_value,
)
from ._files import (
    atomic_savez,
    atomic_write,
    atomic_write_text,
    load_result,
    read_csv,
    versions,
    write_csv,
    write_versions,
)
from ._progress import PlainProgress, progress
from ._run_folder import RUN_FILES, RunFolder, fingerprint

_DOLFINX = {"FieldWriter": "._vtx"}

__all__ = [
    "ConfigError",
    "defaults",
    "load_config",
    "resolve_config",
    "default_config_text",
    "build_model",
    "build_initial",
    "dump_toml",
    "toml_value",
    "check_config",
    "mesh_defect",
    "estimate_resources",
    "atomic_write",
    "atomic_write_text",
    "atomic_savez",
    "write_csv",
    "read_csv",
    "versions",
    "write_versions",
    "load_result",
    "RunFolder",
    "fingerprint",
    "RUN_FILES",
    "progress",
    "PlainProgress",
    *_DOLFINX,
]


def __getattr__(name: str):
    if name in _DOLFINX:
        return getattr(importlib.import_module(_DOLFINX[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
