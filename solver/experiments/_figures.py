"""Figures of the experiments: a matplotlib figure without pyplot, saved atomically as PNG."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..io import atomic_write
from ._sweep import as_columns

__all__ = ["figure", "save_png", "theta_lines", "trajectories"]


def figure(w: float, h: float):
    """A ``w × h`` inch figure, constrained layout (no global pyplot state)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), layout="constrained")


def save_png(fig, path: Path, comm=None) -> Path:
    """PNG written atomically (rank 0), reduced to a 256-colour palette (3x smaller)."""
    if comm is None or comm.rank == 0:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90)
        try:
            from PIL import Image

            small = io.BytesIO()
            Image.open(buf).convert("RGB").quantize(256).save(small, format="png", optimize=True)
            buf = small
        except ImportError:  # pragma: no cover - Pillow comes with matplotlib
            pass
        atomic_write(Path(path), lambda f: f.write(buf.getvalue()))
    return Path(path)


def theta_lines(t: np.ndarray, theta: np.ndarray):
    """Angles with NaN breaks where a trajectory wraps around ±π (for line plots)."""
    t, theta = np.asarray(t, float), np.asarray(theta, float)
    jump = np.abs(np.diff(theta)) > np.pi
    if not jump.any():
        return t, theta
    idx = np.flatnonzero(jump) + 1
    return np.insert(t, idx, np.nan), np.insert(theta, idx, np.nan)


def trajectories(rows) -> tuple[np.ndarray, np.ndarray]:
    """``(times, theta (nt, n))`` from rows with columns ``t, particle, theta``."""
    c = as_columns(rows)
    times = np.unique(c["t"])
    n = int(c["particle"].max()) + 1
    theta = c["theta"].reshape(len(times), n)
    return times, theta
