"""The quantize stage of `edgekit export`: a source in, a source whose linear weights are quantized out.

`quantize_source` checks everything it can before any slow work (format, group size against every
layer's width, the calibration file), then quantizes: RTN on the source's own weights, or GPTQ with
the torch model run on calibration text (exporters.quantize.sequential). Weights arriving low-bit (a
GGUF) are dequantized to float32 first, so any source can be re-quantized. The result is a
QuantizedSource: the same WeightSource interface, so the graph builder needs no change.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from edgekit.exporters.quantize.calibration import calibration_windows, file_windows
from edgekit.exporters.quantize.rtn import quantize_rtn
from edgekit.exporters.quantize.spec import QuantConfig, WeightFormat
from edgekit.exporters.weights import LINEAR_NAMES, Weight
from tokenizers import Tokenizer

from edgekit.formats import BlockQuantWeight
from edgekit.progress import progress
from edgekit.recipe import Recipe


class QuantizedSource:
    """`inner` with some weights replaced by quantized ones; everything else (norms, biases, config) as it was."""

    def __init__(self, inner: Any, quantized: dict[str, BlockQuantWeight], recipe: Recipe):
        self.inner = inner
        self.quantized = quantized
        self.recipe = recipe
        self.config = inner.config
        self.path = inner.path
        self.kind = inner.kind

    def has(self, name: str) -> bool:
        return self.inner.has(name)

    def get(self, name: str) -> Weight:
        return self.quantized[name] if name in self.quantized else self.inner.get(name)


def float_weight(source: Any, name: str) -> np.ndarray:
    """A source's weight as float32 [N, K], dequantized when it arrived block-quantized."""
    w = source.get(name)
    return w.dequantize() if isinstance(w, BlockQuantWeight) else np.asarray(w, np.float32)


def planned_formats(source: Any, fmt: WeightFormat) -> dict[str, WeightFormat]:
    """Canonical name -> format for every quantized tensor: projections in `fmt`, the embedding and a separate
    output layer in fmt.for_embedding()."""
    plan = {"embed": fmt.for_embedding()}
    if source.has("lm_head"):
        plan["lm_head"] = fmt.for_embedding()
    for i in range(source.config.num_layers):
        for n in LINEAR_NAMES:
            plan[f"layers.{i}.{n}"] = fmt
    return plan


def check_widths(source: Any, plan: dict[str, WeightFormat]) -> None:
    """Every tensor's row size K must hold whole groups: fail on the first that does not, before any work."""
    c = source.config
    widths = {"q": c.hidden_size, "k": c.hidden_size, "v": c.hidden_size, "gate": c.hidden_size,
              "up": c.hidden_size, "o": c.num_heads * c.head_dim, "embed": c.hidden_size, "lm_head": c.hidden_size}
    for name, fmt in plan.items():
        kind = name.rsplit(".", 1)[-1]
        if kind == "down":
            i = int(name.split(".")[1])
            k = c.layer_intermediate_sizes[i] if c.layer_intermediate_sizes else c.intermediate_size
        else:
            k = widths[kind]
        fmt.check_width(name, k)


def _load_torch_model(source: Any) -> Any:
    from edgekit.exporters.reference import TorchReference

    return TorchReference(str(source.path), "cpu").model


def quantize_source(source: Any, config: QuantConfig, tokenizer: Tokenizer) -> QuantizedSource:
    """Stage 1b of export: `source`'s projections, embedding and output layer quantized as `config` says."""
    plan = planned_formats(source, config.weights)
    check_widths(source, plan)
    calibration = "none"
    quantized: dict[str, BlockQuantWeight] = {}
    if config.method == "gptq":
        cal = config.calibration
        windows = file_windows(str(cal.file), tokenizer, cal) if cal.file is not None else None
        model = _load_torch_model(source)
        if windows is None:
            windows = calibration_windows(model, tokenizer, cal)
        calibration = (f"{Path(cal.file).name}" if cal.file is not None else "self-generated") + \
            f", {windows.size} tokens"
        from edgekit.exporters.quantize.gptq import gptq_quantize  # torch: only for the data-aware method
        from edgekit.exporters.quantize.sequential import gptq_model

        def gptq(fmt: WeightFormat, name: str, w: np.ndarray, h: np.ndarray) -> BlockQuantWeight:
            return gptq_quantize(w, h, fmt, act_order=config.act_order, damp=config.damp)

        quantized = gptq_model(model, windows, partial(gptq, config.weights),
                               partial(gptq, config.weights.for_embedding()))
    remaining = [name for name in plan if name not in quantized]  # RTN: everything, or GPTQ's untied embedding
    for name in progress(remaining, "quantizing (rtn)"):
        quantized[name] = quantize_rtn(float_weight(source, name), plan[name])
    fmt = config.weights
    recipe = Recipe(method=config.method, bits=fmt.bits, group_size=fmt.group_size, symmetric=fmt.symmetric,
                    act_order=config.act_order and config.method == "gptq", calibration=calibration)
    return QuantizedSource(source, quantized, recipe)
