"""The decoder facts the exporter and the runtime share, independent of the source format; an architecture may
extend them with a subclass of its own (exporters.arch)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any


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
    # Per-layer MLP widths for structurally pruned models; None means every layer uses intermediate_size.
    layer_intermediate_sizes: tuple[int, ...] | None = None

    def intermediate_size_of(self, layer: int) -> int:
        if self.layer_intermediate_sizes is None:
            return self.intermediate_size
        return self.layer_intermediate_sizes[layer]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["layer_intermediate_sizes"] is not None:
            d["layer_intermediate_sizes"] = list(d["layer_intermediate_sizes"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """The fields this class has; keys an architecture's own config adds (exporter side) are ignored."""
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        if d.get("layer_intermediate_sizes") is not None:
            d["layer_intermediate_sizes"] = tuple(d["layer_intermediate_sizes"])
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)
