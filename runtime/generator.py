"""The runtime's public API: load a package, then generate (all at once or streamed)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runtime.decoder import Decoder, SessionSettings, make_session
from edgekit.runtime.loader import load_package
from edgekit.runtime.lowering import lower
from edgekit.runtime.providers import select_provider
from edgekit.runtime.sampling import SamplingParams, choose_token
from edgekit.runtime.text import StreamDecoder, TextCodec

DEFAULT_MAX_LENGTH = 2048


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 256
    sampling: SamplingParams = field(default_factory=SamplingParams)
    seed: int | None = None
    stop_token_ids: tuple[int, ...] | None = None  # None: the package's stop tokens


class Model:
    """A loaded package. Not thread-safe: one generation at a time (the KV cache is shared)."""

    def __init__(self, path: str | Path, device: str = "cpu", fast: bool = False, max_length: int | None = None,
                 threads: int = 0, spinning: bool = True, verify: bool = True):
        self.path = Path(path)
        self.manifest, onnx_model = load_package(self.path, verify=verify)
        self.config = self.manifest.model
        self.provider = select_provider(device)
        self.fast = fast
        self.max_length = min(max_length or DEFAULT_MAX_LENGTH, self.config.max_position_embeddings)
        session = make_session(lower(onnx_model, self.provider, fast=fast),
                               SessionSettings(self.provider, threads, spinning))
        self.decoder = Decoder(session, self.config, self.max_length)
        self.codec = TextCodec(self.path / self.manifest.tokenizer["file"], self.manifest.tokenizer)

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

    def generate_ids(self, ids: list[int], gen: GenerationConfig) -> Iterator[int]:
        """New token ids, one at a time, from a fresh cache; stops at a stop token or the length limit."""
        stops = set(gen.stop_token_ids if gen.stop_token_ids is not None
                    else self.manifest.generation["stop_token_ids"])
        rng = np.random.default_rng(gen.seed)
        self.decoder.reset()
        logits = self.decoder.forward(ids)[-1]
        budget = min(gen.max_new_tokens, self.max_length - len(ids))
        for step in range(budget):
            token = choose_token(logits, gen.sampling, rng)
            if token in stops:
                return
            yield token
            if step + 1 < budget:
                logits = self.decoder.forward([token])[-1]

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
    """Load a package folder. Keyword arguments: device, fast, max_length, threads, spinning, verify."""
    return Model(path, **kwargs)  # type: ignore[arg-type]
