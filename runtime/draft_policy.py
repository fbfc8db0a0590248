"""How many drafted tokens to verify: the length that buys the most new tokens per second.

A verify pass of M tokens does not cost what one token costs: on a 2-core CPU, onnxruntime's 4-bit
MatMulNBits costs ~3x a one-token pass from M = 2 on, float32 weights ~2-2.7x (measured on
SmolLM2-135M, docs/cli.md). A draft is only worth verifying when enough of it will be accepted.

`CostAwareLength` measures both sides as the generation runs:
- pass cost: seconds per forward pass of M tokens, a running median per M, kept across generations
  (a property of the model and the machine); a length never measured is estimated from the nearest
  measured ones, optimistically (as one-token cost) until then, so it gets tried;
- acceptance: per draft source (the n-gram drafter's match length; one source for a draft model),
  the chance a drafted token is accepted given the ones before it were, estimated per generation from
  an optimistic prior worth two trials at 0.8, so that every source gets tried and a poor one is
  dropped after a few rejections.
With per-token acceptance a, verifying k tokens yields (1 - a^(k+1)) / (1 - a) new tokens on average
(the target's own token included) for the cost of a (k + 1)-token pass, plus, for a draft model, k of its
own passes (measured by the drafter); the policy picks the k with the best ratio, and k = 0 (a plain step,
the draft model not run) when no draft beats plain decoding. Greedy output does not
depend on k: only the speed does.

Pass costs (`PassCosts`) are one table per loaded model, shared by concurrent generations behind a lock;
acceptance is per generation (one `CostAwareLength` each).
"""

from __future__ import annotations

import statistics
import threading
from collections import defaultdict, deque

SAMPLES = 9  # pass timings kept per length: a running median shrugs off a preempted pass
PRIOR_ACCEPTED, PRIOR_TRIALS = 1.6, 2.0


class PassCosts:
    """Seconds per forward pass of M tokens: a running median per M. Thread-safe (one per model, shared)."""

    def __init__(self) -> None:
        self._seconds: dict[int, deque[float]] = defaultdict(lambda: deque(maxlen=SAMPLES))
        self._lock = threading.Lock()

    def record(self, tokens: int, seconds: float) -> None:
        with self._lock:
            self._seconds[tokens].append(seconds)

    def costs(self, longest: int) -> list[float | None]:
        """cost(m) for m = 1..longest (index m - 1): measured, else the nearest shorter measured length's
        (optimistic, so that the length gets tried and measured); all None before any pass was timed."""
        with self._lock:
            known = {m: statistics.median(s) for m, s in self._seconds.items() if s}
        if not known:
            return [None] * longest
        out: list[float | None] = []
        for m in range(1, longest + 1):
            shorter = [n for n in known if n <= m]
            out.append(known[m] if m in known else known[max(shorter)] if shorter else known[min(known)])
        return out


class CostAwareLength:
    """The draft length policy of one generation: its own acceptance counts over shared `costs`
    (a fresh table when none is given)."""

    def __init__(self, costs: PassCosts | None = None) -> None:
        self.costs = costs if costs is not None else PassCosts()
        self._accepted: dict[object, int] = defaultdict(int)
        self._trials: dict[object, int] = defaultdict(int)

    def start(self) -> None:
        """A new generation: acceptance starts again from the prior (it depends on the text); costs stay."""
        self._accepted.clear()
        self._trials.clear()

    def record_pass(self, tokens: int, seconds: float) -> None:
        self.costs.record(tokens, seconds)

    def record_draft(self, source: object, drafted: int, accepted: int) -> None:
        """Acceptance stops at the first rejection: `accepted` successes out of accepted + (1 if one was rejected)."""
        self._accepted[source] += accepted
        self._trials[source] += accepted + (accepted < drafted)

    def acceptance(self, source: object) -> float:
        return (self._accepted[source] + PRIOR_ACCEPTED) / (self._trials[source] + PRIOR_TRIALS)

    def cost(self, tokens: int) -> float | None:
        """Seconds for a pass of `tokens` tokens (see PassCosts.costs); None before any pass was timed."""
        return self.costs.costs(tokens)[-1]

    def length(self, source: object, available: int, token_cost: float = 0.0) -> int:
        """The number of drafted tokens (0..available) to verify in the next pass; `token_cost`: seconds each
        drafted token still costs to make (a draft model not yet run), counted against it."""
        if not available:
            return 0
        costs = self.costs.costs(available + 1)
        if costs[0] is None:
            return available
        a = min(self.acceptance(source), 0.999)
        best_k, best_rate = 0, 1.0 / costs[0]
        for k in range(1, available + 1):
            rate = (1 - a ** (k + 1)) / (1 - a) / (costs[k] + k * token_cost)  # type: ignore[operator]
            if rate > best_rate:
                best_k, best_rate = k, rate
        return best_k
