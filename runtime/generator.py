"""The runtime's public API: load a package, then generate (all at once or streamed).

A loaded Model is safe to share between threads, and its generators may interleave: onnxruntime sessions
are shared, and each generation (and each `logits` call) checks its own KV caches out of the model's
pool (runtime.decoder.StatePool), giving them back when it finishes, is closed or is garbage-collected.
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np
import onnxruntime as ort
from edgekit.runtime.decoder import Decoder, SequenceCaches, SessionSettings, StatePool, make_session
from edgekit.runtime.decoding import DecodeStats, decode
from edgekit.runtime.draft_policy import CostAwareLength, PassCosts
from edgekit.runtime.drafters import Drafter, ModelDrafter, NgramDrafter
from edgekit.runtime.loader import graph_path, load_manifest, portable_graph_path
from edgekit.runtime.providers import select_provider
from edgekit.runtime.sampling import SamplingParams
from edgekit.runtime.text import StreamDecoder, TextCodec

from edgekit.errors import EdgekitError
from edgekit.package import Manifest

DEFAULT_MAX_LENGTH = 2048
DRAFT_POLICIES = ("cost", "all")
T = TypeVar("T")


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


class Generation(Iterator[T], Generic[T]):
    """One generation's output (token ids or text pieces), produced as it is iterated; `stats` counts its
    passes, drafted and accepted tokens. `close()` (or dropping it) ends it early and frees its KV cache."""

    def __init__(self, items: Generator[T, None, None], stats: DecodeStats):
        self._items = items
        self.stats = stats

    def __iter__(self) -> Generation[T]:
        return self

    def __next__(self) -> T:
        return next(self._items)

    def close(self) -> None:
        self._items.close()


class Model:
    """A loaded package, safe to share between threads: each generation runs on KV caches of its own."""

    def __init__(self, path: str | Path, device: str = "cpu", fast: bool = False, max_length: int | None = None,
                 threads: int = 0, spinning: bool = True, verify: bool = True, draft: bool = False,
                 float_passes: bool = False, idle_caches: int = 1):
        """`idle_caches`: KV caches kept for reuse once their generation ends. A generation that finds none
        idle allocates one (max_length x layers x 2 x kv_heads x head_dim float32, plus the draft model's:
        94 MB for SmolLM2-135M at 2048 tokens), so memory grows with the generations running at once and
        shrinks back to `idle_caches` caches when they end.

        `float_passes` (exact mode only): passes of several tokens (prompt prefill, speculative verify) run
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
        self.manifest, self._session, self._wide_session, self.max_length = self._open(
            self.path, verify, max_length, threads, spinning and not draft, float_passes)
        self.config = self.manifest.model
        self.codec = TextCodec(self.path / self.manifest.tokenizer["file"], self.manifest.tokenizer)
        self._draft_session: ort.InferenceSession | None = None
        self._draft_length = 0
        if draft:
            draft_dir = self.manifest.data.get("draft", {}).get("folder")
            if not draft_dir:
                raise EdgekitError("this package has no draft model (export it with --draft)", self.path)
            # Two sessions take turns on few cores: spinning threads of the idle one would steal them.
            _, self._draft_session, _, self._draft_length = self._open(self.path / draft_dir, verify,
                                                                       self.max_length, threads, False)
        self._caches: StatePool[SequenceCaches] = StatePool(self._new_caches, idle_caches)
        self._direct: SequenceCaches | None = None
        self._local = threading.local()  # per thread: the stats of its latest generation
        self.pass_costs = PassCosts()  # pass timings outlive one generation: they belong to model + machine

    def _new_caches(self) -> SequenceCaches:
        draft = Decoder(self._draft_session, self._draft_length) if self._draft_session is not None else None
        return SequenceCaches(Decoder(self._session, self.max_length, self._wide_session), draft)

    def _open(self, folder: Path, verify: bool, max_length: int | None, threads: int, spinning: bool,
              float_passes: bool = False) -> tuple[Manifest, ort.InferenceSession, ort.InferenceSession | None, int]:
        manifest = load_manifest(folder, verify=verify)
        config = manifest.model
        length = min(max_length or DEFAULT_MAX_LENGTH, config.max_position_embeddings)
        settings = SessionSettings(self.provider, threads, spinning)
        # The portable graph's dequantization bodies fold into float32 weights at session creation.
        wide = make_session(portable_graph_path(folder, manifest), replace(settings, spinning=False)) \
            if float_passes else None
        session = make_session(graph_path(folder, manifest, self.provider, self.fast), settings)
        return manifest, session, wide, length

    def _direct_caches(self) -> SequenceCaches:
        if self._direct is None:
            self._direct = self._new_caches()
        return self._direct

    @property
    def decoder(self) -> Decoder:
        """A target decoder of the model's own, outside the pool, for driving passes by hand (tests,
        benchmarks): one thread at a time; generations never touch it. Its cache is made on first use."""
        return self._direct_caches().target

    @property
    def draft_decoder(self) -> Decoder | None:
        """The draft model's decoder beside `decoder` (None unless loaded with draft=True)."""
        return self._direct_caches().draft if self.has_draft else None

    @property
    def has_draft(self) -> bool:
        return self._draft_session is not None

    @property
    def last_stats(self) -> DecodeStats:
        """The stats of the latest generation started by this thread (Generation.stats is each one's own)."""
        return getattr(self._local, "stats", None) or DecodeStats()

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
        with self._caches.checkout() as caches:
            caches.target.reset()
            return caches.target.forward(ids, n_logits=len(ids))

    def _check_speculative(self, kind: str | None) -> None:
        if kind not in (None, "ngram", "draft"):
            raise EdgekitError(f"unknown speculative mode {kind!r} (ngram, draft)")
        if kind == "draft" and not self.has_draft:
            raise EdgekitError("speculative='draft' needs the model loaded with draft=True "
                               "(and a package exported with --draft)")

    def generate_ids(self, ids: list[int], gen: GenerationConfig) -> Generation[int]:
        """New token ids, one at a time, from a fresh cache; stops at a stop token or the length limit.
        Statistics of the generation (passes, drafted and accepted tokens) are its `stats`, and this thread's
        `last_stats`. Its KV caches are taken from the pool at the first token and given back at the end."""
        stops = set(gen.stop_token_ids if gen.stop_token_ids is not None
                    else self.manifest.generation["stop_token_ids"])
        if gen.draft_policy not in DRAFT_POLICIES:
            raise EdgekitError(f"unknown draft policy {gen.draft_policy!r} ({', '.join(DRAFT_POLICIES)})")
        self._check_speculative(gen.speculative)
        stats = DecodeStats()
        self._local.stats = stats
        return Generation(self._decode(list(ids), gen, stops, stats), stats)

    def _decode(self, ids: list[int], gen: GenerationConfig, stops: set[int],
                stats: DecodeStats) -> Generator[int, None, None]:
        with self._caches.checkout() as caches:
            drafter: Drafter | None = None
            if gen.speculative == "ngram":
                drafter = NgramDrafter()
            elif gen.speculative == "draft":
                drafter = ModelDrafter(caches.draft, gen.draft_min_confidence)  # type: ignore[arg-type]
            policy = CostAwareLength(self.pass_costs) if gen.draft_policy == "cost" else None
            yield from decode(caches.target, ids, max_new_tokens=gen.max_new_tokens, params=gen.sampling,
                              rng=np.random.default_rng(gen.seed), stops=stops, drafter=drafter,
                              draft_len=gen.draft_len, stats=stats, policy=policy)

    # -- text --------------------------------------------------------------------------------------------
    def stream(self, prompt: str, chat: bool = False, gen: GenerationConfig | None = None) -> Generation[str]:
        """Text pieces as they are generated."""
        tokens = self.generate_ids(self.encode(prompt, chat), gen or GenerationConfig())
        return Generation(self._pieces(tokens), tokens.stats)

    def _pieces(self, tokens: Generation[int]) -> Generator[str, None, None]:
        text = StreamDecoder(self.codec)
        try:
            for token in tokens:
                piece = text.push(token)
                if piece:
                    yield piece
        finally:
            tokens.close()  # closed early: the token generator gives its caches back now

    def generate(self, prompt: str, chat: bool = False, gen: GenerationConfig | None = None) -> str:
        return "".join(self.stream(prompt, chat, gen))


def load(path: str | Path, **kwargs: object) -> Model:
    """Load a package folder. Keyword arguments: device, fast, max_length, threads, spinning, verify, draft,
    float_passes."""
    return Model(path, **kwargs)  # type: ignore[arg-type]
