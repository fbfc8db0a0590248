"""The runtime's public API: load a package, then generate (all at once or streamed)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from edgekit.runtime.decoder import Decoder, SessionSettings, make_session
from edgekit.runtime.decoding import DecodeStats, decode
from edgekit.runtime.draft_policy import CostAwareLength
from edgekit.runtime.drafters import Drafter, ModelDrafter, NgramDrafter
from edgekit.runtime.loader import graph_path, load_manifest, portable_graph_path
from edgekit.runtime.providers import select_provider
from edgekit.runtime.sampling import SamplingParams
from edgekit.runtime.text import StreamDecoder, TextCodec

from edgekit.errors import EdgekitError
from edgekit.package import Manifest

DEFAULT_MAX_LENGTH = 2048
DRAFT_POLICIES = ("cost", "all")


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 256
    sampling: SamplingParams = field(default_factory=SamplingParams)
    seed: int | None = None
    stop_token_ids: tuple[int, ...] | None = None  # None: the package's stop tokens
    speculative: str | None = None  # None (plain), "ngram" (prompt lookup) or "draft" (the package's draft model)
    draft_len: int = 4  # most tokens drafted per verify pass
    draft_policy: str = "cost"  # "cost": verify the draft length with the best measured tokens/s (or none);
    # "all": verify every drafted token
    draft_min_confidence: float = 0.3  # a draft model stops drafting below this probability of its own token


class Model:
    """A loaded package. Not thread-safe: one generation at a time (the KV cache is shared)."""

    def __init__(self, path: str | Path, device: str = "cpu", fast: bool = False, max_length: int | None = None,
                 threads: int = 0, spinning: bool = True, verify: bool = True, draft: bool = False,
                 float_passes: bool = False):
        """`float_passes` (exact mode only): passes of several tokens (prompt prefill, speculative verify) run
        on float32 copies of the weights, a second session over the same cache. It costs memory (4 bytes per
        weight: about 540 MB more for SmolLM2-135M) and buys cheap multi-token passes: onnxruntime's
        MatMulNBits costs about 4x a one-token pass from 2 tokens on, a float32 GEMM about 1-2x (measured,
        docs/cli.md). Still exact: the same weights, float32 arithmetic, in another summation order."""
        self.path = Path(path)
        self.provider = select_provider(device)
        self.fast = fast
        if float_passes and fast:
            raise EdgekitError("float_passes is for exact mode: fast mode's multi-token passes must use its "
                               "int8 activations too, or speculative output would differ from plain decoding")
        self.float_passes = float_passes
        # Sessions that take turns on few cores must not spin (FACTS.md): the target beside a draft model; the
        # float session beside the one it serves (it runs seldom, so the main session keeps spinning).
        self.manifest, self.decoder = self._open(self.path, verify, max_length, threads, spinning and not draft,
                                                 float_passes)
        self.config = self.manifest.model
        self.max_length = self.decoder.max_length
        self.codec = TextCodec(self.path / self.manifest.tokenizer["file"], self.manifest.tokenizer)
        self.draft_decoder: Decoder | None = None
        if draft:
            draft_dir = self.manifest.data.get("draft", {}).get("folder")
            if not draft_dir:
                raise EdgekitError("this package has no draft model (export it with --draft)", self.path)
            # Two sessions take turns on few cores: spinning threads of the idle one would steal them.
            self.draft_decoder = self._open(self.path / draft_dir, verify, self.max_length, threads, False)[1]
        self.last_stats = DecodeStats()
        self.pass_costs = CostAwareLength()  # pass timings outlive one generation: they belong to model + machine

    def _open(self, folder: Path, verify: bool, max_length: int | None, threads: int,
              spinning: bool, float_passes: bool = False) -> tuple[Manifest, Decoder]:
        manifest = load_manifest(folder, verify=verify)
        config = manifest.model
        length = min(max_length or DEFAULT_MAX_LENGTH, config.max_position_embeddings)
        settings = SessionSettings(self.provider, threads, spinning)
        # The portable graph's dequantization bodies fold into float32 weights at session creation.
        wide = make_session(portable_graph_path(folder, manifest), replace(settings, spinning=False)) \
            if float_passes else None
        session = make_session(graph_path(folder, manifest, self.provider, self.fast), settings)
        return manifest, Decoder(session, length, wide)

    # -- tokens ----------------------------------------------------------------------------------------
    def encode(self, prompt: str, chat: bool = False) -> list[int]:
        text = self.codec.chat_prompt([{"role": "user", "content": prompt}]) if chat else prompt
        ids = self.codec.encode(text)
        if not ids:
            raise EdgekitError("the prompt is empty")
        if len(ids) >= self.max_length:
            raise EdgekitError(f"prompt has {len(ids)} tokens; the context holds {self.max_length} "
                               "(raise --max-length up to the model's "
                               f"{self.config.max_position_embeddings}, or shorten the prompt)")
        return ids

    def logits(self, ids: list[int]) -> np.ndarray:
        """Logits float32 [len(ids), vocab] for a fresh sequence (validation, perplexity)."""
        self.decoder.reset()
        return self.decoder.forward(ids, n_logits=len(ids))

    def _drafter(self, kind: str | None, min_confidence: float) -> Drafter | None:
        if kind is None:
            return None
        if kind == "ngram":
            return NgramDrafter()
        if kind == "draft":
            if self.draft_decoder is None:
                raise EdgekitError("speculative='draft' needs the model loaded with draft=True "
                                   "(and a package exported with --draft)")
            return ModelDrafter(self.draft_decoder, min_confidence)
        raise EdgekitError(f"unknown speculative mode {kind!r} (ngram, draft)")

    def generate_ids(self, ids: list[int], gen: GenerationConfig) -> Iterator[int]:
        """New token ids, one at a time, from a fresh cache; stops at a stop token or the length limit.
        Statistics of the generation (passes, drafted and accepted tokens) land in `last_stats`."""
        stops = set(gen.stop_token_ids if gen.stop_token_ids is not None
                    else self.manifest.generation["stop_token_ids"])
        if gen.draft_policy not in DRAFT_POLICIES:
            raise EdgekitError(f"unknown draft policy {gen.draft_policy!r} ({', '.join(DRAFT_POLICIES)})")
        self.last_stats = DecodeStats()
        return decode(self.decoder, ids, max_new_tokens=gen.max_new_tokens, params=gen.sampling,
                      rng=np.random.default_rng(gen.seed), stops=stops,
                      drafter=self._drafter(gen.speculative, gen.draft_min_confidence), draft_len=gen.draft_len,
                      stats=self.last_stats, policy=self.pass_costs if gen.draft_policy == "cost" else None)

    # -- text --------------------------------------------------------------------------------------------
    def stream(self, prompt: str, chat: bool = False, gen: GenerationConfig | None = None) -> Iterator[str]:
        """Text pieces as they are generated."""
        text = StreamDecoder(self.codec)
        for token in self.generate_ids(self.encode(prompt, chat), gen or GenerationConfig()):
            piece = text.push(token)
            if piece:
                yield piece

    def generate(self, prompt: str, chat: bool = False, gen: GenerationConfig | None = None) -> str:
        return "".join(self.stream(prompt, chat, gen))


def load(path: str | Path, **kwargs: object) -> Model:
    """Load a package folder. Keyword arguments: device, fast, max_length, threads, spinning, verify, draft,
    float_passes."""
    return Model(path, **kwargs)  # type: ignore[arg-type]
