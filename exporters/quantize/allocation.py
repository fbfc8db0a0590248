"""Bits per layer under a budget: `--target-bpw` turns measured sensitivities into a plan.

Each unit (the projections of one layer that read one input: q/k/v, o, gate/up, down) has a measured
cost for each candidate format: the KL divergence the model's output gains when only that unit is
quantized so (exporters.quantize.sensitivity). Costs are taken as additive, the usual assumption of
bit-allocation methods (HAWQ, and the layer-wise orderings they follow). The allocation starts with
every unit at its widest format and repeatedly narrows the unit whose next step down costs the least
KL per bit saved, until the budget holds; then it widens units again, best KL gained per bit spent,
while they still fit. Its bits per weight count what the package stores: packed codes plus one
float16 scale per group and, for asymmetric formats, one float16 offset (BlockFormat.stored_bits).
"""

from __future__ import annotations

from dataclasses import dataclass

from edgekit.errors import EdgekitError
from edgekit.formats import GridFormat


@dataclass(frozen=True)
class Unit:
    """Tensors quantized alike, their [N, K] shapes, and the measured cost (KL) of each candidate format."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, int], ...]
    costs: dict[GridFormat, float]

    @property
    def weights(self) -> int:
        return sum(n * k for n, k in self.shapes)

    def bits(self, fmt: GridFormat) -> int:
        return sum(fmt.stored_bits(n, k) for n, k in self.shapes)


def _frontier(unit: Unit) -> list[GridFormat]:
    """The unit's formats by stored bits, narrowest first, without any that a narrower one matches or beats."""
    ladder: list[GridFormat] = []
    for fmt in sorted(unit.costs, key=lambda f: (unit.bits(f), unit.costs[f])):
        if not ladder or (unit.costs[fmt] < unit.costs[ladder[-1]] and unit.bits(fmt) > unit.bits(ladder[-1])):
            ladder.append(fmt)
    return ladder


def allocate(units: list[Unit], target_bpw: float, fixed_bits: int = 0, fixed_weights: int = 0,
             ) -> dict[tuple[str, ...], GridFormat]:
    """The format of each unit so that all bits (units + `fixed_bits` over `fixed_weights` pinned weights) stay
    within target_bpw per weight at least total cost. Candidates: each unit's `costs` keys (those that cost less
than every narrower one: formats that cost more bits and buy nothing are dropped)."""
    total_weights = fixed_weights + sum(u.weights for u in units)
    budget = target_bpw * total_weights - fixed_bits
    ladders = [_frontier(u) for u in units]  # narrowest first
    floor = sum(u.bits(ladder[0]) for u, ladder in zip(units, ladders))
    if floor > budget:
        lowest = (floor + fixed_bits) / total_weights
        raise EdgekitError(f"--target-bpw {target_bpw}: the narrowest formats already take {lowest:.2f} bits per "
                           "weight")
    level = [len(ladder) - 1 for ladder in ladders]
    used = sum(u.bits(ladder[-1]) for u, ladder in zip(units, ladders))

    def step(i: int, delta: int) -> tuple[float, int]:
        """(cost change, bits change) of moving unit i `delta` rungs."""
        u, ladder = units[i], ladders[i]
        a, b = ladder[level[i]], ladder[level[i] + delta]
        return u.costs[b] - u.costs[a], u.bits(b) - u.bits(a)

    while used > budget:
        i = min((i for i in range(len(units)) if level[i] > 0),
                key=lambda i: step(i, -1)[0] / max(-step(i, -1)[1], 1))
        used += step(i, -1)[1]
        level[i] -= 1
    while True:
        fits = [i for i in range(len(units)) if level[i] < len(ladders[i]) - 1 and used + step(i, 1)[1] <= budget]
        if not fits:
            break
        i = min(fits, key=lambda i: step(i, 1)[0] / max(step(i, 1)[1], 1))
        if step(i, 1)[0] >= 0:
            break
        used += step(i, 1)[1]
        level[i] += 1
    return {u.names: ladder[lv] for u, ladder, lv in zip(units, ladders, level)}
