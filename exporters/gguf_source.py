"""Read a GGUF checkpoint: architecture, weights in their low-bit form, and the tokenizer metadata.

The `gguf` package parses the file; this module checks it up front (magic, truncation, architecture,
tensor types) so bad input fails with one line naming the file, and maps llama.cpp's tensor names
and row order onto edgekit's canonical ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from edgekit.exporters.gguf_blocks import GGUF_BLOCK_TYPES
from edgekit.exporters.weights import Weight

from edgekit.errors import EdgekitError
from edgekit.model_config import SUPPORTED_ARCHITECTURES, ModelConfig

GGUF_MAGIC = b"GGUF"
FLOAT_TYPES = ("F32", "F16", "BF16")

_LAYER_TENSORS = {
    "attn_q.weight": "q", "attn_k.weight": "k", "attn_v.weight": "v", "attn_output.weight": "o",
    "ffn_gate.weight": "gate", "ffn_up.weight": "up", "ffn_down.weight": "down",
    "attn_norm.weight": "attn_norm", "ffn_norm.weight": "mlp_norm",
    "attn_q.bias": "q_bias", "attn_k.bias": "k_bias", "attn_v.bias": "v_bias",
}
_GLOBAL_TENSORS = {"token_embd.weight": "embed", "output.weight": "lm_head", "output_norm.weight": "norm"}


def canonical_name(gguf_name: str) -> str | None:
    if gguf_name in _GLOBAL_TENSORS:
        return _GLOBAL_TENSORS[gguf_name]
    parts = gguf_name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _LAYER_TENSORS:
        return f"layers.{parts[1]}.{_LAYER_TENSORS[parts[2]]}"
    return None


def llama_row_order(n_rows: int, n_heads: int) -> np.ndarray:
    """Row permutation undoing llama.cpp's q/k interleave, back to Hugging Face's rotate-half order."""
    return np.arange(n_rows).reshape(n_heads, n_rows // n_heads // 2, 2).swapaxes(1, 2).reshape(-1)


class GGUFSource:
    """An opened, checked GGUF file. `get(name)` returns weights under canonical names."""

    kind = "gguf"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        _check_header(self.path)
        import gguf  # workstation-side dependency

        try:
            self.reader = gguf.GGUFReader(str(self.path))
        except Exception as exc:  # the reader raises bare ValueError/IndexError on damaged files
            raise EdgekitError(f"truncated or corrupt GGUF file ({type(exc).__name__}: {exc})", self.path) from exc
        self._check_tensors_within_file()
        self.metadata = {k: _field_value(f) for k, f in self.reader.fields.items()
                         if k not in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type")}
        self.tensors = {}
        for t in self.reader.tensors:
            name = canonical_name(t.name)
            if name is not None:
                self.tensors[name] = t
        self.config = self._config()

    # -- checks ------------------------------------------------------------------------------------
    def _check_tensors_within_file(self) -> None:
        size = self.path.stat().st_size
        for t in self.reader.tensors:
            end = int(t.data_offset) + int(t.n_bytes)
            if end > size:
                raise EdgekitError(f"truncated GGUF file: tensor {t.name} ends at byte {end}, file has {size}", self.path)

    def _config(self) -> ModelConfig:
        m = self.metadata
        arch = m.get("general.architecture")
        if arch not in SUPPORTED_ARCHITECTURES:
            raise EdgekitError(f"unsupported architecture {arch!r} (supported: {', '.join(SUPPORTED_ARCHITECTURES)})",
                               self.path)
        if any(t.name == "rope_freqs.weight" for t in self.reader.tensors):
            raise EdgekitError("unsupported: per-frequency rope factors (rope_freqs.weight)", self.path)
        for name, t in self.tensors.items():
            ttype = t.tensor_type.name
            if ttype not in FLOAT_TYPES and ttype not in GGUF_BLOCK_TYPES:
                supported = ", ".join([*FLOAT_TYPES, *GGUF_BLOCK_TYPES])
                raise EdgekitError(f"tensor {t.name} has unsupported quantization type {ttype} (supported: {supported})",
                                   self.path)

        def key(k: str, default: Any = None) -> Any:
            value = m.get(f"{arch}.{k}", default)
            if value is None:
                raise EdgekitError(f"missing metadata key {arch}.{k}", self.path)
            return value

        hidden, heads = int(key("embedding_length")), int(key("attention.head_count"))
        n_vocab = m.get(f"{arch}.vocab_size") or self.tensors["embed"].shape[1]
        return ModelConfig(
            architecture=arch,
            num_layers=int(key("block_count")),
            hidden_size=hidden,
            num_heads=heads,
            num_kv_heads=int(key("attention.head_count_kv", heads)),
            head_dim=int(key("attention.key_length", hidden // heads)),
            intermediate_size=int(key("feed_forward_length")),
            vocab_size=int(n_vocab),
            rope_theta=float(key("rope.freq_base", 10000.0)),
            rms_norm_eps=float(key("attention.layer_norm_rms_epsilon")),
            max_position_embeddings=int(key("context_length")),
            tie_word_embeddings="lm_head" not in self.tensors,
            attention_bias="layers.0.q_bias" in self.tensors,
            sliding_window=m.get(f"{arch}.attention.sliding_window"),
        )

    # -- weights -------------------------------------------------------------------------------------
    def has(self, name: str) -> bool:
        return name in self.tensors

    def get(self, name: str) -> Weight:
        if name not in self.tensors:
            raise EdgekitError(f"missing tensor for {name}", self.path)
        t = self.tensors[name]
        ttype = t.tensor_type.name
        n_cols = int(t.shape[0])
        if ttype in FLOAT_TYPES:
            import gguf

            w: Weight = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
            if w.ndim == 2:
                w = w.reshape(-1, n_cols)
        else:
            try:
                w = GGUF_BLOCK_TYPES[ttype].to_block_weight(np.asarray(t.data).reshape(int(t.shape[1]), -1), n_cols)
            except ValueError as exc:
                raise EdgekitError(f"tensor {t.name}: {exc}", self.path) from exc
        return self._hf_row_order(name, w)

    def _hf_row_order(self, name: str, w: Weight) -> Weight:
        """llama.cpp stores llama q/k rows interleaved for its rope; reorder rows (exact) to match HF."""
        if self.config.architecture != "llama" or not name.endswith((".q", ".k", ".q_bias", ".k_bias")):
            return w
        heads = self.config.num_heads if name.endswith((".q", ".q_bias")) else self.config.num_kv_heads
        rows = llama_row_order(w.shape[0], heads)
        return w.take_rows(rows) if not isinstance(w, np.ndarray) else w[rows]

    # -- tokenizer -------------------------------------------------------------------------------------
    def field_array(self, key: str) -> list[Any]:
        return _field_value(self.reader.fields[key]) if key in self.reader.fields else []


def _check_header(path: Path) -> None:
    if not path.exists():
        raise EdgekitError("no such file", path)
    with open(path, "rb") as f:
        head = f.read(4)
    if head != GGUF_MAGIC:
        raise EdgekitError(f"not a GGUF file: magic {head!r}, expected {GGUF_MAGIC!r}", path)


def _field_value(field: Any) -> Any:
    try:
        return field.contents()
    except Exception:  # fields of types the reader cannot render are not needed
        return None
