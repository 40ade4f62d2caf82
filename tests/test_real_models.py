"""The real_models experiment on its tiny preset (one in-process run shared by the tests):
training lowers the loss, the Lipschitz readout bound holds where it is active, the saved
spectra are numpy.linalg.eigvals of the saved weights, and the saved models read back
through `python -m solver adapter`."""

from __future__ import annotations

import importlib.util
import json
import tomllib
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("jax")
pytest.importorskip("safetensors")

from safetensors.numpy import load_file  # noqa: E402

from solver.cli import main as solver_main  # noqa: E402
from solver.experiments import read_rows  # noqa: E402
from solver.experiments.real_models import PRESETS, adapter_folder, base_folder  # noqa: E402

pytestmark = pytest.mark.serial  # in-process runs use COMM_WORLD

ROOT = Path(__file__).resolve().parents[1]
TINY = PRESETS["tiny"]


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    path = ROOT / "scripts" / "exp_real_models.py"
    spec = importlib.util.spec_from_file_location("exp_real_models", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    o = tmp_path_factory.mktemp("real_models")
    assert mod.main(["--preset", "tiny", "--output", str(o), "--no-progress"]) == 0
    assert mod.PRESETS == PRESETS
    return o


def test_outputs(out):
    for f in ("pretrain.csv", "finetune.csv", "norm.csv", "standard.csv", "pde.csv",
              "standard_pde.csv", "summary.json", "real_models.png", "params.toml"):  # fmt: skip
        assert (out / f).is_file(), f
    fine = read_rows(out / "finetune.csv")
    assert len(fine) == len(TINY["dims"]) * len(TINY["methods"]) * TINY["seeds"]
    s = json.loads((out / "summary.json").read_text())
    assert set(s["spearman"]) == {str(d) for d in TINY["dims"]}


def test_training_lowers_the_loss(out):
    """Pre-training: held-out old-task loss falls (tiny preset measured 0.65 -> 0.14 for the
    tied d = 2 model, 40 Adam steps) and the accuracy beats chance clearly; fine-tuning
    raises the new task's accuracy for full fine-tuning (measured 0.44 -> 0.86)."""
    for r in read_rows(out / "pretrain.csv"):
        assert r["loss"] < 0.6 * r["loss_before"], r
        assert r["acc"] > 0.75, r
    full = [r for r in read_rows(out / "finetune.csv") if r["method"] == "full"]
    assert np.mean([r["new_acc"] - r["new_acc_base"] for r in full]) > 0.15


def test_lipschitz_readout_bound_holds_where_active(out):
    """|r(μ_T) − r(ν_T)| <= Lip · W1 <= Lip · W2 input by input (exact OT); active = W1 > 0."""
    rows = read_rows(out / "finetune.csv")
    assert sum(r["lip_active"] for r in rows) > 0
    assert all(r["lip_violations"] == 0 for r in rows)
    assert all(0 < r["lip_ratio_max"] <= 1 for r in rows if r["lip_active"])


def test_readback_and_spectra_of_the_saved_weights(out, capsys):
    """spectra.json holds numpy.linalg.eigvals of the heads of the saved safetensors (base:
    model.safetensors; fine-tuned: the PEFT adapter merged as W + (alpha/r) B A), and the
    adapter command reproduces the fine-tuned matrices from the saved folders."""
    d, L, H = TINY["dims"][0], TINY["layers"], TINY["heads"]
    for r in read_rows(out / "finetune.csv"):
        assert r["readback_err"] < 1e-12, r
    for method in TINY["methods"]:
        bf, af = base_folder(out, d, L), adapter_folder(out, d, method, 0)
        w = load_file(str(bf / "model.safetensors"))
        ad = load_file(str(af / "adapter_model.safetensors"))
        acfg = json.loads((af / "adapter_config.json").read_text())
        scale = acfg["lora_alpha"] / acfg["r"]
        W = {m: w[f"model.layers.0.self_attn.{m}_proj.weight"] for m in "qkvo"}
        Wf = dict(W)
        for m in "qkvo":
            key = f"base_model.model.model.layers.0.self_attn.{m}_proj.lora_"
            if key + "A.weight" in ad:
                Wf[m] = W[m] + scale * ad[key + "B.weight"] @ ad[key + "A.weight"]
        spectra = json.loads((af / "spectra.json").read_text())
        assert len(spectra) == H
        for sp in spectra:
            h = sp["head"]
            for which, M in (("base", W), ("finetuned", Wf)):
                q, k = M["q"][h * d : (h + 1) * d], M["k"][h * d : (h + 1) * d]
                v, o = M["v"][h * d : (h + 1) * d], M["o"][:, h * d : (h + 1) * d]
                for name, X in (("V_eig", o @ v), ("A_eig", k.T @ q / np.sqrt(d))):
                    got = np.sort_complex(np.array([complex(*z) for z in sp[which][name]]))
                    want = np.sort_complex(np.linalg.eigvals(X).astype(complex))
                    assert np.allclose(got, want, rtol=0, atol=1e-12), (method, which, name)
        rc = solver_main(["adapter", "--base", str(bf), "--adapter", str(af), "--layer",
                          str(L - 1), "--head", "1"])  # fmt: skip
        toml = tomllib.loads(capsys.readouterr().out)
        assert rc == 0
        Vft = np.array(toml["model"]["V"]) + np.array(toml["perturbation"]["dV"])
        want = np.sort_complex(np.linalg.eigvals(Wf["o"][:, d:] @ Wf["v"][d:]).astype(complex))
        assert np.allclose(np.sort_complex(np.linalg.eigvals(Vft).astype(complex)), want,
                           atol=1e-12)  # fmt: skip


def test_pde_on_the_trained_heads_beside_the_particles(out):
    """The PDE (all heads, read back from the saved folders) from one input's token law: its
    W2(μ_T, ν_T) is that of the particles from tokens of the same law (the transformer's own
    steps) within the 200-token sampling and 64-cell mesh errors (tiny: PDE / particles
    0.88-0.94 measured; bounds 0.6-1.4), for every method; the fine-tuned flow moved."""
    rows = read_rows(out / "pde.csv")
    assert len(rows) == len(TINY["methods"]) * TINY["pde_seeds"]
    for r in rows:
        assert r["w2_pde"] > 0.05, r
        assert 0.6 < r["w2_pde"] / r["w2_particles_big"] < 1.4, r
    s = json.loads((out / "summary.json").read_text())
    assert s["pde"]["2"]["items"] == len(rows)


def test_standard_transformer_on_the_pde_layer_by_layer(out):
    """One row per layer 0..L; at layer 0 the hidden states are the particles' start (the same
    tokens: W2 0 between them, and the same W2 to the PDE's initial density)."""
    rows = sorted(read_rows(out / "standard_pde.csv"), key=lambda r: r["layer"])
    assert [r["layer"] for r in rows] == list(range(TINY["std_layers"] + 1))
    assert rows[0]["w2_particles_hidden"] == 0.0
    assert rows[0]["w2_pde_hidden"] == rows[0]["w2_pde_particles"] > 0
    assert all(r["w2_particles_hidden"] > 0 for r in rows[1:])


def test_norm_transition_rows(out):
    """Larger random per-layer ΔV (η = 3 against 0.3) forgets more at every L."""
    rows = read_rows(out / "norm.csv")
    for L in TINY["norm_layers"]:
        lo = np.mean([r["old_loss"] for r in rows if r["L"] == L and r["eta"] == 0.3])
        hi = np.mean([r["old_loss"] for r in rows if r["L"] == L and r["eta"] == 3.0])
        assert hi > lo


def test_bad_parameters_exit_2(tmp_path, capsys):
    path = ROOT / "scripts" / "exp_real_models.py"
    spec = importlib.util.spec_from_file_location("exp_real_models", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cfg = tmp_path / "bad.toml"
    cfg.write_text('methods = ["lora_x"]\n')
    argv = ["--preset", "tiny", "--config", str(cfg), "--output", str(tmp_path / "o")]
    assert mod.main(argv) == 2
    assert "methods" in capsys.readouterr().err
