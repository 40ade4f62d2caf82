"""Every notebook (jupytext percent file notebooks/*.py) runs without error on a small preset.

Each one is executed as a script in a temporary folder with ``SOLVER_NOTEBOOK_PRESET=small``,
which the notebooks read to choose a coarse mesh and a short time, so that they never rot.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.serial

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.py"))


def test_there_are_notebooks():
    assert any(p.name == "quickstart.py" for p in NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_jupytext_percent(path):
    text = path.read_text()
    assert "# %% [markdown]" in text and "format_name: percent" in text
    jupytext = pytest.importorskip("jupytext")
    nb = jupytext.read(path)
    kinds = {c.cell_type for c in nb.cells}
    assert kinds == {"markdown", "code"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path):
    pytest.importorskip("pyvista")
    path_ = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, SOLVER_NOTEBOOK_PRESET="small", MPLBACKEND="Agg",
               PYVISTA_OFF_SCREEN="true", OMP_NUM_THREADS="1", PYTHONPATH=path_)  # fmt: skip
    p = subprocess.run([sys.executable, str(path)], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=600)  # fmt: skip
    assert p.returncode == 0, f"{path.name} failed:\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}"
    pngs = list(tmp_path.rglob("*.png"))
    assert pngs, f"{path.name} made no picture"
