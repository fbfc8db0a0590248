"""Drafters propose the next tokens cheaply; the target model then verifies them in one pass.

- NgramDrafter (prompt lookup): no weights; finds the latest earlier occurrence of the context's
  last n tokens and proposes what followed it. Strong when output repeats input.
- ModelDrafter: a small draft model (shipped in the package) run greedily, stopping as soon as its
  own confidence falls below a threshold (in the spirit of SpecDec++), so a bad draft costs little.
Drafts are deterministic (a point-mass draft distribution), which keeps speculative sampling exact
with the simplest acceptance rule (see edgekit.runtime.decoding).
"""

from __future__ import annotations

import time
from typing import Protocol

import numpy as np
from edgekit.runtime.decoder import Decoder
from edgekit.runtime.draft_policy import PassCosts


class Drafter(Protocol):
    def start(self, prompt: list[int]) -> None:
        """Begin a new sequence whose first tokens are `prompt`."""

    def propose(self, context: list[int], k: int) -> list[int]:
        """Up to k tokens that may follow `context` (the whole sequence so far)."""

    def token_cost(self) -> float:
        """Seconds one drafted token costs to propose (0: nothing worth counting, as for a lookup)."""


class NgramDrafter:
    """Prompt lookup over the sequence so far, with an index updated incrementally (O(1) per token)."""

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1):
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got {min_ngram}, {max_ngram}")
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self._seen: dict[tuple[int, ...], int] = {}  # n-gram -> position just after its latest occurrence
        self._indexed = 0
        self.last_source = 0  # length of the last match: longer matches are accepted more often

    def start(self, prompt: list[int]) -> None:
        self._seen.clear()
        self._indexed = 0

    def _index(self, context: list[int], last_end: int) -> None:
        """Index n-grams ending at positions up to last_end (each followed by at least one token)."""
        for end in range(self._indexed, last_end + 1):
            for n in range(self.min_ngram, self.max_ngram + 1):
                if end - n >= 0:
                    self._seen[tuple(context[end - n:end])] = end
        self._indexed = max(self._indexed, last_end + 1)

    def propose(self, context: list[int], k: int) -> list[int]:
        self._index(context, len(context) - 1)  # not the suffix itself: it has no continuation yet
        for n in range(min(self.max_ngram, len(context) - 1), self.min_ngram - 1, -1):
            at = self._seen.get(tuple(context[-n:]))
            if at is not None:
                self.last_source = n
                return context[at:at + k]
        self.last_source = 0
        return []

    def token_cost(self) -> float:
        return 0.0


class ModelDrafter:
    """A draft model kept in step with the sequence: its cache is rolled back to what was accepted."""

    def __init__(self, decoder: Decoder, min_confidence: float = 0.3):
        self.decoder = decoder
        self.min_confidence = min_confidence
        self._cached: list[int] = []  # tokens whose keys and values are in the draft's cache
        self.last_source = "model"
        self.costs = PassCosts()  # the draft model's one-token passes, a running median

    def token_cost(self) -> float:
        """The draft model's seconds per pass (running median; 0 until measured, so that it gets tried)."""
        return self.costs.costs(1)[0] or 0.0

    def start(self, prompt: list[int]) -> None:
        self.decoder.reset()
        self._cached = []

    def _sync(self, context: list[int]) -> np.ndarray:
        """Roll the draft cache back to the common prefix, feed the rest, return the last logits."""
        common = 0
        for a, b in zip(self._cached, context):
            if a != b:
                break
            common += 1
        common = min(common, len(context) - 1)  # always feed at least one token to get logits
        self.decoder.rollback(common)
        logits = self.decoder.forward(context[common:])[-1]
        self._cached = list(context)
        return logits

    def propose(self, context: list[int], k: int) -> list[int]:
        t0, passes = time.perf_counter(), 1
        logits = self._sync(context)
        tokens: list[int] = []
        for i in range(k):
            p = _softmax(logits)
            token = int(np.argmax(p))
            if p[token] < self.min_confidence:
                break
            tokens.append(token)
            if i + 1 < k:
                logits = self.decoder.forward([token])[-1]
                self._cached.append(token)
                passes += 1
        self.costs.record(1, (time.perf_counter() - t0) / passes)
        return tokens


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z.astype(np.float64) - z.max())
    return e / e.sum()
