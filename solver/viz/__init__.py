"""Pictures of a run's output folder: densities on the sphere, animations, diagnostics.

Works from the files of an output folder alone; PyVista is imported only when an S^2 picture is
made. Inside: the run's data and mesh (``_data``), the S^2/S^1 scenes (``_scenes``), the
pictures (``_plots``) and ``python -m solver plot`` (``_cli``).
"""

from ._cli import add_plot_parser, plot_main
from ._data import read_vtx
from ._plots import animate_run, plot_diagnostics, plot_run, show, to_pyvista, view_direction

__all__ = [
    "plot_run",
    "animate_run",
    "plot_diagnostics",
    "to_pyvista",
    "read_vtx",
    "show",
    "view_direction",
    "add_plot_parser",
    "plot_main",
]
