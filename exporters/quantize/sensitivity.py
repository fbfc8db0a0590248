"""Measured layer sensitivity: how much the model's output moves when one unit alone is quantized.

For `--target-bpw`: the float model runs the calibration windows once, keeping the final
log-probabilities. Then every unit (a layer's q/k/v, o, gate/up or down) is set to the baseline
format (RTN), the one whose uniform use comes closest to the budget, and the layer inputs of this
baseline model are kept. For every unit and every candidate format, the unit's weights are replaced
by their RTN-quantized values and only the layers from that one on are rerun; the cost is the mean
KL divergence of the output distribution from the float model's, per token.

Measuring around the baseline, not around the float model, matters: costs are added up by the
allocation, and the damage of a low-bit unit grows with the noise of the others. On SmolLM2-135M at a
3.5-bit budget, costs measured one unit at a time in the float model led the allocation to 2-bit units
whose sum was far worse than predicted (perplexity 67 against 41 for uniform int3, both GPTQ).
Measuring the output (not the weight error) ranks layers by what they do to the model.
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
from edgekit.exporters.quantize.spec import WeightFormat

from edgekit.progress import progress

MAX_TOKENS = 512  # 2 windows of 256: the ranking is stable at this size and each unit costs ~1 s per format


def _log_probs(model: object, hidden: object) -> object:
    import torch

    return torch.log_softmax(model.lm_head(model.model.norm(hidden)).float(), dim=-1)  # type: ignore[attr-defined]


def _set(modules: list[object], weights: list[object], fmt: WeightFormat | None) -> None:
    """Modules' weights: `weights` as they are (fmt None) or RTN-quantized to `fmt`."""
    import torch

    for m, w in zip(modules, weights):
        value = w if fmt is None else torch.from_numpy(quantize_rtn(w.numpy(), fmt).dequantize())  # type: ignore[attr-defined]
        m.weight.copy_(value)  # type: ignore[attr-defined]


def measure_units(model: object, windows: np.ndarray, units: list[tuple[str, ...]],
                  candidates: list[WeightFormat], baseline: WeightFormat) -> list[Unit]:
    """Each unit with its [N, K] shapes and its KL cost per candidate format (RTN) with every other unit at
    `baseline`, on ≤ MAX_TOKENS tokens. The model's weights are as they were afterwards."""
    import torch

    windows = windows[: max(1, MAX_TOKENS // windows.shape[1])]
    layers = model.model.layers  # type: ignore[attr-defined]
    modules = {names: [torch_module(model, n) for n in names] for names in units}
    originals = {names: [m.weight.detach().clone() for m in mods] for names, mods in modules.items()}  # type: ignore[attr-defined]
    out: list[Unit] = []
    with torch.no_grad():
        embedded, kwargs = first_layer_inputs(model, windows)
        hidden = embedded
        for layer in layers:
            hidden = run_layer(layer, hidden, kwargs)
        reference = _log_probs(model, hidden)
        try:
            for names in units:
                _set(modules[names], originals[names], baseline)
            hidden, inputs = embedded, []
            for layer in layers:
                inputs.append(hidden)
                hidden = run_layer(layer, hidden, kwargs)

            def kl_from(start: int) -> float:
                h = inputs[start]
                for layer in layers[start:]:
                    h = run_layer(layer, h, kwargs)
                logp = _log_probs(model, h)
                return float((reference.exp() * (reference - logp)).sum(-1).mean())

            for names in progress(units, "measuring layer sensitivity"):
                costs = {}
                for fmt in candidates:
                    _set(modules[names], originals[names], fmt)
                    costs[fmt] = kl_from(int(names[0].split(".")[1]))
                _set(modules[names], originals[names], baseline)
                shapes = tuple(tuple(w.shape) for w in originals[names])
                out.append(Unit(names, shapes, costs))  # type: ignore[arg-type]
        finally:
            for names in units:
                _set(modules[names], originals[names], None)
    return out


def layer_units(num_layers: int) -> list[tuple[str, ...]]:
    """The allocation units: per layer, the projections that read one input (they share a Hessian in GPTQ)."""
    return [tuple(f"layers.{i}.{n}" for n in group) for i in range(num_layers) for group in SHARED_INPUT_GROUPS]
