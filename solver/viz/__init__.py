"""Pictures of a run's output folder: densities on the sphere, animations, diagnostics.

Works from the files of an output folder alone (see :mod:`solver.viz._plot`); PyVista is
imported only when an S^2 picture is made.
"""

from ._plot import (
    add_plot_parser,
    animate_run,
    plot_diagnostics,
    plot_main,
    plot_run,
    read_vtx,
    show,
    to_pyvista,
)

__all__ = [
    "plot_run",
    "animate_run",
    "plot_diagnostics",
    "to_pyvista",
    "read_vtx",
    "show",
    "add_plot_parser",
    "plot_main",
]
