"""Pictures of a run's output folder: densities on the sphere, animations, diagnostics.

Works from the files of an output folder alone; PyVista is imported only when an S^2 picture is
made. Inside: the run's data and mesh (``_data``), the S^2/S^1 scenes (``_scenes``), the
pictures (``_plots``) and ``python -m solver plot`` (``_cli``).
"""

import importlib

#: name -> module, imported on first use (``python -m solver --help`` builds the ``plot``
#: parser without NumPy, the mesh or the pictures' libraries)
_LAZY = {"add_plot_parser": "._cli", "plot_main": "._cli", "read_vtx": "._data",
         **dict.fromkeys(("animate_run", "plot_diagnostics", "plot_run", "show", "to_pyvista",
                          "view_direction", "ffmpeg", "default_animation"), "._plots")}  # fmt: skip

__all__ = [
    "plot_run",
    "animate_run",
    "plot_diagnostics",
    "to_pyvista",
    "read_vtx",
    "show",
    "view_direction",
    "ffmpeg",
    "default_animation",
    "add_plot_parser",
    "plot_main",
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
