"""The runtime's public API: load a package, then generate (all at once or streamed).

A loaded Model is safe to share between threads, and its generators may interleave: onnxruntime sessions
are shared, and each generation (and each `logits` call) checks its own KV caches out of the model's
pool (runtime.decoder.StatePool), giving them back when it finishes, is closed or is garbage-collected.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Generator, Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Generic, NamedTuple, TypeVar

import numpy as np
import onnxruntime as ort
from edgekit.runtime.concat_decoder import ConcatCacheDecoder
from edgekit.runtime.decoder import Decoder, SequenceCaches, SessionSettings, StatePool, make_session
from edgekit.runtime.decoding import MAX_DRAFT, DecodeStats, decode
from edgekit.runtime.draft_policy import CostAwareLength, PassCosts
from edgekit.runtime.drafters import Drafter, ModelDrafter, NgramDrafter
from edgekit.runtime.loader import (
    graph_path,
    load_manifest,
    portable_graph_path,
    require_kind,
    target_graph_path,
)
from edgekit.runtime.memory import release_freed_memory
from edgekit.runtime.providers import select_provider
from edgekit.runtime.sampling import SamplingParams, check_int
from edgekit.runtime.static_decoder import StaticDecoder
from edgekit.runtime.text import StreamDecoder, TextCodec

from edgekit.errors import EdgekitError
from edgekit.package import CONCAT_KV_CONTRACT, CONTRACT, Manifest, package_file, package_path
from edgekit.targets import target as named_target
from edgekit.targets import target_for_provider

DEFAULT_MAX_LENGTH = 2048
DRAFT_POLICIES = ("cost", "all")
SPECULATIVE_MODES = ("ngram", "draft")
T = TypeVar("T")
Messages = Sequence[Mapping[str, str]]  # chat messages: [{"role": "system" | "user" | "assistant", "content": ...}]
Prompt = str | Messages


@dataclass(frozen=True)
class GenerationConfig:
    """How to generate, as one value. Every field is checked here: a bad value raises ValueError naming it."""

    max_new_tokens: int = 256
    sampling: SamplingParams = field(default_factory=SamplingParams)
    seed: int | None = None
    stop_token_ids: tuple[int, ...] | None = None  # None: the package's stop tokens
    speculative: str | None = None  # None (plain), "ngram" (prompt lookup) or "draft" (the package's draft model)
    draft_len: int = 4  # most tokens drafted per verify pass
    draft_policy: str = "cost"  # "cost": verify the draft length with the best measured tokens/s (or none);
    # "all": verify every drafted token
    draft_min_confidence: float = 0.3  # a draft model stops drafting below this probability of its own token
    stop: tuple[str, ...] = ()  # text that ends generation (excluded from the output); a str is one stop string

    def __post_init__(self) -> None:
        check_int("max_new_tokens", self.max_new_tokens, 1)
        if self.seed is not None:
            check_int("seed", self.seed, 0)
        if not isinstance(self.sampling, SamplingParams):
            raise TypeError(f"sampling must be a SamplingParams, got {self.sampling!r}")
        if self.stop_token_ids is not None:
            object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
            for token in self.stop_token_ids:
                check_int("a stop token id", token, 0)
        if self.speculative not in (None, *SPECULATIVE_MODES):
            raise ValueError(f"unknown speculative mode {self.speculative!r} (ngram, draft)")
        if isinstance(self.draft_len, bool) or not isinstance(self.draft_len, int) or \
                not 1 <= self.draft_len <= MAX_DRAFT:
            raise ValueError(f"draft length must be in 1..{MAX_DRAFT}, got {self.draft_len!r}")
        if self.draft_policy not in DRAFT_POLICIES:
            raise ValueError(f"unknown draft policy {self.draft_policy!r} ({', '.join(DRAFT_POLICIES)})")
        if not 0 <= self.draft_min_confidence <= 1:
            raise ValueError(f"draft_min_confidence must be in [0, 1], got {self.draft_min_confidence!r}")
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        if not all(isinstance(s, str) and s for s in stop):
            raise ValueError(f"stop strings must be non-empty strings, got {self.stop!r}")
        object.__setattr__(self, "stop", stop)

    def with_options(self, *, max_new_tokens: int | None = None, temperature: float | None = None,
                     top_p: float | None = None, top_k: int | None = None, stop: str | Sequence[str] | None = None,
                     seed: int | None = None, speculative: str | None = None) -> GenerationConfig:
        """This config with the given keywords (transformers' names) replacing its fields; None keeps a field."""
        sampling = {k: v for k, v in (("temperature", temperature), ("top_p", top_p), ("top_k", top_k))
                    if v is not None}
        fields = {k: v for k, v in (("max_new_tokens", max_new_tokens), ("stop", stop), ("seed", seed),
                                    ("speculative", speculative)) if v is not None}
        if sampling:
            fields["sampling"] = replace(self.sampling, **sampling)
        return replace(self, **fields) if fields else self


class StopStrings:
    """Ends streamed text at the first stop string. `push(piece)` returns the text that is safe to emit: all
    but the longest tail that could still be the start of a stop string (at most len(longest) - 1 chars),
    and, once a stop string appears, the text before it (then `found` is set and the rest is dropped)."""

    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(stops)
        self.held = ""
        self.found = False

    def push(self, piece: str) -> str:
        text = self.held + piece
        starts = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if starts:
            self.found, self.held = True, ""
            return text[:min(starts)]
        keep = self._partial_tail(text)
        self.held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep]

    def flush(self) -> str:
        """The held-back tail, at the end of generation (no stop string completed it)."""
        out, self.held = self.held, ""
        return out

    def _partial_tail(self, text: str) -> int:
        """Length of the longest tail of `text` that is a proper prefix of a stop string."""
        best = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:n]):
                    best = n
                    break
        return best


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


class Opened(NamedTuple):
    """A package opened for generation: its manifest, the session over its graph, the float-passes session
    (`wide`), a static graph's one-token step session, and the most tokens a sequence may hold."""

    manifest: Manifest
    session: ort.InferenceSession
    wide: ort.InferenceSession | None
    step: ort.InferenceSession | None
    max_length: int


class Model:
    """A loaded package, safe to share between threads: each generation runs on KV caches of its own."""

    def __init__(self, path: str | Path, device: str = "cpu", fast: bool = False, max_length: int | None = None,
                 threads: int = 0, spinning: bool = True, verify: bool = True, draft: bool = False,
                 float_passes: bool = False, idle_caches: int = 1, target: str | None = None):
        """`idle_caches`: KV caches kept for reuse once their generation ends. A generation that finds none
        idle allocates one (max_length x layers x 2 x kv_heads x head_dim float32, plus the draft model's:
        94 MB for SmolLM2-135M at 2048 tokens), so memory grows with the generations running at once and
        shrinks back to `idle_caches` caches when they end.

        `float_passes` (exact mode only): passes of several tokens (prompt prefill, speculative verify) run
        on float32 copies of the weights, a second session over the same cache. It costs memory (4 bytes per
        weight: SmolLM2-135M's process holds about 790 MB once loaded, against 270 MB without, and peaks at
        3.6 GB while onnxruntime folds the weights at load) and buys cheap multi-token passes: a 5-token pass
        costs about 3x a one-token pass on onnxruntime's MatMulNBits, about 1.4x on float32 weights
        (benchmarks/multirow.py). Still exact: the same weights, float32 arithmetic, in another summation
        order.

        `target`: run the graph exported for this target (a name from edgekit.targets) on `device`, instead of the
        one lowered for the device: `target="qnn"` runs the static-shape NPU graph on the CPU, to check it.
        A static-shape graph holds at most its context of tokens (max_length is capped to it)."""
        self.path = Path(path)
        self.provider = select_provider(device)
        self.fast = fast
        self.target = target
        if float_passes and fast:
            raise EdgekitError("float_passes is for exact mode: fast mode's multi-token passes must use its "
                               "int8 activations too, or speculative output would differ from plain decoding")
        self.float_passes = float_passes
        # Sessions that take turns on few cores must not spin (FACTS.md): the target beside a draft model; the
        # float session beside the one it serves (it runs seldom, so the main session keeps spinning).
        opened = self._open(self.path, verify, max_length, threads, spinning and not draft, float_passes)
        self.manifest, self._session, self.max_length = opened.manifest, opened.session, opened.max_length
        self._wide_session, self._step_session = opened.wide, opened.step
        self.config = self.manifest.model
        self._static = self._static_entry(self.manifest) is not None
        self.codec = TextCodec(package_file(self.path, self.manifest, self.manifest.tokenizer["file"]),
                               self.manifest.tokenizer)
        self._draft_session: ort.InferenceSession | None = None
        self._draft_length = 0
        if draft:
            draft_dir = self.manifest.data.get("draft", {}).get("folder")
            if not draft_dir:
                raise EdgekitError("this package has no draft model (export it with --draft)", self.path)
            # Two sessions take turns on few cores: spinning threads of the idle one would steal them.
            drafting = self._open(package_path(self.path, draft_dir), verify, self.max_length, threads, False)
            self._draft_session, self._draft_length = drafting.session, drafting.max_length
        self._caches: StatePool[SequenceCaches] = StatePool(self._new_caches, idle_caches)
        self._direct: SequenceCaches | None = None
        self._local = threading.local()  # per thread: the stats of its latest generation
        self.pass_costs = PassCosts()  # pass timings outlive one generation: they belong to model + machine

    def _new_caches(self) -> SequenceCaches:
        draft = Decoder(self._draft_session, self._draft_length) if self._draft_session is not None else None
        if self._static:
            return SequenceCaches(StaticDecoder(self._session, self.max_length, self._step_session), draft)
        if self.manifest.data["graph"]["contract"] == CONCAT_KV_CONTRACT:
            return SequenceCaches(ConcatCacheDecoder(self._session, self.max_length), draft)
        return SequenceCaches(Decoder(self._session, self.max_length, self._wide_session), draft)

    def _open(self, folder: Path, verify: bool, max_length: int | None, threads: int, spinning: bool,
              float_passes: bool = False) -> Opened:
        manifest = load_manifest(folder, verify=verify)
        require_kind(folder, manifest, False, "load it with edgekit.runtime.load(), which gives an Encoder (embed)")
        if float_passes and manifest.data["graph"]["contract"] != CONTRACT:
            raise EdgekitError("float_passes needs a decoder built by edgekit's native builder (its cache buffers "
                               "are shared by two sessions)", folder)
        config = manifest.model
        static = self._static_entry(manifest)
        if static and float_passes:
            raise EdgekitError("float_passes needs a graph with dynamic shapes, not the static one", folder)
        limit = static["static"]["context"] if static else config.max_position_embeddings
        length = min(max_length or DEFAULT_MAX_LENGTH, limit)
        settings = SessionSettings(self.provider, threads, spinning)
        # The portable graph's dequantization bodies fold into float32 weights at session creation.
        wide = make_session(portable_graph_path(folder, manifest), replace(settings, spinning=False)) \
            if float_passes else None
        if wide is not None:
            release_freed_memory()  # what folding freed (runtime.memory)
        graph = (graph_path(folder, manifest, self.provider, self.fast) if self.target is None
                 else target_graph_path(folder, manifest, named_target(self.target), self.fast))
        step = make_session(package_file(folder, manifest, static["step_file"]), settings) \
            if static and "step_file" in static else None
        return Opened(manifest, make_session(graph, settings), wide, step, length)

    def _static_entry(self, manifest: Manifest) -> dict[str, Any] | None:
        """The target entry of the graph this model runs when it has static shapes (runtime.static_decoder: its
        `static` {chunk, context} and `step_file`), else None."""
        chosen = target_for_provider(self.provider) if self.target is None else named_target(self.target)
        entry = manifest.data["graph"].get("targets", {}).get(chosen.name, {})
        return entry if "static" in entry else None

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
    def prompt_text(self, prompt: Prompt, chat: bool = False) -> str:
        """The text the model continues: `prompt` itself, or chat messages (a str with `chat=True` is one user
        message) rendered through the package's chat template with the assistant's turn opened."""
        if isinstance(prompt, str):
            return self.codec.chat_prompt([{"role": "user", "content": prompt}]) if chat else prompt
        if _is_messages(prompt):
            for i, message in enumerate(prompt):
                if not isinstance(message.get("role"), str) or not isinstance(message.get("content"), str):
                    raise TypeError(f"chat message {i} needs a str 'role' and a str 'content', got {message!r}")
            return self.codec.chat_prompt([dict(m) for m in prompt])
        raise TypeError(f"a prompt is a str or a list of chat messages ({{'role': ..., 'content': ...}}), got "
                        f"{_describe(prompt)}")

    def encode(self, prompt: Prompt, chat: bool = False) -> list[int]:
        """Token ids of the prompt (see prompt_text); refused when empty or when it fills the context."""
        ids = self.codec.encode(self.prompt_text(prompt, chat))
        if not ids:
            raise EdgekitError("the prompt is empty")
        if len(ids) >= self.max_length:
            larger = "export with a larger --static-context" if self._static else "raise --max-length"
            raise EdgekitError(f"prompt has {len(ids)} tokens; the context holds {self.max_length} ({larger} up to "
                               f"the model's {self.config.max_position_embeddings}, or shorten the prompt)")
        return ids

    def logits(self, ids: list[int]) -> np.ndarray:
        """Logits float32 [len(ids), vocab] for a fresh sequence (validation, perplexity)."""
        with self._caches.checkout() as caches:
            caches.target.reset()
            return caches.target.forward(ids, n_logits=len(ids))

    def generate_ids(self, ids: Sequence[int], gen: GenerationConfig | None = None, **options: object
                     ) -> Generation[int]:
        """New token ids, one at a time, from a fresh cache; stops at a stop token or the length limit.
        `options` are generate()'s keywords (GenerationConfig.with_options) over `gen`; stop strings are
        for text (stream, generate). Statistics of the generation (passes, drafted and accepted tokens) are its
        `stats`, and this thread's `last_stats`. Its KV caches are taken from the pool at the first token and
        given back when it ends, is closed or is dropped."""
        gen = (gen or GenerationConfig()).with_options(**options)  # type: ignore[arg-type]
        return self._generation(list(ids), gen)

    def _generation(self, ids: list[int], gen: GenerationConfig, caches: SequenceCaches | None = None,
                    cached: int = 0) -> Generation[int]:
        """generate_ids on the pool's caches, or on `caches` whose first `cached` tokens are ids[:cached]."""
        stops = set(gen.stop_token_ids if gen.stop_token_ids is not None
                    else self.manifest.generation["stop_token_ids"])
        if gen.speculative == "draft" and not self.has_draft:
            raise EdgekitError("speculative='draft' needs the model loaded with draft=True "
                               "(and a package exported with --draft)")
        stats = DecodeStats()
        self._local.stats = stats
        return Generation(self._decode(ids, gen, stops, stats, caches, cached), stats)

    def _decode(self, ids: list[int], gen: GenerationConfig, stops: set[int], stats: DecodeStats,
                own: SequenceCaches | None, cached: int) -> Generator[int, None, None]:
        with nullcontext(own) if own is not None else self._caches.checkout() as caches:
            drafter: Drafter | None = None
            if gen.speculative == "ngram":
                drafter = NgramDrafter()
            elif gen.speculative == "draft":
                drafter = ModelDrafter(caches.draft, gen.draft_min_confidence)  # type: ignore[arg-type]
            policy = CostAwareLength(self.pass_costs) if gen.draft_policy == "cost" else None
            yield from decode(caches.target, ids, max_new_tokens=gen.max_new_tokens, params=gen.sampling,
                              rng=np.random.default_rng(gen.seed), stops=stops, drafter=drafter,
                              draft_len=gen.draft_len, stats=stats, policy=policy, cached=cached)

    def chat(self, system: str | None = None, gen: GenerationConfig | None = None) -> Chat:
        """A multi-turn conversation (optionally opened by a system prompt) that keeps its KV cache between
        turns: each turn runs only the tokens after the part of the conversation already cached."""
        return Chat(self, system, gen)

    # -- text --------------------------------------------------------------------------------------------
    def stream(self, prompt: Prompt, chat: bool = False, gen: GenerationConfig | None = None, *,
               max_new_tokens: int | None = None, temperature: float | None = None, top_p: float | None = None,
               top_k: int | None = None, stop: str | Sequence[str] | None = None, seed: int | None = None,
               speculative: str | None = None) -> Generation[str]:
        """Text pieces as they are generated, for one prompt: a str, or a list of chat messages.

        Keywords replace `gen`'s fields (default GenerationConfig()): max_new_tokens, temperature (0: greedy),
        top_p, top_k (0: no limit), stop (str or list: generation ends before the first one, which is not
        emitted; text that may begin one is held back until it is clear), seed, speculative ("ngram", "draft").
        Arguments are checked here, before the first piece: ValueError naming a bad value."""
        gen = (gen or GenerationConfig()).with_options(
            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k, stop=stop, seed=seed,
            speculative=speculative)
        if _is_batch(prompt):
            raise TypeError("stream() takes one prompt; generate() takes a list of prompts")
        tokens = self.generate_ids(self.encode(prompt, chat), gen)
        return Generation(self._pieces(tokens, gen.stop), tokens.stats)

    def _pieces(self, tokens: Iterator[int] | Generation[int], stop: tuple[str, ...]) -> Generator[str, None, None]:
        text, stops = StreamDecoder(self.codec), StopStrings(stop)
        try:
            for token in tokens:
                piece = stops.push(text.push(token))
                if piece:
                    yield piece
                if stops.found:
                    return
            if stops.held:
                yield stops.flush()
        finally:
            tokens.close()  # type: ignore[union-attr]  # ended early: the token generator gives its caches back

    def generate(self, prompt: Prompt | Sequence[Prompt], chat: bool = False, gen: GenerationConfig | None = None,
                 *, max_new_tokens: int | None = None, temperature: float | None = None, top_p: float | None = None,
                 top_k: int | None = None, stop: str | Sequence[str] | None = None, seed: int | None = None,
                 speculative: str | None = None) -> str | list[str]:
        """The generated text for a prompt (a str or a list of chat messages), or a list of texts for a list of
        prompts (generated one after another, each from `seed` if given). Keywords as for stream()."""
        options = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p, "top_k": top_k,
                   "stop": stop, "seed": seed, "speculative": speculative}
        if not _is_batch(prompt):
            return "".join(self.stream(prompt, chat, gen, **options))  # type: ignore[arg-type]
        streams = [self.stream(p, chat, gen, **options) for p in prompt]  # type: ignore[arg-type]
        return ["".join(s) for s in streams]  # every prompt checked before the first is generated


class Chat:
    """A conversation with a model, holding one KV cache (out of the model's pool) for its whole life: a turn
    re-renders every message through the chat template and runs only the tokens past the longest prefix
    already in the cache. One turn at a time (a Chat is not shared between threads); `close()` (or dropping
    it) gives the cache back."""

    def __init__(self, model: Model, system: str | None = None, gen: GenerationConfig | None = None):
        self.model = model
        self.gen = gen or GenerationConfig()
        self.messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
        self._caches: SequenceCaches | None = model._caches.acquire()
        self._release = weakref.finalize(self, model._caches.release, self._caches)
        self._cached: list[int] = []  # the token ids whose keys and values the cache holds

    def send(self, text: str, **options: object) -> Generation[str]:
        """The reply to a user message, streamed; it joins `messages` when it ends (or is closed).
        Keywords as for Model.stream; `stats.prompt_tokens` counts only the tokens run this turn."""
        if self._caches is None:
            raise ValueError("this chat is closed")
        gen = self.gen.with_options(**options)  # type: ignore[arg-type]
        messages = [*self.messages, {"role": "user", "content": text}]
        ids = self.model.encode(messages)
        common = 0
        for a, b in zip(self._cached, ids):
            if a != b:
                break
            common += 1
        tokens = self.model._generation(ids, gen, self._caches, min(common, len(ids) - 1))
        self.messages = messages
        return Generation(self._reply(ids, tokens, gen.stop), tokens.stats)

    def _reply(self, ids: list[int], tokens: Generation[int], stop: tuple[str, ...]) -> Generator[str, None, None]:
        new: list[int] = []

        def recorded() -> Generator[int, None, None]:
            try:
                for token in tokens:
                    new.append(token)
                    yield token
            finally:
                tokens.close()

        pieces: list[str] = []
        try:
            for piece in self.model._pieces(recorded(), stop):
                pieces.append(piece)
                yield piece
        finally:
            self.messages.append({"role": "assistant", "content": "".join(pieces)})
            length = self._caches.target.length if self._caches is not None else 0
            self._cached = [*ids, *new][:length]

    def close(self) -> None:
        self._release()
        self._caches = None


def _is_messages(prompt: object) -> bool:
    return isinstance(prompt, Sequence) and not isinstance(prompt, str) and len(prompt) > 0 and \
        all(isinstance(m, Mapping) for m in prompt)


def _is_batch(prompt: object) -> bool:
    """A list of prompts (strs or message lists), as opposed to one prompt."""
    if isinstance(prompt, str) or not isinstance(prompt, Sequence) or _is_messages(prompt):
        return False
    if not prompt:
        raise ValueError("empty prompt list: give a prompt, a list of prompts or a list of chat messages")
    return all(isinstance(p, str) or _is_messages(p) for p in prompt)


def _describe(value: object) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60] + '...' if len(text) > 60 else text}"
