"""Rotary-embedding tables for GroupQueryAttention, computed as transformers computes them."""

from __future__ import annotations

import math

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.model_config import ModelConfig


def inverse_frequencies(c: ModelConfig) -> np.ndarray:
    """float32 [head_dim / 2], with the config's rope scaling applied."""
    dim = c.head_dim
    inv_freq = 1.0 / (c.rope_theta ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim))
    scaling = c.rope_scaling or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return inv_freq.astype(np.float32)
    if kind == "linear":
        return (inv_freq / scaling["factor"]).astype(np.float32)
    if kind == "llama3":
        factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        low_wavelen, high_wavelen = old_len / low, old_len / high
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return np.where(medium, smoothed, scaled).astype(np.float32)
    raise EdgekitError(f"unsupported rope scaling type {kind!r} (supported: default, linear, llama3)")
