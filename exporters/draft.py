"""Draft models for speculative decoding: checking a given draft, or building one from the target.

`--draft auto` keeps a subset of the target's own layers (first and last, evenly spaced between):
no new weights, no training, and the draft shares the target's embedding and output layer so
their distributions stay related. Every draft's acceptance rate is measured when the package is
written (`measure_acceptance`, recorded in the manifest and printed by `edgekit export`), and again on
the user's own prompts by `edgekit bench --speculative draft`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from edgekit.exporters.weights import Weight
from tokenizers import Tokenizer

from edgekit.errors import EdgekitError
from edgekit.model_config import PER_LAYER

DEFAULT_KEEP_FRACTION = 1 / 3
ACCEPTANCE_PROMPTS = 8  # of calibration.NEUTRAL_PROMPTS
ACCEPTANCE_TOKENS = 32
ACCEPTANCE_DRAFT_LEN = 4


def measure_acceptance(folder: Path) -> dict[str, float]:
    """The draft of the package in `folder` against its target: greedy decoding of neutral prompts with
    every pass drafting ACCEPTANCE_DRAFT_LEN tokens; acceptance = accepted / drafted tokens."""
    from edgekit.exporters.quantize.calibration import NEUTRAL_PROMPTS
    from edgekit.runtime import GenerationConfig, load

    model = load(folder, draft=True, verify=False, max_length=256)
    gen = GenerationConfig(ACCEPTANCE_TOKENS, stop_token_ids=(), speculative="draft",
                           draft_len=ACCEPTANCE_DRAFT_LEN, draft_min_confidence=0.0, draft_policy="all")
    drafted = accepted = passes = 0
    for prompt in NEUTRAL_PROMPTS[:ACCEPTANCE_PROMPTS]:
        list(model.generate_ids(model.encode(prompt), gen))
        s = model.last_stats
        drafted, accepted, passes = drafted + s.drafted, accepted + s.accepted, passes + s.target_passes
    return {"acceptance_rate": round(accepted / max(drafted, 1), 4),
            "accepted_per_pass": round(accepted / max(passes, 1), 3), "draft_len": ACCEPTANCE_DRAFT_LEN,
            "prompts": ACCEPTANCE_PROMPTS, "new_tokens": ACCEPTANCE_TOKENS}


def check_same_tokenizer(target: Tokenizer, draft: Tokenizer, draft_src: str) -> None:
    """A draft is usable only when every token id means the same text for both models."""
    tv, dv = target.get_vocab(), draft.get_vocab()
    if tv != dv:
        differ = len(set(tv.items()) ^ set(dv.items()))
        raise EdgekitError(f"draft tokenizer differs from the target's (vocab {len(dv)} vs {len(tv)} tokens, "
                           f"{differ} token/id pairs differ)", draft_src)


def kept_layers(num_layers: int, fraction: float = DEFAULT_KEEP_FRACTION) -> list[int]:
    n = max(2, round(num_layers * fraction))
    return sorted({round(x) for x in np.linspace(0, num_layers - 1, n).tolist()})


class LayerSubset:
    """A source that exposes only some of another source's layers (renumbered from 0)."""

    def __init__(self, source: object, layers: list[int]):
        self.inner = source
        self.layers = layers
        self.path = source.path  # type: ignore[attr-defined]
        self.kind = f"{source.kind}-layer-subset"  # type: ignore[attr-defined]
        c = source.config  # type: ignore[attr-defined]
        per_layer = {key: None if getattr(c, key) is None else tuple(getattr(c, key)[i] for i in layers)
                     for key in PER_LAYER}
        self.config = replace(c, num_layers=len(layers), **per_layer)
        self.arch = type(source.arch)(self.config)  # type: ignore[attr-defined]

    def _inner_name(self, name: str) -> str:
        if name.startswith("layers."):
            _, i, rest = name.split(".", 2)
            return f"layers.{self.layers[int(i)]}.{rest}"
        return name

    def has(self, name: str) -> bool:
        return self.inner.has(self._inner_name(name))  # type: ignore[attr-defined]

    def get(self, name: str) -> Weight:
        return self.inner.get(self._inner_name(name))  # type: ignore[attr-defined]


def layer_subset(source: object, fraction: float = DEFAULT_KEEP_FRACTION) -> LayerSubset:
    return LayerSubset(source, kept_layers(source.config.num_layers, fraction))  # type: ignore[attr-defined]
