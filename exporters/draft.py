"""Draft models for speculative decoding: checking a given draft, or building one from the target.

`--draft auto` keeps the target's first layers and its last two, and distils them from the target on
text the target writes itself: the draft is the target pruned by whole layers, recovered by
exporters.prune's distillation loop, then quantized to int4 (round to nearest: a draft need not be
exact, the target verifies every token it proposes). Without training
(`--draft-steps 0`) the layer subset keeps the target's weights as they are; on SmolLM2-135M that draft
was accepted 0% of the time. Every draft's acceptance rate is measured when the package is written
(`measure_acceptance`, recorded in the manifest and printed by `edgekit export`), and again on the
user's own prompts by `edgekit bench --speculative draft`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from edgekit.exporters.prune.request import LayerRule, PruneRequest
from edgekit.exporters.weights import Weight
from tokenizers import Tokenizer

from edgekit.errors import EdgekitError
from edgekit.model_config import PER_LAYER

if TYPE_CHECKING:
    from edgekit.exporters.pipeline import PackageContents

DEFAULT_KEEP_FRACTION = 1 / 3
DEFAULT_DRAFT_STEPS = 200
# Measured on SmolLM2-135M, a 10-of-30-layer draft, 60 steps (KL to the target / top-1 agreement on held-out
# text; both near 14 nats / 0% untrained): first 8 + last 2 layers at 1e-3: 4.44 / 17%; at 3e-3: 5.69 / 10%;
# evenly spaced layers at 1e-3: 5.45 / 9%. Pruning's recovery rate (3e-4) suits a model less far from its teacher.
DRAFT_LR = 1e-3
LAST_LAYERS = 2  # kept at the end: they map the hidden state to what the output layer reads
DRAFT_WEIGHTS = "int4"  # the distilled draft's format (its embedding and output layer: int8, quantize.spec)
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


def kept_layers(num_layers: int, count: int | None = None) -> list[int]:
    """`count` layers of `num_layers` (default a third, at least 2): the first ones and the last LAST_LAYERS."""
    n = max(2, round(num_layers * DEFAULT_KEEP_FRACTION)) if count is None else count
    if not 1 <= n < num_layers:
        raise EdgekitError(f"--draft-layers is {n}: the auto draft keeps from 1 to {num_layers - 1} of the "
                           f"target's {num_layers} layers")
    last = min(LAST_LAYERS, n - 1)
    return list(range(n - last)) + list(range(num_layers - last, num_layers))


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


def draft_request(num_layers: int, layers: list[int]) -> PruneRequest:
    """The pruning request that cuts a target to `layers`: every other layer dropped whole."""
    dropped = tuple(f"layers.{i}" for i in range(num_layers) if i not in layers)
    rules = (LayerRule(tuple(f"layers.{i}" for i in layers), keep=True),) + \
        ((LayerRule(dropped, drop=True),) if dropped else ())
    return PruneRequest(rules=rules, where="--draft auto")


@contextmanager
def auto_draft(main: PackageContents, src: str, name: str, layers: int | None, steps: int,
               calib: str | None) -> Iterator[PackageContents]:
    """The `--draft auto` contents for target `main` (made from SRC): `layers` of its layers, distilled for `steps`
    steps on calibration text `calib` (None: text the target writes). The distilled draft's float folder lives in
    a temporary folder until the context ends: write the package inside it."""
    from edgekit.exporters.pipeline import PackageContents, build_graph, prepare
    from edgekit.exporters.prune import prune
    from edgekit.exporters.quantize.spec import quant_config_from_options

    n = main.source.config.num_layers
    keep = kept_layers(n, layers)
    if steps < 0:
        raise EdgekitError(f"--draft-steps is {steps}, expected 0 or more")
    if steps == 0:
        sub = LayerSubset(main.source, keep)
        yield PackageContents(sub, build_graph(sub), main.tokenizer, main.tok_info,
                              f"{name} (auto draft: {len(keep)} of {n} layers, untrained)", main.targets)
        return
    with tempfile.TemporaryDirectory(prefix=".draft-") as tmp:
        # A draft predicts the target's next tokens on any text, so it distils on the neutral prompts' text, not on
        # the encyclopedic text pruning keeps facts with.
        folder = prune(src, Path(tmp) / "draft", draft_request(n, keep), calib, steps, DRAFT_LR,
                       calib_prompts="neutral").folder
        contents = prepare(str(folder), quant_config_from_options(DRAFT_WEIGHTS),
                           targets=tuple(t.name for t in main.targets))
        check_same_tokenizer(main.tokenizer, contents.tokenizer, "--draft auto")
        yield replace(contents, source_name=f"{name} (auto draft: {len(keep)} of {n} layers, distilled {steps} "
                                            f"steps, {DRAFT_WEIGHTS})")
