r"""Hugging Face model folders and PEFT LoRA adapter folders (safetensors, NumPy), and the
attention head they define in the project's terms.

Model folder: ``config.json`` (``hidden_size``, ``num_attention_heads``, optional
``num_key_value_heads`` (default: no grouping) and ``head_dim`` (default ``hidden_size /
num_attention_heads``)) and ``model.safetensors`` (or shards listed in
``model.safetensors.index.json``) with ``model.layers.{l}.self_attn.{q,k,v,o}_proj.weight``
of shapes ``q: (H d_h, D)``, ``k, v: (H_kv d_h, D)``, ``o: (D, H d_h)``. Query head ``h``
uses key/value head ``h // (H / H_kv)`` (grouped-query attention).

Adapter folder: ``adapter_config.json`` (``r``, ``lora_alpha``, ``target_modules``; optional
``use_rslora``, ``layers_to_transform``) and ``adapter_model.safetensors`` with
``base_model.model.model.layers.{l}.self_attn.{m}.lora_A.weight`` ``(r, in)`` and
``lora_B.weight`` ``(out, r)``. The merged weight is ``W + s B A`` with ``s = lora_alpha / r``
(``lora_alpha / sqrt(r)`` with ``use_rslora``). Targets other than the attention
projections (MLP modules) do not enter the head and are ignored.

Head ``h`` of layer ``l`` (``D``-dimensional tokens):

.. math::

    A = W_k^{h\,T} W_q^h / \sqrt{d_h} \ (\text{so } \langle Qx, Ky\rangle = y^T A x),\qquad
    V = W_o^h W_v^h,

and with ``ΔW = s B A`` on the targeted projections the exact changes
``ΔA = (W_k^T ΔW_q + ΔW_k^T W_q + ΔW_k^T ΔW_q) / sqrt(d_h)``,
``ΔV = W_o ΔW_v + ΔW_o W_v + ΔW_o ΔW_v`` (head blocks).

Projection (``--dim k``): onto the span ``U_k`` of the top ``k`` left singular vectors of
the base ``V`` (the directions the head writes most into):
``M_k = U_k^T M U_k`` for ``M = A, V, ΔA, ΔV``; the relative error of each is
``‖M − U_k M_k U_k^T‖_F / ‖M‖_F`` (0 for a zero ``M``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "AdapterError", "HeadMatrices", "read_head", "project_head", "adapter_toml",
    "save_hf_model", "save_peft_adapter", "MODEL_KEY", "ADAPTER_KEY",
]  # fmt: skip

MODEL_KEY = "model.layers.{l}.self_attn.{m}_proj.weight"
ADAPTER_KEY = "base_model.model.model.layers.{l}.self_attn.{m}_proj.lora_{ab}.weight"


class AdapterError(ValueError):
    """A model or adapter folder that cannot be read; the message names the file and the
    missing key or wrong shape."""


@dataclass
class HeadMatrices:
    """``A``, ``V``, ``dA``, ``dV`` of one head (``D x D``, or ``k x k`` after projection),
    ``info``: where they come from; ``errors``: projection errors (relative Frobenius)."""

    A: np.ndarray
    V: np.ndarray
    dA: np.ndarray
    dV: np.ndarray
    info: dict = field(default_factory=dict)
    errors: dict = field(default_factory=dict)


def _json(path: Path) -> dict:
    if not path.is_file():
        raise AdapterError(f"{path} is missing")
    try:
        out = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdapterError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(out, dict):
        raise AdapterError(f"{path} must hold a JSON object")
    return out


def _int(cfg: dict, key: str, where: Path, default=None) -> int:
    v = cfg.get(key, default)
    if v is None:
        raise AdapterError(f"{where}: key {key!r} is missing")
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise AdapterError(f"{where}: {key!r} must be a positive integer, got {v!r}")
    return v


def _safe_open(path: Path):
    from safetensors import safe_open

    try:
        return safe_open(str(path), framework="numpy")
    except Exception as e:  # safetensors raises its own error types for a bad header
        raise AdapterError(f"{path} is not a readable safetensors file: {e}") from None


class _Tensors:
    """Lazy reader of the tensors of one or several safetensors files."""

    def __init__(self, files: dict[str, Path], what: str):
        self.files, self.what, self._open = files, what, {}

    def get(self, key: str, shape: tuple) -> np.ndarray:
        path = self.files.get(key)
        if path is None:
            raise AdapterError(f"{self.what}: tensor {key!r} is missing")
        if path not in self._open:
            self._open[path] = _safe_open(path)
        t = np.asarray(self._open[path].get_tensor(key), dtype=float)
        if t.shape != shape:
            raise AdapterError(f"{self.what}: tensor {key!r} has shape {t.shape}, expected {shape}")
        if not np.all(np.isfinite(t)):
            raise AdapterError(f"{self.what}: tensor {key!r} has NaN or infinite entries")
        return t

    @classmethod
    def folder(cls, folder: Path, name: str) -> _Tensors:
        single = folder / f"{name}.safetensors"
        index = folder / f"{name}.safetensors.index.json"
        if single.is_file():
            with _safe_open(single) as f:
                return cls({k: single for k in f.keys()}, str(single))
        if index.is_file():
            wm = _json(index).get("weight_map")
            if not isinstance(wm, dict):
                raise AdapterError(f"{index}: key 'weight_map' is missing")
            return cls({k: folder / v for k, v in wm.items()}, str(index))
        raise AdapterError(f"{single} is missing")


def _model_config(base: Path) -> dict:
    where = base / "config.json"
    cfg = _json(where)
    D = _int(cfg, "hidden_size", where)
    H = _int(cfg, "num_attention_heads", where)
    Hkv = _int(cfg, "num_key_value_heads", where, H)
    if H % Hkv:
        raise AdapterError(f"{where}: num_key_value_heads ({Hkv}) must divide "
                           f"num_attention_heads ({H})")  # fmt: skip
    if "head_dim" not in cfg and D % H:
        raise AdapterError(f"{where}: hidden_size ({D}) is not a multiple of "
                           f"num_attention_heads ({H}); give head_dim")  # fmt: skip
    dh = _int(cfg, "head_dim", where, D // H)
    return {"D": D, "H": H, "Hkv": Hkv, "dh": dh, "layers": cfg.get("num_hidden_layers")}


def _shapes(c: dict) -> dict:
    D, H, Hkv, dh = c["D"], c["H"], c["Hkv"], c["dh"]
    return {"q": (H * dh, D), "k": (Hkv * dh, D), "v": (Hkv * dh, D), "o": (D, H * dh)}


def _head_block(m: str, W: np.ndarray, h: int, kv: int, dh: int) -> np.ndarray:
    if m == "q":
        return W[h * dh : (h + 1) * dh]
    if m in ("k", "v"):
        return W[kv * dh : (kv + 1) * dh]
    return W[:, h * dh : (h + 1) * dh]


def _targets(cfg: dict, where: Path) -> list[str]:
    t = cfg.get("target_modules")
    if t is None:
        raise AdapterError(f"{where}: key 'target_modules' is missing")
    names = [t] if isinstance(t, str) else t
    if not isinstance(names, list) or not all(isinstance(x, str) for x in names):
        raise AdapterError(f"{where}: 'target_modules' must be a string or a list of strings")
    return [m for m in "qkvo" if any(x.split(".")[-1] == f"{m}_proj" for x in names)]


def read_head(base, adapter, layer: int, head: int) -> HeadMatrices:
    """``A, V, dA, dV`` of query head ``head`` of layer ``layer`` (module docstring)."""
    base, adapter = Path(base), Path(adapter)
    c = _model_config(base)
    if c["layers"] is not None and not 0 <= layer < c["layers"]:
        raise AdapterError(f"--layer {layer} out of range: the model has {c['layers']} layers")
    if not 0 <= head < c["H"]:
        raise AdapterError(f"--head {head} out of range: the model has {c['H']} query heads")
    shapes = _shapes(c)
    dh = c["dh"]
    kv = head // (c["H"] // c["Hkv"])
    wt = _Tensors.folder(base, "model")
    W = {m: _head_block(m, wt.get(MODEL_KEY.format(l=layer, m=m), shapes[m]), head, kv, dh)
         for m in "qkvo"}  # fmt: skip
    where = adapter / "adapter_config.json"
    acfg = _json(where)
    r = _int(acfg, "r", where)
    alpha = acfg.get("lora_alpha")
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not np.isfinite(alpha):
        raise AdapterError(f"{where}: key 'lora_alpha' is missing or not a number")
    scale = alpha / (np.sqrt(r) if acfg.get("use_rslora") else r)
    targets = _targets(acfg, where)
    only = acfg.get("layers_to_transform")
    if isinstance(only, int):
        only = [only]
    active = only is None or layer in only
    at = _Tensors.folder(adapter, "adapter_model") if targets and active else None
    dW = {m: np.zeros_like(W[m]) for m in "qkvo"}
    for m in targets if active else []:
        out_dim, in_dim = shapes[m]
        A_ = at.get(ADAPTER_KEY.format(l=layer, m=m, ab="A"), (r, in_dim))
        B_ = at.get(ADAPTER_KEY.format(l=layer, m=m, ab="B"), (out_dim, r))
        dW[m] = _head_block(m, scale * (B_ @ A_), head, kv, dh)
    s = np.sqrt(dh)
    A = W["k"].T @ W["q"] / s
    V = W["o"] @ W["v"]
    dA = (W["k"].T @ dW["q"] + dW["k"].T @ W["q"] + dW["k"].T @ dW["q"]) / s
    dV = W["o"] @ dW["v"] + dW["o"] @ W["v"] + dW["o"] @ dW["v"]
    info = {"base": str(base), "adapter": str(adapter), "layer": layer, "head": head,
            "kv_head": kv, "head_dim": dh, "hidden_size": c["D"], "scale": float(scale),
            "targets": [f"{m}_proj" for m in targets] if active else []}  # fmt: skip
    return HeadMatrices(A, V, dA, dV, info)


def project_head(hm: HeadMatrices, k: int) -> HeadMatrices:
    """Restriction to the top-``k`` left singular subspace of ``V`` (module docstring)."""
    D = hm.V.shape[0]
    if not isinstance(k, int | np.integer) or not 2 <= k <= D:
        raise AdapterError(f"--dim must be an integer in [2, {D}] (hidden size), got {k!r}")
    U = np.linalg.svd(hm.V)[0][:, :k]
    out, errs = {}, {}
    for name in ("A", "V", "dA", "dV"):
        M = getattr(hm, name)
        Mk = U.T @ M @ U
        nrm = np.linalg.norm(M)
        errs[name] = float(np.linalg.norm(M - U @ Mk @ U.T) / nrm) if nrm > 0 else 0.0
        out[name] = Mk
    return HeadMatrices(**out, info={**hm.info, "dim": int(k)}, errors=errs)


def adapter_toml(hm: HeadMatrices) -> str:
    """``[model]`` (``Q = A``, ``K = I``, ``V``: ``Kᵀ Q = A``) and ``[perturbation]``
    (``kind = "tied"``, ``dA``, ``dV``) tables for ``solver run`` and the particle tools."""
    from ..io import toml_value

    def mat(M):
        return toml_value([[float(x) for x in row] for row in M])

    i = hm.info
    lines = [f"# head {i.get('head')} of layer {i.get('layer')} (key/value head "
             f"{i.get('kv_head')}, head_dim {i.get('head_dim')}) of {i.get('base')}",
             f"# adapter {i.get('adapter')}: scale {i.get('scale')}, targets "
             f"{', '.join(i.get('targets', [])) or 'none'}",
             "# A = W_k^T W_q / sqrt(head_dim) (given as Q = A, K = I), V = W_o W_v"]  # fmt: skip
    if "dim" in i:
        lines.append(f"# projected onto the top-{i['dim']} left singular subspace of V")
    d = hm.V.shape[0]
    lines += ["[model]", f"Q = {mat(hm.A)}", f"K = {mat(np.eye(d))}", f"V = {mat(hm.V)}", ""]
    lines += ["[perturbation]", 'kind = "tied"', f"dA = {mat(hm.dA)}", f"dV = {mat(hm.dV)}", ""]
    return "\n".join(lines)


def save_hf_model(
    folder,
    layers: list[dict],
    *,
    heads: int,
    kv_heads: int | None = None,
    head_dim: int | None = None,
    extra: dict | None = None,
) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (``layers[l][m]``: ``m_proj`` weight of
    layer ``l``, ``m`` in q, k, v, o; ``extra``: more named tensors)."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    D = int(np.shape(layers[0]["q"])[1])
    cfg = {"architectures": ["SolverMeanFieldForCausalLM"], "model_type": "llama",
           "hidden_size": D, "num_attention_heads": int(heads),
           "num_key_value_heads": int(kv_heads or heads),
           "num_hidden_layers": len(layers)}  # fmt: skip
    if head_dim is not None:
        cfg["head_dim"] = int(head_dim)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    tensors = {MODEL_KEY.format(l=l, m=m): np.ascontiguousarray(w[m], dtype=np.float64)
               for l, w in enumerate(layers) for m in "qkvo"}  # fmt: skip
    for k, v in (extra or {}).items():
        tensors[k] = np.ascontiguousarray(v, dtype=np.float64)
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


def save_peft_adapter(folder, lora: dict, *, r: int, alpha: float) -> Path:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors``; ``lora[l][m] =
    (A (r, in), B (out, r))`` for layer ``l`` and projection ``m`` in q, k, v, o."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    mods = sorted({m for per in lora.values() for m in per})
    cfg = {"peft_type": "LORA", "r": int(r), "lora_alpha": float(alpha),
           "target_modules": [f"{m}_proj" for m in mods], "bias": "none",
           "layers_to_transform": sorted(int(l) for l in lora)}  # fmt: skip
    (folder / "adapter_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    tensors = {}
    for l, per in lora.items():
        for m, (A_, B_) in per.items():
            tensors[ADAPTER_KEY.format(l=l, m=m, ab="A")] = np.ascontiguousarray(A_, dtype=float)
            tensors[ADAPTER_KEY.format(l=l, m=m, ab="B")] = np.ascontiguousarray(B_, dtype=float)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    return folder
