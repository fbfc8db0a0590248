"""The decoder facts the exporter and the runtime share, independent of the source format; an architecture may
extend them with a subclass of its own (exporters.arch)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

PER_LAYER = ("layer_intermediate_sizes", "layer_num_heads", "layer_num_kv_heads")


@dataclass(frozen=True)
class ModelConfig:
    """A decoder with grouped-query attention and rotary embeddings (the fields every architecture has)."""

    architecture: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    rope_theta: float
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool = False
    sliding_window: int | None = None
    rope_scaling: dict[str, Any] | None = field(default=None)
    # Per-layer shapes of structurally pruned models (exporters.prune); None means every layer has the global value.
    layer_intermediate_sizes: tuple[int, ...] | None = None
    layer_num_heads: tuple[int, ...] | None = None
    layer_num_kv_heads: tuple[int, ...] | None = None

    def intermediate_size_of(self, layer: int) -> int:
        if self.layer_intermediate_sizes is None:
            return self.intermediate_size
        return self.layer_intermediate_sizes[layer]

    def heads_of(self, layer: int) -> int:
        """Query heads of `layer` (pruned models keep different counts per layer)."""
        return self.num_heads if self.layer_num_heads is None else self.layer_num_heads[layer]

    def kv_heads_of(self, layer: int) -> int:
        """Key/value heads (KV groups) of `layer`."""
        return self.num_kv_heads if self.layer_num_kv_heads is None else self.layer_num_kv_heads[layer]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in PER_LAYER:
            if d[key] is not None:
                d[key] = list(d[key])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """The fields this class has; keys an architecture's own config adds (exporter side) are ignored."""
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        for key in PER_LAYER:
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)
