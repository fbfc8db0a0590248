"""From importance scores and a request to what each layer keeps: which query heads, key/value groups and MLP
channels (or nothing: a dropped layer).

Grouped-query attention ties a key/value head to the query heads that read it, so a layer keeps
`kv` whole groups of `g` query heads each (the same g in every group, as the attention kernels need).
A global ratio is met greedily: every free layer offers its cheapest next removal (its least important
block of MLP channels, or one attention step, (kv, g) -> (kv-1, g) or (kv, g-1)), and the removal that
loses the least importance (relative to its layer) per parameter goes first, until the parameters removed
reach the ratio. How much of it attention gives is `attention_share` (request.py; MLP channels first by default). So layers end up with uneven
shapes, as their importance says. Whole layers (`depth`) go first, least
important (loss when skipped) first. Each layer keeps at least one head, one group and one channel block.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any

import numpy as np
from edgekit.exporters.prune.importance import Importance
from edgekit.exporters.prune.request import LayerRule, PruneRequest

from edgekit.errors import EdgekitError

CHANNEL_BLOCK = 32  # MLP channels go in blocks, so widths stay multiples of the quantizers' group sizes


@dataclass(frozen=True)
class Dims:
    """One layer's sizes, as far as pruning is concerned."""

    hidden: int
    head_dim: int
    heads: int
    kv_heads: int
    width: int
    bias: bool

    @property
    def group(self) -> int:
        return self.heads // self.kv_heads

    def attention_params(self, kv: int, g: int) -> int:
        heads = kv * g
        return self.hidden * self.head_dim * (2 * heads + 2 * kv) + (self.head_dim * (heads + 2 * kv) if self.bias
                                                                       else 0)

    def mlp_params(self, width: int) -> int:
        return 3 * self.hidden * width


@dataclass(frozen=True)
class LayerKeep:
    """What one source layer keeps (sorted indices into its own heads, groups and channels)."""

    source: int
    kv: tuple[int, ...]
    heads: tuple[int, ...]
    channels: tuple[int, ...]

    def record(self) -> dict[str, int]:
        return {"source": self.source, "heads": len(self.heads), "kv_heads": len(self.kv),
                "intermediate_size": len(self.channels)}


class AttentionScores:
    """S(kv, g): the most importance a layer keeps with kv groups of g heads (best heads per group, best groups)."""

    def __init__(self, heads: np.ndarray, kv: np.ndarray, dims: Dims):
        self.raw = heads
        self.by_group = np.sort(heads.reshape(dims.kv_heads, dims.group), axis=1)[:, ::-1]  # descending per group
        self.kv_scores = kv

    def relative(self, dims: Dims) -> AttentionScores:
        """The same scores over the layer's mean head score (see _relative)."""
        mean = float(np.mean(self.raw))
        scale = 1 / mean if mean > 0 else 0.0
        return AttentionScores(self.raw * scale, self.kv_scores * scale, dims)

    def group_scores(self, g: int) -> np.ndarray:
        return self.by_group[:, :g].sum(1) + self.kv_scores

    def kept(self, kv: int, g: int) -> float:
        return float(np.sort(self.group_scores(g))[::-1][:kv].sum())

    def indices(self, kv: int, g: int, raw_heads: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The kept groups and query heads (query head h reads group h // group size)."""
        group = self.by_group.shape[1]
        groups = sorted(np.argsort(-self.group_scores(g), kind="stable")[:kv].tolist())
        heads = []
        for k in groups:
            own = raw_heads[k * group:(k + 1) * group]
            heads += sorted((k * group + np.argsort(-own, kind="stable")[:g]).tolist())
        return tuple(groups), tuple(heads)


def select(importance: Importance, dims: list[Dims], layer_params: list[int], total: int,
           request: PruneRequest) -> list[LayerKeep | None]:
    """Per source layer, what it keeps (None: dropped), meeting `request` (module docstring)."""
    n = len(dims)
    pinned = request.pinned(n)
    att = [AttentionScores(importance.heads[i], importance.kv[i], d) for i, d in enumerate(dims)]
    state = {i: [d.kv_heads, d.group, d.width] for i, d in enumerate(dims)}
    dropped = {i for i, r in pinned.items() if r.drop}
    if len(dropped) == n:
        raise EdgekitError("the rules drop every layer; a model keeps at least one", request.where)
    for i, rule in pinned.items():
        if not rule.drop:
            state[i] = _pinned_state(i, rule, dims[i], att[i], request.where)

    def removed() -> int:
        kept = sum(layer_params[i] - (dims[i].attention_params(dims[i].kv_heads, dims[i].group)
                                      + dims[i].mlp_params(dims[i].width))
                   + dims[i].attention_params(*state[i][:2]) + dims[i].mlp_params(state[i][2])
                   for i in range(n) if i not in dropped)
        return sum(layer_params) - kept

    if request.ratio is not None:
        target = request.ratio * total
        if removed() > target + 0.01 * total:
            raise EdgekitError(f"the rules alone remove {removed() / total:.1%} of the parameters, more than "
                               f"ratio {request.ratio:g}", request.where)
        free = [i for i in range(n) if i not in pinned]
        if request.depth:
            dropped |= _drop_layers(importance, free, layer_params, request.depth * target, request.where, n - len(dropped))
        free = [i for i in free if i not in dropped]
        already = removed()
        _shrink(att, importance.channels, dims, state, free, (already, target), total, request)
    return [None if i in dropped else _keep(i, state[i], att[i], importance) for i in range(n)]


def _pinned_state(i: int, rule: LayerRule, d: Dims, att: AttentionScores, where: str) -> list[int]:
    if rule.keep:
        return [d.kv_heads, d.group, d.width]
    if rule.mlp is not None and rule.mlp > d.width:
        raise EdgekitError(f"layer {i}: mlp {rule.mlp} is more than its {d.width} channels", where)
    width = d.width if rule.mlp is None else rule.mlp
    heads = rule.heads if rule.heads is not None else None
    if heads is not None and heads > d.heads:
        raise EdgekitError(f"layer {i}: heads {heads} is more than its {d.heads} query heads", where)
    if rule.kv_heads is not None and rule.kv_heads > d.kv_heads:
        raise EdgekitError(f"layer {i}: kv_heads {rule.kv_heads} is more than its {d.kv_heads} key/value heads", where)
    if heads is None and rule.kv_heads is None:
        return [d.kv_heads, d.group, width]
    options = [(kv, g) for kv in range(1, d.kv_heads + 1) for g in range(1, d.group + 1)
               if (heads is None or kv * g == heads) and (rule.kv_heads is None or kv == rule.kv_heads)
               and (heads is not None or g == d.group)]
    if not options:
        raise EdgekitError(f"layer {i}: {heads} query heads cannot be kept as whole groups of equal size over "
                           f"{rule.kv_heads or f'at most {d.kv_heads}'} key/value heads (groups of at most "
                           f"{d.group})", where)
    kv, g = max(options, key=lambda o: att.kept(*o))
    return [kv, g, width]


def _drop_layers(importance: Importance, free: list[int], layer_params: list[int], budget: float, where: str,
                 remaining: int) -> set[int]:
    """The least important free layers whose parameters add up to about `budget` (at least one layer stays)."""
    assert importance.layers is not None
    order = sorted(free, key=lambda i: importance.layers[i])  # type: ignore[index]
    out: set[int] = set()
    spent = 0
    for i in order:
        if spent + layer_params[i] / 2 > budget:
            break
        if len(out) + 1 >= remaining:
            raise EdgekitError("depth would remove every layer; lower depth or ratio", where)
        out.add(i)
        spent += layer_params[i]
    return out


def _step(d: Dims) -> int:
    return CHANNEL_BLOCK if d.width % CHANNEL_BLOCK == 0 and d.width >= 2 * CHANNEL_BLOCK else 1


def _moves(kv: int, g: int) -> list[tuple[int, int]]:
    """The attention shapes one step smaller: a group fewer, or a head fewer in every group."""
    return [(kv - 1, g)] * (kv > 1) + [(kv, g - 1)] * (g > 1)


def _relative(scores: np.ndarray) -> np.ndarray:
    """Scores over their layer's mean: a layer's units are ranked against each other, and layers whose outputs are
    small in norm (early layers' contributions to the residual stream) are not emptied for it."""
    mean = float(np.mean(scores)) if len(scores) else 0.0
    return scores / mean if mean > 0 else np.zeros_like(scores)


def _shrink(att: list[AttentionScores], channel_scores: list[np.ndarray], dims: list[Dims],
            state: dict[int, list[int]], free: list[int], progress: tuple[int, float], total: int,
            request: PruneRequest) -> None:
    """Greedy removal over the free layers until the parameters removed (`progress`: already, target) reach the
    target. Attention gives `attention_share` of the fraction of its parameters that an even spread would take
    (their scores and the MLP's are not on one scale: a head's output and a channel's are different quantities),
    the MLP the rest; within a kind, the units with the lowest score relative to their own layer go first, so
    layers lose unevenly, as their scores say."""
    already, target = progress
    att_free = sum(dims[i].attention_params(*state[i][:2]) for i in free)
    mlp_free = sum(dims[i].mlp_params(state[i][2]) for i in free)
    if target <= already:
        return
    share = (target - already) / max(att_free + mlp_free, 1)
    rel_att = {i: att[i].relative(dims[i]) for i in free}
    rel_channels = {i: np.sort(_relative(channel_scores[i])) for i in free}

    def attention_step(i: int) -> tuple[float, int, tuple[int, int]] | None:
        """Layer i's cheapest attention step: (relative importance lost per parameter, parameters, new shape)."""
        d, (kv, g) = dims[i], state[i][:2]
        here = rel_att[i].kept(kv, g)
        options = [((here - rel_att[i].kept(*m)) / (d.attention_params(kv, g) - d.attention_params(*m)),
                    d.attention_params(kv, g) - d.attention_params(*m), m) for m in _moves(kv, g)]
        return min(options) if options else None

    def mlp_step(i: int) -> tuple[float, int, int] | None:
        d, width = dims[i], state[i][2]
        step = _step(d)
        if width - step < step:
            return None
        gone = d.width - width  # channels already removed, least important first
        return float(rel_channels[i][gone:gone + step].sum()) / d.mlp_params(step), d.mlp_params(step), width - step

    def apply(i: int, kind: str, shape: Any) -> None:
        if kind == "mlp":
            state[i][2] = shape
        else:
            state[i][:2] = list(shape)

    def greedy(kind: str, goal: float) -> float:
        """Remove `kind` units, cheapest first, until `goal` parameters are removed; returns what was removed."""
        step = mlp_step if kind == "mlp" else attention_step
        heap = [(*found[:2], i, found[2]) for i in free if (found := step(i)) is not None]
        heapq.heapify(heap)
        done = 0.0
        while done < goal and heap:
            _, params, i, shape = heapq.heappop(heap)
            apply(i, kind, shape)
            done += params
            found = step(i)
            if found is not None:
                heapq.heappush(heap, (*found[:2], i, found[2]))
        return done

    done = already + greedy("attention", request.attention_share * share * att_free)
    done += greedy("mlp", target - done)
    if done < target:  # MLP reached its floors: the rest from attention
        done += greedy("attention", target - done)
    if done < target:
        raise EdgekitError(f"ratio {request.ratio:g} cannot be met without removing every head or channel of a "
                           f"layer (at most {done / total:.1%} of the parameters can go with this plan)",
                           request.where)


def _keep(i: int, st: list[int], att: AttentionScores, importance: Importance) -> LayerKeep:
    kv, g, width = st
    groups, heads = att.indices(kv, g, importance.heads[i])
    channels = tuple(sorted(np.argsort(-importance.channels[i], kind="stable")[:width].tolist()))
    return LayerKeep(i, groups, heads, channels)


def layer_dims(model: Any) -> list[Dims]:
    """Each decoder layer's sizes, read from its modules."""
    from edgekit.exporters.prune.importance import decoder_layers, head_dim_of

    d = head_dim_of(model)
    out = []
    for layer in decoder_layers(model):
        a, m = layer.self_attn, layer.mlp
        out.append(Dims(hidden=a.q_proj.in_features, head_dim=d, heads=a.q_proj.out_features // d,
                        kv_heads=a.k_proj.out_features // d, width=m.down_proj.in_features,
                        bias=a.q_proj.bias is not None))
    return out
