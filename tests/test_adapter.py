"""`python -m solver adapter`: one head of a Hugging Face model folder + a PEFT LoRA adapter
folder as [model]/[perturbation] TOML, on folders this test writes (grouped-query attention,
head_dim != hidden_size / heads), against the formula; broken folders exit 2."""

from __future__ import annotations

import json
import tomllib

import numpy as np
import pytest

pytest.importorskip("safetensors")
from safetensors.numpy import save_file  # noqa: E402

from solver.cli import main  # noqa: E402
from solver.io import build_model, resolve_config  # noqa: E402

pytestmark = pytest.mark.serial  # the command prints on rank 0 only

D, H, HKV, DH, LAYERS, R, ALPHA = 12, 4, 2, 5, 2, 2, 6.0  # q: (20, 12), k/v: (10, 12)
MOD = "model.layers.{l}.self_attn.{m}_proj.weight"
LORA = "base_model.model.model.layers.{l}.self_attn.{m}_proj.lora_{ab}.weight"
SHAPES = {"q": (H * DH, D), "k": (HKV * DH, D), "v": (HKV * DH, D), "o": (D, H * DH)}


def write_folders(tmp_path, targets=("q_proj", "k_proj", "v_proj", "o_proj"), config=None,
                  drop=(), reshape=None):  # fmt: skip
    rng = np.random.default_rng(0)
    base, ad = tmp_path / "base", tmp_path / "adapter"
    base.mkdir(exist_ok=True)
    ad.mkdir(exist_ok=True)
    cfg = {"hidden_size": D, "num_attention_heads": H, "num_key_value_heads": HKV,
           "head_dim": DH, "num_hidden_layers": LAYERS}  # fmt: skip
    cfg.update(config or {})
    (base / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if v is not None}))
    W = {(l, m): rng.normal(size=SHAPES[m]) for l in range(LAYERS) for m in "qkvo"}
    tensors = {MOD.format(l=l, m=m): w for (l, m), w in W.items()}
    if reshape:
        tensors[reshape] = tensors[reshape][:-1]
    save_file({k: v for k, v in tensors.items() if k not in drop}, str(base / "model.safetensors"))
    acfg = {"r": R, "lora_alpha": ALPHA, "target_modules": list(targets), "peft_type": "LORA"}
    (ad / "adapter_config.json").write_text(json.dumps(acfg))
    L = {}
    for l in range(LAYERS):
        for t in targets:
            m = t[0]
            out, inp = SHAPES[m]
            L[(l, m)] = (rng.normal(size=(R, inp)), rng.normal(size=(out, R)))
    at = {LORA.format(l=l, m=m, ab=ab): x
          for (l, m), (A_, B_) in L.items() for ab, x in (("A", A_), ("B", B_))}  # fmt: skip
    save_file({k: v for k, v in at.items() if k not in drop}, str(ad / "adapter_model.safetensors"))
    return base, ad, W, L


def expected(W, L, layer, head):
    """The formula, on merged weights W + (alpha/r) B A (not the code's expansion)."""
    kv = head // (H // HKV)
    merged = {m: W[(layer, m)] + (ALPHA / R * L[(layer, m)][1] @ L[(layer, m)][0]
                                  if (layer, m) in L else 0) for m in "qkvo"}  # fmt: skip

    def av(w):
        q, k = w["q"][head * DH : (head + 1) * DH], w["k"][kv * DH : (kv + 1) * DH]
        v, o = w["v"][kv * DH : (kv + 1) * DH], w["o"][:, head * DH : (head + 1) * DH]
        return k.T @ q / np.sqrt(DH), o @ v

    (A, V), (A2, V2) = av({m: W[(layer, m)] for m in "qkvo"}), av(merged)
    return A, V, A2 - A, V2 - V


def run(capsys, base, ad, *extra):
    rc = main(["adapter", "--base", str(base), "--adapter", str(ad), *extra])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("layer,head", [(0, 0), (1, 3), (1, 2)])
def test_matrices_are_the_formula(tmp_path, capsys, layer, head):
    base, ad, W, L = write_folders(tmp_path)
    rc, out, _ = run(capsys, base, ad, "--layer", str(layer), "--head", str(head))
    assert rc == 0
    toml = tomllib.loads(out)
    A, V, dA, dV = expected(W, L, layer, head)
    scale = max(np.abs(M).max() for M in (A, V, dA, dV))
    got = {k: np.array(toml["model"][k]) for k in "QKV"}
    # printed with repr (17 significant digits): equal to round-off (measured 2e-15 relative)
    tol = 1e-13 * scale
    assert np.abs(got["K"].T @ got["Q"] - A).max() < tol
    assert np.abs(got["V"] - V).max() < tol
    assert toml["perturbation"]["kind"] == "tied"
    assert np.abs(np.array(toml["perturbation"]["dA"]) - dA).max() < tol
    assert np.abs(np.array(toml["perturbation"]["dV"]) - dV).max() < tol
    assert np.abs(dA).max() > 0.1 and np.abs(dV).max() > 0.1


def test_value_only_adapter_leaves_A(tmp_path, capsys):
    base, ad, W, L = write_folders(tmp_path, targets=("v_proj",))
    rc, out, _ = run(capsys, base, ad, "--layer", "1", "--head", "1")
    assert rc == 0
    toml = tomllib.loads(out)
    assert not np.any(np.array(toml["perturbation"]["dA"]))
    assert np.abs(np.array(toml["perturbation"]["dV"]) - expected(W, L, 1, 1)[3]).max() < 1e-12


def test_projection_loads_in_the_config(tmp_path, capsys):
    """--dim 3: U_3 = top-3 left singular vectors of V; the TOML plus a mesh and a time
    table is a valid `solver run` config whose model is U^T (A, V, A + dA, V + dV) U."""
    base, ad, W, L = write_folders(tmp_path)
    rc, out, err = run(capsys, base, ad, "--layer", "0", "--head", "2", "--dim", "3")
    assert rc == 0 and "relative Frobenius error" in err
    cfg = resolve_config(
        tomllib.loads(out + "\n[mesh]\nsphere = 2\nrefinement = 2\n[time]\nT = 1.0\n")
    )
    A, V, dA, dV = expected(W, L, 0, 2)
    U = np.linalg.svd(V)[0][:, :3]
    base_m, pert = build_model(cfg)
    assert np.allclose(base_m.A, U.T @ A @ U, atol=1e-12)
    assert np.allclose(base_m.V, U.T @ V @ U, atol=1e-12)
    pA, pV = pert.parameters(0.0)
    assert np.allclose(pA, U.T @ (A + dA) @ U, atol=1e-12)
    assert np.allclose(pV, U.T @ (V + dV) @ U, atol=1e-12)
    errV = float(err.split("V ")[1].split(",")[0])
    want = np.linalg.norm(V - U @ U.T @ V @ U @ U.T) / np.linalg.norm(V)
    assert abs(errV - want) <= 1e-3 * want  # printed with 4 significant digits
    # the full-size TOML needs a mesh of dimension 12: loadable with a file mesh only, but
    # its tables are valid for d = 12 (the particle tools)
    rc, out, _ = run(capsys, base, ad, "--layer", "0", "--head", "2")
    assert len(tomllib.loads(out)["model"]["V"]) == D


def test_save_and_read_back(tmp_path):
    """solver.nn's writers and the reader agree: a mean-field model's HF folder gives back
    its A_a, V_a per head; a PEFT adapter gives its exact dV."""
    from solver.nn import read_head, save_hf_model, save_peft_adapter
    from solver.nn._meanfield import head_matrices

    rng = np.random.default_rng(1)
    d, heads = 3, 2
    layers = [{"q": rng.normal(size=(heads * d, d)), "k": rng.normal(size=(heads * d, d)),
               "v": rng.normal(size=(heads * d, d)), "o": rng.normal(size=(d, heads * d))}
              for _ in range(2)]  # fmt: skip
    save_hf_model(tmp_path / "m", layers, heads=heads, head_dim=d)
    A_, B_ = rng.normal(size=(1, d)), rng.normal(size=(heads * d, 1))
    save_peft_adapter(tmp_path / "a", {1: {"v": (A_, B_)}}, r=1, alpha=2.0)
    for ell in range(2):
        A, V = head_matrices(layers[ell]["q"], layers[ell]["k"], layers[ell]["v"],
                             layers[ell]["o"], heads)  # fmt: skip
        for h in range(heads):
            hm = read_head(tmp_path / "m", tmp_path / "a", ell, h)
            assert np.allclose(hm.A, A[h], atol=1e-13) and np.allclose(hm.V, V[h], atol=1e-13)
            o = layers[ell]["o"][:, h * d : (h + 1) * d]
            want = o @ (2.0 * B_[h * d : (h + 1) * d] @ A_) if ell == 1 else 0 * hm.dV
            assert np.allclose(hm.dV, want, atol=1e-13) and not np.any(hm.dA)


@pytest.mark.parametrize(
    "kwargs,args,message",
    [
        ({"config": {"hidden_size": None}}, (), "'hidden_size' is missing"),
        ({"config": {"num_key_value_heads": 3}}, (), "num_key_value_heads"),
        ({"drop": (MOD.format(l=0, m="k"),)}, (), "model.layers.0.self_attn.k_proj.weight"),
        ({"reshape": MOD.format(l=0, m="v")}, (), r"v_proj.weight' has shape \(9, 12\)"),
        ({"drop": (LORA.format(l=0, m="q", ab="B"),)}, (), "q_proj.lora_B.weight' is missing"),
        ({}, ("--head", "4"), "--head 4 out of range"),
        ({}, ("--layer", "2"), "--layer 2 out of range"),
        ({}, ("--dim", "1"), "--dim must be"),
    ],
)
def test_broken_folders_exit_2(tmp_path, capsys, kwargs, args, message):
    base, ad, _, _ = write_folders(tmp_path, **kwargs)
    argv = {"--layer": "0", "--head": "0"}
    argv.update(dict(zip(args[::2], args[1::2], strict=True)))
    rc, out, err = run(capsys, base, ad, *[x for kv in argv.items() for x in kv])
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert pytest.importorskip("re").search(message, err), err


def test_missing_files_exit_2(tmp_path, capsys):
    base, ad, _, _ = write_folders(tmp_path)
    (ad / "adapter_model.safetensors").unlink()
    rc, _, err = run(capsys, base, ad, "--layer", "0", "--head", "0")
    assert rc == 2 and "adapter_model.safetensors is missing" in err
    (base / "config.json").unlink()
    rc, _, err = run(capsys, base, ad, "--layer", "0", "--head", "0")
    assert rc == 2 and "config.json is missing" in err
    (base / "config.json").write_text("{not json")
    rc, _, err = run(capsys, base, ad, "--layer", "0", "--head", "0")
    assert rc == 2 and "not valid JSON" in err
    (base / "config.json").write_text(json.dumps({"hidden_size": D, "num_attention_heads": H}))
    (base / "model.safetensors").write_bytes(b"garbage")
    rc, _, err = run(capsys, base, ad, "--layer", "0", "--head", "0")
    assert rc == 2 and "not a readable safetensors file" in err
