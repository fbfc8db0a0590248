"""Next-token choice from logits: greedy, or temperature / top-k / top-p sampling with a seeded generator."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np


def check_int(name: str, value: object, minimum: int) -> None:
    """ValueError naming `value` unless it is an integer (not a bool) >= minimum."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isnan(value)


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 means greedy
    top_k: int = 0  # 0 means no limit
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if not _is_number(self.temperature) or not 0 <= self.temperature < math.inf:
            raise ValueError(f"temperature must be a finite number >= 0 (0: greedy), got {self.temperature!r}")
        check_int("top_k", self.top_k, 0)
        if not _is_number(self.top_p) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")

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
