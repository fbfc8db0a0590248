"""Next-token choice from logits: greedy, or temperature / top-k / top-p sampling with a seeded generator."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 means greedy
    top_k: int = 0  # 0 means no limit
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def token_distribution(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """The probabilities sampling draws from, float64 [vocab], after temperature, top-k and top-p."""
    z = logits.astype(np.float64) / params.temperature
    if params.top_k and params.top_k < z.size:
        kth = np.partition(z, -params.top_k)[-params.top_k]
        z = np.where(z < kth, -np.inf, z)
    z -= z.max()
    p = np.exp(z)
    p /= p.sum()
    if params.top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        cumulative = np.cumsum(p[order])
        keep = order[: int(np.searchsorted(cumulative, params.top_p) + 1)]
        mask = np.zeros_like(p)
        mask[keep] = p[keep]
        p = mask / mask.sum()
    return p


def choose_token(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator,
                 exclude: int | None = None) -> int:
    """The next token; `exclude` removes one token from the sampling distribution (a rejected draft)."""
    if params.greedy:
        return int(np.argmax(logits))
    p = token_distribution(logits, params)
    if exclude is not None:
        p[exclude] = 0.0
        p /= p.sum()
    return int(rng.choice(p.size, p=p))
