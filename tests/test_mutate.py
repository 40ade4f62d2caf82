"""scripts/mutate.py keeps up with the code: every mutation in its list still applies (its
text occurs exactly once in its file) and names test files that exist, so a refactor that
moves a guarded line shows here, not months later as a silent gap in the audit."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _mutate():
    spec = importlib.util.spec_from_file_location("mutate", ROOT / "scripts" / "mutate.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("mutate", mod)  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


MUTATIONS = _mutate().MUTATIONS


@pytest.mark.parametrize("m", MUTATIONS, ids=[m.name for m in MUTATIONS])
def test_mutation_applies_and_names_its_tests(m):
    text = (ROOT / m.file).read_text()
    assert text.count(m.old) == 1, f"{m.name}: {m.file} has {text.count(m.old)} matches"
    assert m.new != m.old
    files = [t.split("::")[0] for t in m.tests if t.endswith(".py") or ".py::" in t]
    assert files and all((ROOT / f).is_file() for f in files), m.tests


def test_mutation_names_are_unique():
    names = [m.name for m in MUTATIONS]
    assert len(names) == len(set(names)) >= 13
