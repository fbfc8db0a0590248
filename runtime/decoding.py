"""The decoding loop, plain or speculative: one loop, where plain decoding is a drafter that proposes nothing.

Each step the target chooses a token from its logits; a drafter may propose up to k tokens to follow
it; one forward pass over [token, *draft] returns the logits after each of them, and drafts are
accepted left to right:
- greedy: a draft token is accepted iff it is the target's argmax there, so the output is identical,
  token for token, to plain greedy decoding;
- sampling: a draft token d (drafts are deterministic: a point-mass proposal) is accepted with
  probability p(d); on rejection the next token is drawn from p with d removed. The emitted tokens
  then follow exactly the distribution of plain sampling.
The KV cache is rolled back to the accepted prefix (free: see Decoder.rollback). How much of a draft
is verified is the draft policy's choice (runtime.draft_policy: the length that buys the most new
tokens per second of pass time, or none); without one, every proposed token is verified.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from edgekit.runtime.decoder import Decoder
from edgekit.runtime.draft_policy import CostAwareLength
from edgekit.runtime.drafters import Drafter
from edgekit.runtime.sampling import SamplingParams, choose_token, token_distribution

MAX_DRAFT = 16


@dataclass
class DecodeStats:
    """Counts for one generation: acceptance rate and mean accepted tokens per verify pass, and timings
    (seconds spent in the generation itself, not in the caller between tokens)."""

    target_passes: int = 0
    drafted: int = 0
    accepted: int = 0
    prompt_tokens: int = 0  # run in the prompt pass (a prefix already cached is not counted)
    new_tokens: int = 0
    prompt_s: float = 0.0  # the prompt pass, up to the first new token
    decode_s: float = 0.0  # everything after it

    @property
    def prompt_tokens_per_s(self) -> float:
        return self.prompt_tokens / self.prompt_s if self.prompt_s else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        """New tokens after the first (which the prompt pass gives) per second of decoding."""
        return (self.new_tokens - 1) / self.decode_s if self.new_tokens > 1 and self.decode_s else 0.0

    def timing_line(self) -> str:
        return (f"prompt: {self.prompt_tokens} tokens, {self.prompt_tokens_per_s:.1f} tok/s; "
                f"generation: {self.new_tokens} tokens, {self.decode_tokens_per_s:.1f} tok/s")

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def accepted_per_pass(self) -> float:
        return self.accepted / self.target_passes if self.target_passes else 0.0


class NoDrafter:
    """Plain decoding."""

    def start(self, prompt: list[int]) -> None:
        pass

    def propose(self, context: list[int], k: int) -> list[int]:
        return []

    def token_cost(self) -> float:
        return 0.0


def _accepts(logits: np.ndarray, token: int, params: SamplingParams, rng: np.random.Generator) -> bool:
    if params.greedy:
        return int(np.argmax(logits)) == token
    return bool(rng.random() < token_distribution(logits, params)[token])


def _timed_forward(decoder: Decoder, ids: list[int], n_logits: int, policy: CostAwareLength | None) -> np.ndarray:
    t0 = time.perf_counter()
    logits = decoder.forward(ids, n_logits=n_logits)
    if policy is not None:
        policy.record_pass(len(ids), time.perf_counter() - t0)
    return logits


def _draft(drafter: Drafter, policy: CostAwareLength | None, context: list[int], k: int) -> list[int]:
    """The drafted tokens to verify. A drafter whose tokens cost time (a draft model) runs only for as many as
    the policy expects to pay for, counting that time too; once drafted, tokens cost nothing more, and the
    policy cuts the draft to the length worth a verify pass."""
    if policy is None:
        return drafter.propose(context, k)
    cost = drafter.token_cost()
    if cost:
        k = policy.length(getattr(drafter, "last_source", None), k, cost)
    draft = drafter.propose(context, k) if k else []
    return draft[:policy.length(getattr(drafter, "last_source", None), len(draft))]


def decode(decoder: Decoder, prompt: list[int], *, max_new_tokens: int, params: SamplingParams,
           rng: np.random.Generator, stops: set[int], drafter: Drafter | None = None, draft_len: int = 4,
           stats: DecodeStats | None = None, policy: CostAwareLength | None = None, cached: int = 0) -> Iterator[int]:
    """New tokens after `prompt`; stops at a stop token or the length limit. The cache starts empty, or
    holding the first `cached` prompt tokens (an earlier turn of a conversation: only the rest is run).
    `policy` chooses how many of the (at most draft_len) proposed tokens to verify; None: all of them."""
    if not 1 <= draft_len <= MAX_DRAFT:
        raise ValueError(f"draft length must be in 1..{MAX_DRAFT}, got {draft_len}")
    if not 0 <= cached < len(prompt):
        raise ValueError(f"cached prefix {cached} must be shorter than the prompt ({len(prompt)} tokens)")
    drafter = drafter or NoDrafter()
    stats = stats if stats is not None else DecodeStats()
    t0 = time.perf_counter()
    if cached:
        decoder.rollback(cached)
    else:
        decoder.reset()
    drafter.start(prompt)
    if policy is not None:
        policy.start()
    context = list(prompt)
    logits = decoder.forward(prompt[cached:])[-1]
    stats.target_passes += 1
    stats.prompt_tokens = len(prompt) - cached
    budget = min(max_new_tokens, decoder.max_length - len(prompt))
    produced, excluded = 0, None
    while produced < budget:
        token = choose_token(logits, params, rng, exclude=excluded)
        if token in stops:
            _add_time(stats, t0)
            return
        _count_token(stats, t0)
        yield token
        t0 = time.perf_counter()
        produced += 1
        context.append(token)
        if produced == budget:
            return
        draft = _draft(drafter, policy, context, min(draft_len, budget - produced))
        source = getattr(drafter, "last_source", None)
        verified = _timed_forward(decoder, [token, *draft], len(draft) + 1, policy)
        stats.target_passes += 1
        stats.drafted += len(draft)
        accepted = 0
        for i, d in enumerate(draft):
            if not _accepts(verified[i], d, params, rng):
                break
            accepted += 1
        stats.accepted += accepted
        if policy is not None and draft:
            policy.record_draft(source, len(draft), accepted)
        for d in draft[:accepted]:
            if d in stops:
                _add_time(stats, t0)
                return
            _count_token(stats, t0)
            yield d
            t0 = time.perf_counter()
        produced += accepted
        context.extend(draft[:accepted])
        decoder.rollback(len(context))
        logits = verified[accepted]
        excluded = draft[accepted] if accepted < len(draft) and not params.greedy else None


def _add_time(stats: DecodeStats, since: float) -> None:
    """Time since `since` goes to the prompt pass until the first token exists, then to decoding."""
    seconds = time.perf_counter() - since
    if stats.new_tokens:
        stats.decode_s += seconds
    else:
        stats.prompt_s += seconds


def _count_token(stats: DecodeStats, since: float) -> None:
    """A new token is about to be yielded: time so far is booked, the caller's time is not."""
    _add_time(stats, since)
    stats.new_tokens += 1
