"""The quantize stage of `edgekit export`: a source in, a source whose linear weights are quantized out.

`quantize_source` checks everything it can before any slow work (format, group size against every
layer's width, the calibration file), then quantizes: RTN on the source's own weights, or GPTQ with
the torch model run on calibration text (exporters.quantize.sequential). Weights arriving low-bit (a
GGUF) are dequantized to float32 first, so any source can be re-quantized. The result is a
QuantizedSource: the same WeightSource interface, so the graph builder needs no change.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from edgekit.exporters.quantize.allocation import allocate
from edgekit.exporters.quantize.calibration import calibration_windows, file_windows
from edgekit.exporters.quantize.plan import load_plan
from edgekit.exporters.quantize.rtn import quantize_rtn
from edgekit.exporters.quantize.spec import HEAD_BITS, QuantConfig, embedding_format
from edgekit.exporters.weights import LINEAR_NAMES, Weight
from tokenizers import Tokenizer

from edgekit.errors import EdgekitError
from edgekit.formats import BlockQuantWeight, GridFormat
from edgekit.node_names import projection_node
from edgekit.progress import progress
from edgekit.recipe import Recipe


class QuantizedSource:
    """`inner` with some weights replaced by quantized ones; everything else (norms, biases, config) as it was."""

    def __init__(self, inner: Any, quantized: dict[str, BlockQuantWeight], recipe: Recipe,
                 floats: dict[str, np.ndarray] | None = None):
        self.inner = inner
        self.quantized = quantized
        self.floats = floats or {}  # float tensors replaced by the export (tuned norm weights)
        self.recipe = recipe
        self.config = inner.config
        self.arch = inner.arch
        self.path = inner.path
        self.kind = inner.kind
        self.pruning = getattr(inner, "pruning", None)

    def has(self, name: str) -> bool:
        return self.inner.has(name)

    def get(self, name: str) -> Weight:
        if name in self.quantized:
            return self.quantized[name]
        return self.floats[name] if name in self.floats else self.inner.get(name)


def float_weight(source: Any, name: str) -> np.ndarray:
    """A source's weight as float32 [N, K], dequantized when it arrived block-quantized."""
    w = source.get(name)
    return w.dequantize() if isinstance(w, BlockQuantWeight) else np.asarray(w, np.float32)


def tensor_names(source: Any) -> list[str]:
    """Canonical names of every tensor a quantized export quantizes: the embedding, a separate output layer,
    and every projection."""
    head = ["embed", "lm_head"] if source.has("lm_head") else ["embed"]
    return head + [f"layers.{i}.{n}" for i in range(source.config.num_layers) for n in LINEAR_NAMES]


def planned_formats(source: Any, config: QuantConfig) -> tuple[dict[str, GridFormat], set[str]]:
    """The formats --weights and --plan give (name -> format), and the names the plan's rules pinned.

    Projections take --weights (or the plan's `default:`), the embedding and output layer its 8-bit
    counterpart; rules override both. Projections left without a format are for --target-bpw to choose."""
    names = tensor_names(source)
    rules = load_plan(config.plan, config.group_size) if config.plan is not None else None
    default = config.weights or (rules.default if rules else None)
    head = embedding_format(default or GridFormat(HEAD_BITS, config.group_size, config.symmetric))
    formats = {name: head if not name.startswith("layers.") else default for name in names}
    pinned = rules.matched(names) if rules else {}
    formats.update(pinned)
    return {n: f for n, f in formats.items() if f is not None}, set(pinned)


def check_widths(source: Any, plan: dict[str, GridFormat]) -> None:
    """Every tensor's row size K must hold at least one group: fail on the first that does not, before any work."""
    c = source.config
    for name, fmt in plan.items():
        kind = name.rsplit(".", 1)[-1]
        i = int(name.split(".")[1]) if name.startswith("layers.") else 0
        k = {"down": c.intermediate_size_of(i), "o": c.heads_of(i) * c.head_dim}.get(kind, c.hidden_size)
        fmt.check_width(name, k)


def _load_torch_model(source: Any) -> Any:
    from edgekit.exporters.reference import TorchReference

    return TorchReference(str(source.path), "cpu").model


def _fill_by_budget(model: Any, windows: np.ndarray, source: Any, formats: dict[str, GridFormat],
                    pinned: set[str], config: QuantConfig) -> dict[str, GridFormat]:
    """--target-bpw: formats for the projections that no rule pinned, from measured sensitivity. 2-bit formats
    only when the budget cannot be met with 3 bits and more."""
    from edgekit.exporters.quantize.sensitivity import layer_units, measure_units

    free = [u for u in layer_units(source.config.num_layers) if not pinned & set(u)]
    fixed = [n for n in formats if n.startswith("layers.") and n in pinned]
    shapes = {n: float_weight(source, n).shape for n in fixed}
    fixed_bits, fixed_weights = sum(formats[n].stored_bits(*shapes[n]) for n in fixed), sum(
        a * b for a, b in shapes.values())
    c = source.config
    narrowest = min(c.hidden_size, *(min(c.heads_of(i) * c.head_dim, c.intermediate_size_of(i))
                                     for i in range(c.num_layers)))
    units = measure_units(model, windows, free, [f for f in config.candidates() if f.group_size <= narrowest])
    try:
        chosen = allocate(units, config.target_bpw, fixed_bits, fixed_weights)
    except EdgekitError:
        units = [replace(u, costs={**u.costs, **c.costs}) for u, c in
                 zip(units, measure_units(model, windows, free, config.last_resort()))]
        chosen = allocate(units, config.target_bpw, fixed_bits, fixed_weights)
    return {**formats, **{name: fmt for names, fmt in chosen.items() for name in names}}


def bits_per_weight(quantized: dict[str, BlockQuantWeight], names: list[str]) -> float:
    """What the package stores for `names` (codes of whole groups, float16 scales and offsets), per weight."""
    weights = [quantized[n] for n in names]
    bits = sum(w.format.stored_bits(*w.shape) for w in weights)
    return bits / sum(w.shape[0] * w.shape[1] for w in weights)


def _calibration(config: QuantConfig, tokenizer: Tokenizer, model: Any) -> tuple[np.ndarray, str]:
    cal = config.calibration
    if cal.file is not None:
        windows = file_windows(str(cal.file), tokenizer, cal)
        return windows, f"{Path(cal.file).name}, {windows.size} tokens"
    windows = calibration_windows(model, tokenizer, cal)
    return windows, f"self-generated, {windows.size} tokens"


def _fast_exact_nodes(model: Any, windows: np.ndarray, quantized: dict[str, BlockQuantWeight],
                      norms: dict[str, np.ndarray]) -> list[str]:
    """Fast mode's exact nodes, measured on the calibration text with the weights the package stores."""
    from edgekit.exporters.quantize.fast_mode import activation_errors, exact_nodes
    from edgekit.exporters.quantize.sequential import write_fake_quantized

    write_fake_quantized(model, {**quantized, **norms})
    projections = {n: w for n, w in quantized.items() if n.startswith("layers.")}
    sizes: dict[str, int] = {}
    for name, w in projections.items():
        sizes[projection_node(name)] = sizes.get(projection_node(name), 0) + w.shape[0] * w.shape[1]
    errors = activation_errors(model, windows, {n: w.block_size for n, w in projections.items()})
    return exact_nodes(errors, sizes)


def quantize_source(source: Any, config: QuantConfig, tokenizer: Tokenizer) -> QuantizedSource:
    """Stage 1b of export: `source`'s projections, embedding and output layer quantized as `config` says."""
    formats, pinned = planned_formats(source, config)
    unplanned = [n for n in tensor_names(source) if n not in formats]
    if unplanned and config.target_bpw is None:
        raise EdgekitError(f"tensor {unplanned[0]} has no format: give --weights, a plan `default:` or --target-bpw",
                           config.plan)
    check_widths(source, {**{n: config.candidates()[0] for n in unplanned}, **formats})
    if config.calibration.file is not None:
        file_windows(str(config.calibration.file), tokenizer, config.calibration)  # fail before any slow work
    calibration = "none"
    quantized: dict[str, BlockQuantWeight] = {}
    if config.data_aware:
        model = _load_torch_model(source)
        windows, calibration = _calibration(config, tokenizer, model)
        if config.tune_steps:
            from edgekit.exporters.quantize.tune import float_teacher

            teacher = float_teacher(model)  # before GPTQ quantizes `model` in place
        if config.target_bpw is not None:
            formats = _fill_by_budget(model, windows, source, formats, pinned, config)
        if config.method == "gptq":
            from edgekit.exporters.quantize.gptq import gptq_quantize  # torch: only for the data-aware method
            from edgekit.exporters.quantize.sequential import gptq_model

            def gptq(fmt: GridFormat, w: np.ndarray, h: np.ndarray) -> BlockQuantWeight:
                return gptq_quantize(w, h, fmt, act_order=config.act_order, damp=config.damp)

            quantized = gptq_model(model, windows, formats, gptq)
    remaining = [name for name in formats if name not in quantized]  # RTN: everything, or GPTQ's untied embedding
    for name in progress(remaining, "quantizing (rtn)"):
        quantized[name] = quantize_rtn(float_weight(source, name), formats[name])
    tuned_norms: dict[str, np.ndarray] = {}
    if config.tune_steps:
        from edgekit.exporters.quantize.sequential import write_fake_quantized
        from edgekit.exporters.quantize.tune import tune_scales

        write_fake_quantized(model, quantized)
        tuned, tuned_norms = tune_scales(teacher, model, quantized, windows, config.tune_steps)
        quantized.update(tuned)
    fast_exact = _fast_exact_nodes(model, windows, quantized, tuned_norms) if config.data_aware else []
    projections = [n for n in formats if n.startswith("layers.")]
    uniform = {formats[n] for n in projections}
    fmt = next(iter(uniform)) if len(uniform) == 1 else None
    plan = ", ".join(p for p in (config.plan and f"plan {Path(config.plan).name}",
                                 config.target_bpw and f"target {config.target_bpw} bpw by measured sensitivity") if p)
    recipe = Recipe(method=config.method, bits=fmt.bits if fmt else None, group_size=fmt.group_size if fmt else None,
                    symmetric=fmt.symmetric if fmt else config.symmetric,
                    act_order=config.act_order and config.method == "gptq", calibration=calibration,
                    tune_steps=config.tune_steps, fast_exact=fast_exact,
                    plan=plan or None, bits_per_weight=round(bits_per_weight(quantized, projections), 4),
                    bits_per_weight_all=round(bits_per_weight(quantized, list(formats)), 4))
    return QuantizedSource(source, quantized, recipe, tuned_norms)
