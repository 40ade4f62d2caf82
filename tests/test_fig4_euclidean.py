"""Fig 4 of arXiv 2402.15415 in the authors' own model (scripts/fig4_euclidean.py): with
Q̃ = K̃ = e1e1ᵀ, V = I, the tokens "converge towards a two-point clustering which is on affine
hyperplanes" in the time-rescaled Euclidean model of the authors' code, not in the static one
nor on the sphere."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _script():
    path = ROOT / "scripts" / "fig4_euclidean.py"
    spec = importlib.util.spec_from_file_location("fig4_euclidean", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_fig4_two_points_only_in_the_rescaled_model(tmp_path):
    """8 seeds (n = 20, z0 uniform in [−1, 1]²): the rescaled model ends in two points in 6 of
    them (seeds 3, 4: one), and the pairs are fixed (largest move from T = 10 to 20: measured
    1.2e-4 .. 2.6e-4, the last tokens settling at rate 1; asserted < 1e-3); the static model
    and S^1 end in one point in all 8 (the two-point state is a saddle there)."""
    mod = _script()
    runs = mod.fig4_runs(8)
    count = {g: [len(r["points"]) for r in runs if r["geometry"] == g] for g in mod.GEOMETRIES}
    assert count["euclidean-rescaled"] == [2, 2, 2, 1, 1, 2, 2, 2]
    assert count["euclidean"] == [1] * 8 and count["sphere"] == [1] * 8
    pairs = [r for r in runs if r["geometry"] == "euclidean-rescaled" and len(r["points"]) == 2]
    assert all(r["move"] < 1e-3 for r in pairs)
    # on opposite sides of the hyperplane z_1 = 0 (each side follows its own extreme token)
    assert all(r["points"][0, 0] * r["points"][1, 0] < 0 for r in pairs)
    assert mod.plot(runs, tmp_path / "f.png").is_file()
    assert mod.main(["--seeds", "0"]) == 2
