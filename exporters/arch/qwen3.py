"""Qwen3: the Qwen2 layout with per-head QK-norm, an explicit head_dim and no q/k/v biases by default."""

from __future__ import annotations

import gguf
from edgekit.exporters.arch.base import Architecture, Metadata

from edgekit.errors import EdgekitError
from edgekit.model_config import ModelConfig


class Qwen3(Architecture):
    """Everything but the tensor kinds is the llama layout: the base attention applies RMSNorm per head to q and
    k (before rotary) when a layer has q_norm/k_norm, and the base config reads `head_dim` (HF) or
    `attention.key_length` (GGUF), which for Qwen3 need not be hidden_size / heads."""

    names = ("qwen3",)
    gguf_arch = gguf.MODEL_ARCH.QWEN3
    layer_kinds = Architecture.layer_kinds | {"q_norm", "k_norm"}

    @classmethod
    def config_from_hf(cls, cfg: Metadata, shapes: dict[str, tuple[int, ...]]) -> ModelConfig:
        # transformers slides the window only over layers from max_window_layers on; no released Qwen3 uses it.
        if cfg.values.get("use_sliding_window"):
            raise EdgekitError("unsupported: Qwen3 with use_sliding_window=true", cfg.path)
        return super().config_from_hf(cfg, shapes)

    # GGUF: llama.cpp writes `qwen3.attention.key_length`, read here as head_dim. transformers' GGUF loader
    # (GGUF_CONFIG_MAPPING["qwen3"]) does not map that key and keeps Qwen3Config's default head_dim of 128, the
    # value of every released Qwen3; a GGUF with another head_dim loads in edgekit but not in transformers.
