"""The default evaluation text and perplexity over fixed windows, shared by validate and the benchmarks.

The text is Python's own `pydoc_data.topics`, so no data ships with edgekit and every machine
scores the same characters.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import numpy as np

DEFAULT_CHARS = 40_000
DEFAULT_WINDOW = 512


HELD_OUT_START = 100_000  # where held-out calibration text starts: past any evaluation text benchmarks use


def _topics() -> str:
    from pydoc_data.topics import topics

    return "\n".join(topics[k] for k in sorted(topics))


def default_text(chars: int = DEFAULT_CHARS) -> str:
    return _topics()[:chars]


def sentences(count: int = 40) -> list[str]:
    """`count` distinct sentences of the evaluation text, from 4 to 60 words in even steps of the length order:
    the encoder benchmark's inputs, short and long as an app's are."""
    found = {" ".join(s.split()) for s in re.split(r"(?<=[.!?])\s+", default_text())}
    prose = sorted((s for s in found if 4 <= len(s.split()) <= 60 and s[0].isupper() and s[-1] in ".!?"),
                   key=lambda s: (len(s.split()), s))
    return [prose[round(i * (len(prose) - 1) / max(count - 1, 1))] for i in range(count)]


def held_out_text(chars: int = 60_000) -> str:
    """Text of the same kind as default_text and disjoint from its first HELD_OUT_START characters: calibration
    data for benchmarks that evaluate on default_text (as WikiText's train split calibrates for its test split)."""
    return _topics()[HELD_OUT_START:HELD_OUT_START + chars]


def windows(ids: list[int], window: int = DEFAULT_WINDOW) -> Iterator[list[int]]:
    """Non-overlapping windows; a last window shorter than 2 tokens scores nothing and is dropped."""
    for start in range(0, len(ids), window):
        chunk = ids[start:start + window]
        if len(chunk) >= 2:
            yield chunk


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def token_nll(logits: np.ndarray, ids: list[int]) -> np.ndarray:
    """NLL of ids[1:] given logits [len(ids), vocab] (each window scored from its second token)."""
    logp = log_softmax(logits[:-1])
    return -logp[np.arange(len(ids) - 1), np.asarray(ids[1:])]


def perplexity(logits_fn: Callable[[list[int]], np.ndarray], ids: list[int], window: int = DEFAULT_WINDOW) -> float:
    nll = np.concatenate([token_nll(logits_fn(w), w) for w in windows(ids, window)])
    return float(np.exp(nll.mean()))
