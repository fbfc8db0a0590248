"""Measured layer sensitivity: how much the model's output moves when one unit alone is quantized.

For `--target-bpw`: the float model runs the calibration windows once, keeping each decoder layer's
input and the final log-probabilities. Then, for every unit (a layer's q/k/v, o, gate/up or down) and
every candidate format, the unit's weights are replaced by their RTN-quantized values and only the
layers from that one on are rerun; the cost is the mean KL divergence of the output distribution from
the float model's, per token. Measuring the output (not the weight error) ranks layers by what they do
to the model: on SmolLM2-135M the spread between the most and least sensitive units is large.

Costs measured one unit at a time are added up by the allocation, which holds while every unit stays
moderately accurate. It fails for 2-bit units, whose damage compounds (SmolLM2-135M, GPTQ: uniform
int2 g128 perplexity 431635; a 3.5-bit mix with 2-bit units 67, worse than uniform int3 at 41), so the
allocation uses them only as a last resort (exporters.quantize.source).
"""

from __future__ import annotations

import numpy as np
from edgekit.exporters.quantize.allocation import Unit
from edgekit.exporters.quantize.rtn import quantize_rtn
from edgekit.exporters.quantize.sequential import (
    SHARED_INPUT_GROUPS,
    first_layer_inputs,
    run_layer,
    torch_module,
)

from edgekit.formats import GridFormat
from edgekit.progress import progress

MAX_TOKENS = 512  # 2 windows of 256: the ranking is stable at this size and each unit costs ~1 s per format


def _log_probs(model: object, hidden: object) -> object:
    import torch

    return torch.log_softmax(model.lm_head(model.model.norm(hidden)).float(), dim=-1)  # type: ignore[attr-defined]


def measure_units(model: object, windows: np.ndarray, units: list[tuple[str, ...]],
                  candidates: list[GridFormat]) -> list[Unit]:
    """Each unit with its [N, K] shapes and its KL cost per candidate format (RTN), on ≤ MAX_TOKENS tokens."""
    import torch

    windows = windows[: max(1, MAX_TOKENS // windows.shape[1])]
    layers = model.model.layers  # type: ignore[attr-defined]
    out: list[Unit] = []
    with torch.no_grad():
        hidden, kwargs = first_layer_inputs(model, windows)
        inputs = []
        for layer in layers:
            inputs.append(hidden)
            hidden = run_layer(layer, hidden, kwargs)
        reference = _log_probs(model, hidden)

        def kl_from(start: int) -> float:
            h = inputs[start]
            for layer in layers[start:]:
                h = run_layer(layer, h, kwargs)
            logp = _log_probs(model, h)
            return float((reference.exp() * (reference - logp)).sum(-1).mean())

        for names in progress(units, "measuring layer sensitivity"):
            modules = [torch_module(model, n) for n in names]
            originals = [m.weight.detach().clone() for m in modules]  # type: ignore[attr-defined]
            costs = {}
            for fmt in candidates:
                for m, w in zip(modules, originals):
                    m.weight.copy_(torch.from_numpy(quantize_rtn(w.numpy(), fmt).dequantize()))  # type: ignore[attr-defined]
                costs[fmt] = kl_from(int(names[0].split(".")[1]))
            for m, w in zip(modules, originals):
                m.weight.copy_(w)  # type: ignore[attr-defined]
            out.append(Unit(names, tuple(tuple(w.shape) for w in originals), costs))  # type: ignore[misc]
    return out


def layer_units(num_layers: int) -> list[tuple[str, ...]]:
    """The allocation units: per layer, the projections that read one input (they share a Hessian in GPTQ)."""
    return [tuple(f"layers.{i}.{n}" for n in group) for i in range(num_layers) for group in SHARED_INPUT_GROUPS]
