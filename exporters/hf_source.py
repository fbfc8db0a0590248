"""Read a Hugging Face model folder: config.json, safetensors (or a weights-only torch file), tokenizer files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from edgekit.exporters.gguf_tokenizer import END_TOKENS
from edgekit.exporters.weights import Weight
from tokenizers import Tokenizer

from edgekit.errors import EdgekitError
from edgekit.model_config import SUPPORTED_ARCHITECTURES, ModelConfig

_LAYER_TENSORS = {
    "self_attn.q_proj.weight": "q", "self_attn.k_proj.weight": "k", "self_attn.v_proj.weight": "v",
    "self_attn.o_proj.weight": "o", "mlp.gate_proj.weight": "gate", "mlp.up_proj.weight": "up",
    "mlp.down_proj.weight": "down", "input_layernorm.weight": "attn_norm",
    "post_attention_layernorm.weight": "mlp_norm", "self_attn.q_proj.bias": "q_bias",
    "self_attn.k_proj.bias": "k_bias", "self_attn.v_proj.bias": "v_bias",
}
_GLOBAL_TENSORS = {"model.embed_tokens.weight": "embed", "lm_head.weight": "lm_head", "model.norm.weight": "norm"}


def canonical_name(hf_name: str) -> str | None:
    if hf_name in _GLOBAL_TENSORS:
        return _GLOBAL_TENSORS[hf_name]
    parts = hf_name.split(".", 3)
    if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[3] in _LAYER_TENSORS:
        return f"layers.{parts[2]}.{_LAYER_TENSORS[parts[3]]}"
    return None


class HFSource:
    """A checked Hugging Face folder. Weights load as float32 numpy arrays under canonical names."""

    kind = "hf"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        cfg_path = self.path / "config.json"
        if not cfg_path.is_file():
            raise EdgekitError("not a Hugging Face model folder: config.json is missing", self.path)
        self.hf_config: dict[str, Any] = json.loads(cfg_path.read_text())
        self.weights = self._load_weights()
        self.config = self._config()

    def _load_weights(self) -> dict[str, np.ndarray]:
        files = sorted(self.path.glob("*.safetensors"))
        raw: dict[str, np.ndarray] = {}
        if files:
            from safetensors import safe_open

            for f in files:
                # framework="pt": numpy has no bfloat16, torch converts it exactly to float32.
                with safe_open(str(f), framework="pt") as st:
                    for k in st.keys():
                        raw[k] = st.get_tensor(k).float().numpy()
        elif (self.path / "pytorch_model.bin").is_file():
            import torch

            state = torch.load(self.path / "pytorch_model.bin", map_location="cpu", weights_only=True)
            raw = {k: v.float().numpy() for k, v in state.items()}
        else:
            raise EdgekitError("no weights: expected *.safetensors or pytorch_model.bin", self.path)
        out = {}
        for k, v in raw.items():
            name = canonical_name(k)
            if name is not None:
                out[name] = v
        return out

    def _config(self) -> ModelConfig:
        c = self.hf_config
        arch = c.get("model_type")
        if arch not in SUPPORTED_ARCHITECTURES:
            raise EdgekitError(f"unsupported architecture {arch!r} (supported: {', '.join(SUPPORTED_ARCHITECTURES)})",
                               self.path / "config.json")
        if c.get("mlp_bias"):
            raise EdgekitError("unsupported: MLP biases (mlp_bias=true)", self.path / "config.json")
        heads = c["num_attention_heads"]
        widths = tuple(self.weights[f"layers.{i}.gate"].shape[0] for i in range(c["num_hidden_layers"]))
        tied = bool(c.get("tie_word_embeddings", False)) or "lm_head" not in self.weights
        if tied:
            self.weights.pop("lm_head", None)
        return ModelConfig(
            architecture=arch,
            num_layers=c["num_hidden_layers"],
            hidden_size=c["hidden_size"],
            num_heads=heads,
            num_kv_heads=c.get("num_key_value_heads") or heads,
            head_dim=c.get("head_dim") or c["hidden_size"] // heads,
            intermediate_size=c["intermediate_size"],
            vocab_size=c["vocab_size"],
            rope_theta=float(c.get("rope_theta", 10000.0)),
            rms_norm_eps=float(c.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=c.get("max_position_embeddings", 2048),
            tie_word_embeddings=tied,
            attention_bias="layers.0.q_bias" in self.weights,
            sliding_window=c.get("sliding_window") if c.get("use_sliding_window", arch == "mistral") else None,
            rope_scaling=c.get("rope_scaling"),
            layer_intermediate_sizes=None if len(set(widths)) == 1 else widths,
        )

    def has(self, name: str) -> bool:
        return name in self.weights

    def get(self, name: str) -> Weight:
        if name not in self.weights:
            raise EdgekitError(f"missing tensor for {name}", self.path)
        return self.weights[name]


def hf_tokenizer(path: Path) -> tuple[Tokenizer, dict[str, Any]]:
    """The folder's tokenizer.json and the facts the runtime needs (from tokenizer/generation configs)."""
    tj = path / "tokenizer.json"
    if not tj.is_file():
        raise EdgekitError("tokenizer.json is missing (edgekit needs a fast tokenizer)", path)
    try:
        tok = Tokenizer.from_file(str(tj))
    except Exception as exc:  # the tokenizers library raises a bare Exception on malformed files
        raise EdgekitError(f"cannot read the tokenizer ({exc})", tj) from exc
    tcfg = _read_json(path / "tokenizer_config.json")
    gcfg = _read_json(path / "generation_config.json")
    mcfg = _read_json(path / "config.json")
    template = tcfg.get("chat_template")
    if template is None and (path / "chat_template.jinja").is_file():
        template = (path / "chat_template.jinja").read_text()
    eos = gcfg.get("eos_token_id", mcfg.get("eos_token_id"))
    eos_ids = eos if isinstance(eos, list) else ([] if eos is None else [eos])
    vocab = tok.get_vocab()
    bos_id = gcfg.get("bos_token_id", mcfg.get("bos_token_id"))
    info = {
        "bos_token_id": bos_id,
        "eos_token_id": eos_ids[0] if eos_ids else None,
        "add_bos_token": bool(tcfg.get("add_bos_token", False)),
        "stop_token_ids": sorted(set(eos_ids) | {vocab[t] for t in END_TOKENS if t in vocab}),
        "chat_template": template,
        "bos_token": tok.id_to_token(bos_id) if bos_id is not None else None,
        "eos_token": tok.id_to_token(eos_ids[0]) if eos_ids else None,
    }
    return tok, info


def _read_json(p: Path) -> dict[str, Any]:
    return json.loads(p.read_text()) if p.is_file() else {}
