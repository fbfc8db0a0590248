"""Which projections keep exact activations when the package runs in fast mode, from measured error.

Fast mode runs MatMulNBits at accuracy_level 4: each activation row is quantized to int8 in blocks of the
weight's group size (one scale, max|x| / 127, per block) before the product. Layers differ in how much that
costs: a projection whose input has outlier channels loses their neighbours' precision. On the calibration
text, with the quantized weights, this measures for each projection the relative output error
E = ‖(x − q8(x)) Wᵀ‖² / ‖x Wᵀ‖², per graph node (q, k, v and gate, up are fused into one node each).
Nodes whose error exceeds OUTLIER_RATIO times the median stay exact in fast mode, worst first, as long as
they hold at most EXACT_SHARE of the projection weights (exact nodes run the slower kernel).

Measured on SmolLM2-135M int4 g128 GPTQ (benchmarks/fast_mode.py, perplexity vs exact mode): int8 everywhere
+1.28% at 241 tok/s; ratio 2 (7 nodes exact) +1.20% at 229; ratio 1 (27 nodes, mostly q/k/v) +0.90% at 224.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from edgekit.exporters.quantize.sequential import torch_module

from edgekit.node_names import projection_node

OUTLIER_RATIO = 1.0
EXACT_SHARE = 0.2


def int8_blocks(x: Any, block: int) -> Any:
    """x with every block of `block` values along its last axis quantized to symmetric int8 and back."""
    import torch

    k = x.shape[-1]
    blocks = torch.nn.functional.pad(x, (0, -k % block)).reshape(*x.shape[:-1], -1, block)
    scale = blocks.abs().amax(-1, keepdim=True) / 127
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    return (torch.round(blocks / scale) * scale).reshape(*x.shape[:-1], -1)[..., :k]


def activation_errors(model: Any, windows: np.ndarray, blocks: dict[str, int]) -> dict[str, float]:
    """Relative output error of int8 activations per graph node, for the projections in `blocks` (canonical
    name -> group size), with the weights `model` holds, over int64 `windows` [n, L]."""
    import torch

    sums: dict[str, list[float]] = {}

    def hook(name: str) -> Any:
        def measure(module: Any, args: tuple, output: Any) -> None:
            x, w = args[0].double(), module.weight.double()
            err = float(((x - int8_blocks(x, blocks[name])) @ w.T).square().sum())
            total = sums.setdefault(projection_node(name), [0.0, 0.0])
            total[0] += err
            total[1] += float((x @ w.T).square().sum())
        return measure

    handles = [torch_module(model, name).register_forward_hook(hook(name)) for name in blocks]
    try:
        with torch.no_grad():
            for window in windows:
                model(torch.from_numpy(window[None]))
    finally:
        for handle in handles:
            handle.remove()
    return {node: err / max(out, 1e-30) for node, (err, out) in sums.items()}


def exact_nodes(errors: dict[str, float], sizes: dict[str, int]) -> list[str]:
    """The nodes to keep exact in fast mode (see the module docstring); sizes: weights per node."""
    median = float(np.median(list(errors.values())))
    budget, chosen = EXACT_SHARE * sum(sizes.values()), []
    for node in sorted(errors, key=errors.__getitem__, reverse=True):
        if errors[node] <= OUTLIER_RATIO * median or sizes[node] > budget:
            break
        chosen.append(node)
        budget -= sizes[node]
    return sorted(chosen)
