"""The weights a source hands to the graph builder, under canonical names.

Canonical names: `embed`, `lm_head` (absent when tied), `norm`, and per layer `layers.{i}.{q,k,v,o,gate,up,down}`,
`layers.{i}.{attn_norm,mlp_norm}`, optional `layers.{i}.{q,k,v}_bias`. A linear weight is [N, K]
(out, in), either dense float32 or a BlockQuantWeight kept in its low-bit form.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from edgekit.formats import BlockQuantWeight

Weight = np.ndarray | BlockQuantWeight

LINEAR_NAMES = ("q", "k", "v", "o", "gate", "up", "down")


class WeightSource(Protocol):
    def has(self, name: str) -> bool: ...

    def get(self, name: str) -> Weight: ...


def weight_format(w: Weight) -> str:
    """A short label for the manifest's recipe: `f32`, or the block format the weight came in."""
    return w.source_format if isinstance(w, BlockQuantWeight) else "f32"


class RecordingSource:
    """A source that notes the format of each matrix the graph reads (for the manifest's recipe), so export
    decodes every tensor once."""

    def __init__(self, inner: WeightSource):
        self.inner = inner
        self.formats: dict[str, str] = {}

    def has(self, name: str) -> bool:
        return self.inner.has(name)

    def get(self, name: str) -> Weight:
        w = self.inner.get(name)
        if w.ndim == 2:
            self.formats[name] = weight_format(w)
        return w
