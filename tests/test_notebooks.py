"""Every notebook (jupytext percent file notebooks/*.py) runs without error on a small preset.

Each one is executed as a script in a temporary folder with ``SOLVER_NOTEBOOK_PRESET=small``,
which the notebooks read to choose a coarse mesh and a short time, so that they never rot.
The experiment notebooks run their experiment's ``tiny`` preset, which other tests run already
(:data:`DUPLICATED`): their runs are marked slow.
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
#: Notebooks whose small-preset run is the experiment's ``tiny`` preset, which the default
#: suite already runs (and checks) in the test named here: their own run is marked slow (CI
#: runs it), so the default suite does not pay for each experiment twice.
DUPLICATED = {
    "exp_depth": "test_experiments.py::test_depth",
    "exp_fig2": "test_experiments.py::test_fig2",
    "exp_linear_response": "test_response.py::test_linear_response_experiment",
    "exp_lora_kinds": "test_experiments.py::test_lora_kinds",
    "exp_phase_diagram": "test_experiments.py::test_phase_diagram",
    "exp_random_adapters": "test_experiments.py::test_random_adapters",
    "exp_real_models": "test_real_models.py::out",
    "exp_spectral_gap": "test_spectral_gap.py::tiny",
    "exp_two_clusters": "test_experiments.py::test_two_clusters",
}


def _run_param(path: Path):
    slow = path.stem in DUPLICATED
    return pytest.param(path, id=path.stem, marks=[pytest.mark.slow] if slow else [])


def test_there_are_notebooks():
    assert any(p.name == "quickstart.py" for p in NOTEBOOKS)


@pytest.mark.parametrize("stem", sorted(DUPLICATED))
def test_duplicated_notebooks_run_their_tiny_preset_elsewhere(stem):
    """A notebook marked slow here runs the ``tiny`` preset in its small mode, and the named
    test (a function or fixture) exists and runs that preset: the list stays honest."""
    path = ROOT / "notebooks" / f"{stem}.py"
    if not path.exists():
        pytest.skip(f"{stem}.py is not in this checkout")
    text = path.read_text()
    assert '"tiny" if SMALL' in text or "tiny" in text.split("SMALL =", 1)[1][:200], stem
    file, name = DUPLICATED[stem].split("::")
    test = (ROOT / "tests" / file).read_text()
    assert f"def {name}(" in test, DUPLICATED[stem]
    experiment = stem.removeprefix("exp_")
    assert f'"{experiment}"' in test or f"run_{experiment}" in test, DUPLICATED[stem]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_jupytext_percent(path):
    text = path.read_text()
    assert "# %% [markdown]" in text and "format_name: percent" in text
    jupytext = pytest.importorskip("jupytext")
    nb = jupytext.read(path)
    kinds = {c.cell_type for c in nb.cells}
    assert kinds == {"markdown", "code"}


@pytest.mark.parametrize("path", [_run_param(p) for p in NOTEBOOKS])
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
