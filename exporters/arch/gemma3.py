"""Gemma 3 (text): the llama layout with Gemma's changes.

- RMSNorm multiplies by (1 + weight) in float32: the +1 is folded into the weight when a Hugging Face tensor is
  read (llama.cpp's GGUF stores weight + 1 already), so the graph's norms are the plain ones.
- Four norms per layer: input, post-attention (on the attention output, before the residual add),
  pre-feedforward and post-feedforward; per-head QK-norm.
- Gated GELU MLP (tanh approximation), embeddings scaled by sqrt(hidden_size), attention scale
  query_pre_attn_scalar^-0.5, optional final logit soft-capping.
- Sliding-window local layers (rotary base rope_local_base_freq, no scaling) between full global layers
  (rope_theta with rope_scaling); transformers' `layer_types`, or every `sliding_window_pattern`-th layer global.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import gguf
import numpy as np
from edgekit.exporters.arch.base import Architecture, Metadata
from edgekit.exporters.graph_builder import GraphBuilder
from edgekit.exporters.rope import inverse_frequencies
from edgekit.exporters.weights import Weight, WeightSource

from edgekit.errors import EdgekitError
from edgekit.model_config import ModelConfig

SLIDING, FULL = "sliding_attention", "full_attention"
DEFAULT_PATTERN = 6  # every 6th layer global: Gemma3TextConfig's default and llama.cpp's fixed pattern
GGUF_LOCAL_ROPE_BASE = 10000.0  # llama.cpp's rope_freq_base_train_swa for gemma3; also Gemma3TextConfig's default
GGUF_QUERY_PRE_ATTN_SCALAR = 256.0  # Gemma3TextConfig's default (transformers' GGUF loader reads no key for it)


@dataclass(frozen=True)
class Gemma3Config(ModelConfig):
    query_pre_attn_scalar: float = 256.0
    # Per layer, SLIDING or FULL (None: every layer full).
    layer_types: tuple[str, ...] | None = None
    rope_local_base_freq: float = 10000.0
    final_logit_softcapping: float | None = None

    def __post_init__(self) -> None:
        # A config narrowed to fewer layers (a draft's layer subset) must narrow layer_types with it.
        if self.layer_types is not None and len(self.layer_types) != self.num_layers:
            raise EdgekitError(f"gemma3: layer_types lists {len(self.layer_types)} layers, the model has "
                               f"{self.num_layers}")
        if not self.query_pre_attn_scalar > 0 or (self.sliding_window is not None and self.sliding_window < 1):
            raise EdgekitError(f"gemma3: query_pre_attn_scalar {self.query_pre_attn_scalar} and sliding_window "
                               f"{self.sliding_window}, expected both positive")


    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        if d["layer_types"] is not None:
            d["layer_types"] = list(d["layer_types"])
        return d


def pattern_layer_types(num_layers: int, pattern: int) -> tuple[str, ...]:
    """Every `pattern`-th layer (1-based) global, the others sliding, as transformers and llama.cpp build them."""
    return tuple(SLIDING if (i + 1) % pattern else FULL for i in range(num_layers))


class Gemma3(Architecture):
    names = ("gemma3_text", "gemma3")  # HF text model; GGUF general.architecture
    gguf_arch = gguf.MODEL_ARCH.GEMMA3
    layer_kinds = Architecture.layer_kinds | {"q_norm", "k_norm", "post_attn_norm", "post_mlp_norm"}
    config_class = Gemma3Config
    activation = "gelu_tanh"
    default_sliding_window = True
    config: Gemma3Config

    # -- config ---------------------------------------------------------------------------------------------
    @classmethod
    def config_from_hf(cls, cfg: Metadata, shapes: dict[str, tuple[int, ...]]) -> ModelConfig:
        v = cfg.values
        if "text_config" in v:
            raise EdgekitError("multimodal Gemma 3 checkpoint: edgekit exports the text model (model_type "
                               "gemma3_text)", cfg.path)
        if v.get("hidden_activation", "gelu_pytorch_tanh") not in ("gelu_pytorch_tanh", "gelu_tanh"):
            raise EdgekitError(f"unsupported hidden_activation {v['hidden_activation']!r} (gelu_pytorch_tanh)",
                               cfg.path)
        if v.get("use_bidirectional_attention"):
            raise EdgekitError("unsupported: bidirectional attention (an embedding model)", cfg.path)
        # attn_logit_softcapping is not read: transformers' Gemma 3 attention never applies it (Gemma 2's did),
        # and llama.cpp's gemma3 has no attention soft-capping either.
        layers = cfg.require("num_hidden_layers")
        types = v.get("layer_types")
        if types is None:
            types = pattern_layer_types(layers, cfg.get("sliding_window_pattern", int, DEFAULT_PATTERN))
        if not isinstance(types, (list, tuple)) or len(types) != layers or not set(types) <= {SLIDING, FULL}:
            raise EdgekitError(f"layer_types is {types!r}, expected {layers} of {SLIDING!r} / {FULL!r}", cfg.path)
        return replace(super().config_from_hf(cfg, shapes), layer_types=tuple(types),
                       query_pre_attn_scalar=cfg.get("query_pre_attn_scalar", float, 256.0),
                       rope_local_base_freq=cfg.get("rope_local_base_freq", float, 10000.0),
                       final_logit_softcapping=cfg.get("final_logit_softcapping", float))

    @classmethod
    def config_from_gguf(cls, meta: Metadata, shapes: dict[str, tuple[int, ...]]) -> ModelConfig:
        """llama.cpp's converter writes no key for the attention scale, the layer pattern or the local rope base;
        these follow transformers' GGUF loader (the reference `edgekit validate` compares with) where it agrees
        with llama.cpp, and llama.cpp (the original checkpoint) where transformers drops a key the file has."""
        base = super().config_from_gguf(meta, shapes)
        # transformers keeps Gemma3TextConfig's default window (4096) when the key is missing; llama.cpp then
        # turns sliding off. Converted files always have it.
        window = meta.get("attention.sliding_window", int, 4096)
        # transformers: query_pre_attn_scalar stays at its default 256. llama.cpp scales by 1/sqrt(head_dim),
        # the same for Gemma 3 270M/1B/4B/12B (head_dim 256), but for the 27B (62 layers) by
        # 1/sqrt(hidden / heads) = 1/sqrt(168), as its original config says: follow llama.cpp there.
        scalar = GGUF_QUERY_PRE_ATTN_SCALAR
        if base.num_layers == 62:
            scalar = float(base.hidden_size // base.num_heads)
        # Linear rope scaling (Gemma 3 4B/12B/27B: factor 8 on the global layers) is written by llama.cpp's converter
        # and applied by llama.cpp; transformers' GGUF loader drops it. Applied here, as the checkpoint was trained.
        scaling: dict[str, Any] | None = None
        kind = meta.get("rope.scaling.type", str)
        if kind not in (None, "none"):
            if kind != "linear":
                raise EdgekitError(f"unsupported gemma3 rope scaling {kind!r} (linear)", meta.path)
            scaling = {"rope_type": "linear", "factor": meta.require("rope.scaling.factor", float)}
        return replace(base, sliding_window=window, layer_types=pattern_layer_types(base.num_layers, DEFAULT_PATTERN),
                       rope_theta=meta.get("rope.freq_base", float, 1_000_000.0), rope_scaling=scaling,
                       query_pre_attn_scalar=scalar, rope_local_base_freq=GGUF_LOCAL_ROPE_BASE,
                       # llama.cpp reads this optional key; transformers ignores it (released Gemma 3 has none)
                       final_logit_softcapping=meta.get("final_logit_softcapping", float))

    # -- weights --------------------------------------------------------------------------------------------
    def from_hf(self, name: str, w: np.ndarray) -> np.ndarray:
        """Gemma's norms multiply by (1 + weight) in float32: fold the 1 in (the same float32 sum)."""
        return w + np.float32(1.0) if name.endswith("norm") else w

    def from_gguf(self, name: str, w: Weight) -> Weight:
        """llama.cpp's converter stored the norms as weight + 1 already. (transformers subtracts the 1 on load and
        adds it back in the norm: the same float32 value for weights in [0.5, 2], within an ulp elsewhere.)"""
        return w

    # -- graph ----------------------------------------------------------------------------------------------
    def is_sliding(self, i: int) -> bool:
        types = self.config.layer_types
        return types is not None and types[i] == SLIDING and self.config.sliding_window is not None

    def rope_tables(self, g: GraphBuilder) -> dict[str, tuple[str, str]]:
        """`global` (rope_theta, rope_scaling) and `local` (rope_local_base_freq, unscaled), each only if used."""
        c = self.config
        sliding = [self.is_sliding(i) for i in range(c.num_layers)]
        tables = {}
        if not all(sliding):
            tables["global"] = g.rope_tables("rope", inverse_frequencies(c), c.max_position_embeddings)
        if any(sliding):
            local = replace(c, rope_theta=c.rope_local_base_freq, rope_scaling=None)
            tables["local"] = g.rope_tables("rope_local", inverse_frequencies(local), c.max_position_embeddings)
        return tables

    def layer_window(self, i: int) -> int | None:
        return self.config.sliding_window if self.is_sliding(i) else None

    def layer_rope(self, i: int) -> tuple[str, str]:
        return self.ropes["local" if self.is_sliding(i) else "global"]

    def attention_scale(self) -> float | None:
        return self.config.query_pre_attn_scalar ** -0.5

    def embed(self, g: GraphBuilder, table: Weight) -> str:
        """Embeddings times sqrt(hidden_size), a float32 constant as in Gemma3TextScaledWordEmbedding."""
        g.embedding(table, "input_ids", "embeddings_unscaled")
        return g.scale("embeddings_unscaled", math.sqrt(self.config.hidden_size), "embeddings")

    def layer(self, g: GraphBuilder, i: int, hidden: str, residual: str | None,
              weights: WeightSource) -> tuple[str, str]:
        """Sandwich norms: the attention and MLP outputs are normed again before they join the residual stream
        (the join itself is fused into the next pre-norm, as in the base layer)."""
        p = f"layers.{i}"
        x, residual = g.add_rms_norm(hidden, residual, weights.get(f"{p}.attn_norm"), f"{p}.attn_norm")  # type: ignore[arg-type]
        attn = g.rms_norm(self.attention(g, i, x, weights), weights.get(f"{p}.post_attn_norm"),  # type: ignore[arg-type]
                          f"{p}.post_attn_norm", f"{p}.post_attn_norm.out")
        x, residual = g.add_rms_norm(attn, residual, weights.get(f"{p}.mlp_norm"), f"{p}.mlp_norm")  # type: ignore[arg-type]
        out = g.rms_norm(self.mlp(g, i, x, weights), weights.get(f"{p}.post_mlp_norm"),  # type: ignore[arg-type]
                         f"{p}.post_mlp_norm", f"{p}.post_mlp_norm.out")
        return out, residual

    def output(self, g: GraphBuilder, hidden: str, head: Weight) -> str:
        cap = self.config.final_logit_softcapping
        if cap is None:
            return super().output(g, hidden, head)
        g.logits(hidden, head, not self.config.tie_word_embeddings, "logits_uncapped")
        return g.softcap("logits_uncapped", cap, "logits")
