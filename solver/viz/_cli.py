"""``python -m solver plot DIR``: the pictures of :mod:`solver.viz` from the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_plot_parser", "plot_main"]


def add_plot_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``plot`` to the ``python -m solver`` subcommands."""
    p = subparsers.add_parser(
        "plot",
        help="pictures of a run's output folder (PNG, GIF/MP4, diagnostics)",
        description="Render the base and perturbed densities side by side at saved times "
        "(S^2: coloured sphere; S^1: polar plot), an animation over all saved times and "
        "the diagnostics. Works without a screen (off-screen VTK).",
    )
    p.add_argument("folder", type=Path, help="output folder of `python -m solver run`")
    p.add_argument("--times", "-t", nargs="+", metavar="T",
                   help="times to show (nearest saved ones), or 'all'; "
                   "default: first, middle, last")  # fmt: skip
    p.add_argument(
        "--warp",
        nargs="?",
        type=float,
        const=0.5,
        default=0.0,
        metavar="FACTOR",
        help="S^2: warp the sphere radially by FACTOR·ρ/max ρ (default 0.5)",
    )
    p.add_argument("--out", "-o", type=Path, help="folder for the pictures (default DIR/plots)")
    p.add_argument(
        "--clim",
        choices=("time", "global"),
        default=None,
        help="one colour range per time or for all times (default: per time for the PNGs, "
        "global for the animation)",
    )
    p.add_argument(
        "--per-flow",
        action="store_true",
        help="one colour range (and colour bar) per flow, not one for both: the base flow "
        "keeps its contrast beside a sharp perturbed cluster",
    )
    p.add_argument(
        "--animation",
        choices=("auto", "mp4", "gif", "none"),
        default="auto",
        help="animation over all saved times (default auto: mp4 where ffmpeg exists, e.g. "
        "from imageio-ffmpeg, else gif)",
    )
    p.add_argument("--fps", type=float, default=10.0,
                   help="frames per second of the animation (default 10)")  # fmt: skip
    p.add_argument("--no-diagnostics", action="store_true", help="skip diagnostics.png")
    p.add_argument(
        "--show", action="store_true", help="also open an interactive window (needs a display)"
    )
    return p


def plot_main(args: argparse.Namespace) -> int:
    """Run ``python -m solver plot``; exit status 0, or 2 with a message for bad input."""
    from ._plots import (  # on use: --help stays fast
        animate_run,
        default_animation,
        plot_diagnostics,
        plot_run,
    )

    try:  # under mpiexec, one rank draws
        from mpi4py import MPI

        if MPI.COMM_WORLD.rank != 0:
            return 0
    except ImportError:  # pragma: no cover
        pass
    times = args.times
    try:
        if times is not None and times != ["all"]:
            try:
                times = [float(t) for t in times]
            except ValueError:
                raise ValueError(f"--times: numbers or 'all', got {' '.join(times)}") from None
        elif times == ["all"]:
            times = "all"
        written = plot_run(args.folder, times, warp=args.warp, out=args.out,
                           clim=args.clim or "time", per_flow=args.per_flow,
                           show=args.show)  # fmt: skip
        if args.animation != "none":
            kind = default_animation() if args.animation == "auto" else args.animation
            target = (args.out or args.folder / "plots") / f"density.{kind}"
            written.append(animate_run(args.folder, target, fps=args.fps, warp=args.warp,
                                       clim=args.clim or "global",
                                       per_flow=args.per_flow))  # fmt: skip
        if not args.no_diagnostics:
            written.append(plot_diagnostics(args.folder, args.out))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (ImportError, OSError) as e:  # no pyvista or ffmpeg, or ffmpeg failed
        print(f"error: {e}", file=sys.stderr)
        return 1
    for p in written:
        print(p)
    return 0
