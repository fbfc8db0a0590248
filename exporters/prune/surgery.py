"""Cut a transformers decoder down to what `selection` keeps, as real smaller tensors, and save and load it.

transformers builds every layer from one config (the same head count and MLP width everywhere), so
`from_pretrained` refuses a folder whose layers differ. A pruned folder therefore records each layer's
shape in config.json under `edgekit_pruning` and `load_pruned` rebuilds the model from the config, cuts
each layer's modules to those shapes and loads the tensors, strictly. When every layer kept the same
shape, config.json states it in transformers' own keys and `AutoModelForCausalLM.from_pretrained`
loads the folder as it is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from edgekit.exporters.prune.importance import decoder_layers, head_dim_of
from edgekit.exporters.prune.selection import LayerKeep

from edgekit.errors import EdgekitError

CONFIG_KEY = "edgekit_pruning"
REFIT_DAMPING = 0.01  # of the mean diagonal: GPTQ's default


def _cut(linear: Any, rows: Any | None = None, cols: Any | None = None) -> None:
    """Keep `rows` (output features) and/or `cols` (input features) of an nn.Linear, in place."""
    import torch

    w = linear.weight.data
    if rows is not None:
        w = w[rows]
        if linear.bias is not None:
            linear.bias = torch.nn.Parameter(linear.bias.data[rows].clone())
    if cols is not None:
        w = w[:, cols]
    linear.weight = torch.nn.Parameter(w.clone())
    linear.out_features, linear.in_features = w.shape


def _head_rows(heads: tuple[int, ...], d: int) -> Any:
    import torch

    return torch.tensor([h * d + j for h in heads for j in range(d)], dtype=torch.long)


def _cut_layer(layer: Any, k: LayerKeep, d: int, inputs: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    """One decoder layer cut to the heads, groups and channels `k` keeps; with `inputs` (Σ x xᵀ of o_proj's and
    down_proj's inputs), the kept columns of both are re-fitted to give the unpruned outputs (refit)."""
    import torch

    a, m = layer.self_attn, layer.mlp
    q_rows, kv_rows = _head_rows(k.heads, d), _head_rows(k.kv, d)
    channels = torch.tensor(k.channels, dtype=torch.long)
    if inputs is not None:
        refit(a.o_proj, q_rows, inputs[0])
        refit(m.down_proj, channels, inputs[1])
    _cut(a.q_proj, rows=q_rows)
    _cut(a.k_proj, rows=kv_rows)
    _cut(a.v_proj, rows=kv_rows)
    _cut(a.o_proj, cols=q_rows)
    a.num_key_value_groups = len(k.heads) // len(k.kv)  # what repeat_kv and the attention kernels read
    _cut(m.gate_proj, rows=channels)
    _cut(m.up_proj, rows=channels)
    _cut(m.down_proj, cols=channels)


def refit(linear: Any, kept: Any, second_moment: np.ndarray) -> None:
    """Re-fit the `kept` input columns of `linear` so that, on the calibration inputs x (Σ x xᵀ = C), W' x_kept
    is the least-squares fit of W x: W'[:, kept] = W C[:, kept] C[kept, kept]⁻¹ (damped as GPTQ damps its
    Hessian). The removed columns' contribution is folded into the kept ones instead of dropped (the
    compensation SlimGPT and ZipLM make for structured pruning); the other columns are cut afterwards."""
    import torch

    idx = np.asarray(kept)
    if len(idx) == second_moment.shape[0]:
        return
    c = second_moment
    ckk = c[np.ix_(idx, idx)]
    ckk = ckk + np.eye(len(idx)) * REFIT_DAMPING * max(float(np.mean(np.diag(ckk))), 1e-12)
    w = linear.weight.data.double().numpy()
    fitted = np.linalg.solve(ckk, (w @ c[:, idx]).T).T  # ckk is symmetric: W C[:,K] ckk⁻¹
    new = linear.weight.data.clone()
    new[:, torch.as_tensor(idx)] = torch.from_numpy(fitted).to(new.dtype)
    linear.weight.data = new


def apply_keep(model: Any, keep: list[LayerKeep | None],
               inputs: list[tuple[np.ndarray, np.ndarray]] | None = None) -> None:
    """Cut `model`'s layers in place to `keep` (one entry per layer; None drops it) and update its config; with
    `inputs` (importance.Importance.inputs), the output projections are re-fitted (refit)."""
    import torch

    layers, d = decoder_layers(model), head_dim_of(model)
    kept_layers = []
    for i, (layer, k) in enumerate(zip(layers, keep)):
        if k is not None:
            _cut_layer(layer, k, d, inputs[i] if inputs is not None else None)
            kept_layers.append(layer)
    for i, layer in enumerate(kept_layers):  # the KV cache is indexed by layer_idx
        layer.self_attn.layer_idx = i
        if hasattr(layer, "layer_idx"):
            layer.layer_idx = i
    model.model.layers = torch.nn.ModuleList(kept_layers)
    sources = [k.source for k in keep if k is not None]
    _narrow_config(model.config, [k for k in keep if k is not None], sources, d)


def _narrow_config(config: Any, keep: list[LayerKeep], sources: list[int], head_dim: int) -> None:
    """transformers' keys: the layer count, per-layer lists narrowed, and (when every layer has the same shape) the
    shape itself; otherwise the largest, with the layers' own shapes under CONFIG_KEY."""
    if getattr(config, "layer_types", None) is not None:  # per-layer attention kinds (gemma3, qwen3)
        config.layer_types = [config.layer_types[i] for i in sources]
    config.num_hidden_layers = len(keep)
    config.head_dim = head_dim
    shapes = {(len(k.heads), len(k.kv), len(k.channels)) for k in keep}
    if len(shapes) == 1:  # else the source's sizes stay: load_pruned builds those, then cuts each layer
        config.num_attention_heads, config.num_key_value_heads, config.intermediate_size = shapes.pop()


def save_pruned(model: Any, folder: Path, record: dict[str, Any]) -> None:
    """The model's safetensors and config.json, with `record` (the plan, per-layer shapes, counts) under
    CONFIG_KEY."""
    setattr(model.config, CONFIG_KEY, record)
    model.save_pretrained(str(folder))


def pruning_record(folder: Path) -> dict[str, Any] | None:
    """The CONFIG_KEY section of a folder's config.json, if any."""
    cfg = folder / "config.json"
    if not cfg.is_file():
        return None
    value = json.loads(cfg.read_text()).get(CONFIG_KEY)
    return value if isinstance(value, dict) else None


def load_pruned(folder: str | Path, dtype: Any = None) -> Any:
    """A pruned folder as a transformers model (module docstring): built from its config, each layer cut to its
    recorded shape, the tensors loaded strictly."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    record = getattr(config, CONFIG_KEY, None) or {}
    shapes = record.get("layers") if isinstance(record, dict) else None
    model = AutoModelForCausalLM.from_config(config, torch_dtype=dtype or torch.float32)
    layers, d = decoder_layers(model), head_dim_of(model)
    if not isinstance(shapes, list) or len(shapes) != len(layers):
        raise EdgekitError(f"config.json's {CONFIG_KEY}.layers does not list the {len(layers)} layers", folder)
    keep = []
    for i, s in enumerate(shapes):
        try:
            heads, kv, width = int(s["heads"]), int(s["kv_heads"]), int(s["intermediate_size"])
        except (KeyError, TypeError, ValueError) as exc:
            raise EdgekitError(f"config.json's {CONFIG_KEY}.layers[{i}] lacks heads/kv_heads/intermediate_size",
                               folder) from exc
        keep.append(LayerKeep(i, tuple(range(kv)), tuple(range(heads)), tuple(range(width))))
    for layer, k in zip(layers, keep):  # shapes only: the values are loaded below
        _cut_layer(layer, k, d)
    state: dict[str, Any] = {}
    for f in sorted(folder.glob("*.safetensors")):
        state.update(load_file(str(f)))
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # torch names every mismatched shape; the first line is enough
        raise EdgekitError(f"pruned folder's tensors do not fit its config ({str(exc).splitlines()[-1].strip()})",
                           folder) from exc
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if unexpected or set(missing) - tied:
        raise EdgekitError(f"pruned folder's tensors do not fit its config (missing {sorted(set(missing) - tied)[:3]}, "
                           f"unexpected {sorted(unexpected)[:3]})", folder)
    model.tie_weights()
    return model.eval()
