"""The llama layout and the families that share it unchanged: Llama (1-3.x, rope scaling included),
Mistral (sliding-window attention), Qwen2 (q/k/v biases). SmolLM2 is a llama."""

from __future__ import annotations

import gguf
import numpy as np
from edgekit.exporters.arch.base import Architecture
from edgekit.exporters.weights import Weight


def llama_row_order(n_rows: int, n_heads: int) -> np.ndarray:
    """Row permutation undoing llama.cpp's q/k interleave, back to Hugging Face's rotate-half order."""
    return np.arange(n_rows).reshape(n_heads, n_rows // n_heads // 2, 2).swapaxes(1, 2).reshape(-1)


class Llama(Architecture):
    names = ("llama",)
    gguf_arch = gguf.MODEL_ARCH.LLAMA

    def from_gguf(self, name: str, w: Weight) -> Weight:
        """llama.cpp stores llama's q/k rows interleaved for its rope; reorder them (exact) to Hugging Face's."""
        if not name.endswith((".q", ".k", ".q_bias", ".k_bias")):
            return w
        layer = int(name.split(".")[1])
        heads = self.config.heads_of(layer) if name.endswith((".q", ".q_bias")) else self.config.kv_heads_of(layer)
        rows = llama_row_order(w.shape[0], heads)
        return w[rows] if isinstance(w, np.ndarray) else w.take_rows(rows)


class Mistral(Architecture):
    names = ("mistral",)
    gguf_arch = gguf.MODEL_ARCH.LLAMA  # llama.cpp writes Mistral checkpoints as `llama`
    default_sliding_window = True


class Qwen2(Architecture):
    names = ("qwen2",)
    gguf_arch = gguf.MODEL_ARCH.QWEN2
