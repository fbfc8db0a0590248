"""Run GPTQ through a transformers model layer by layer, as the GPTQ paper does.

The calibration windows go through the model once up to the first decoder layer. Then, per layer:
forward hooks on its projections collect the Hessians of their inputs (XᵀX / T) in one pass, the
projections are quantized (q, k, v together, gate and up together: they read the same input), the
quantized weights are written back into the torch layer, and the layer runs again to give the next
layer its inputs. So layer i is calibrated on what the already-quantized layers < i produce
("sequential"); within a layer the Hessians come from one pass with its float weights (not GPTQ's
"true-sequential" variant, which would rerun the layer after each group). Last, the output layer
(a tied one is the embedding table) is quantized on the final normalized hidden states.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from edgekit.formats import BlockQuantWeight, GridFormat
from edgekit.progress import progress

# Projections that read one input, quantized as one stacked matrix with one Hessian.
SHARED_INPUT_GROUPS = (("q", "k", "v"), ("o",), ("gate", "up"), ("down",))

QuantizeFn = Callable[[GridFormat, np.ndarray, np.ndarray], BlockQuantWeight]


class InputHessian:
    """Accumulates XᵀX / T (float64 [K, K]) over every call of a module, X its input rows (those `keep()` selects,
    when given: a padded batch's real tokens). The sum stays a torch tensor until read: many small calls cost
    one in-place add each."""

    def __init__(self, keep: Callable[[], object] | None = None) -> None:
        self.sum: object | None = None
        self.rows = 0
        self.keep = keep

    def __call__(self, module: object, args: tuple, output: object) -> None:
        x = args[0].detach().reshape(-1, args[0].shape[-1])
        if self.keep is not None:
            x = x[self.keep()]
        x = x.double()
        xtx = x.T @ x
        self.sum = xtx if self.sum is None else self.sum.add_(xtx)  # type: ignore[attr-defined]
        self.rows += x.shape[0]

    @property
    def hessian(self) -> np.ndarray:
        assert self.sum is not None, "module was never called"
        return (self.sum / self.rows).numpy()  # type: ignore[operator]


class _Captured(Exception):
    pass


def first_layer_inputs(model: object, windows: np.ndarray) -> tuple[object, dict]:
    """The hidden states entering decoder layer 0 and the keyword arguments the model passes every layer
    (rotary embeddings, mask, positions), captured by stopping the forward pass there."""
    import torch

    captured: dict[str, object] = {}

    def stop(module: object, args: tuple, kwargs: dict) -> None:
        captured["hidden"], captured["kwargs"] = args[0], kwargs
        raise _Captured

    handle = model.model.layers[0].register_forward_pre_hook(stop, with_kwargs=True)  # type: ignore[attr-defined]
    try:
        model(torch.from_numpy(windows), use_cache=False)  # type: ignore[operator]
    except _Captured:
        pass
    finally:
        handle.remove()
    return captured["hidden"], captured["kwargs"]  # type: ignore[return-value]


def run_layer(layer: object, hidden: object, kwargs: dict) -> object:
    out = layer(hidden, **kwargs)  # type: ignore[operator]
    return out[0] if isinstance(out, tuple) else out


def _set_weight(module: object, w: BlockQuantWeight | np.ndarray) -> None:
    import torch

    value = w.dequantize() if isinstance(w, BlockQuantWeight) else np.asarray(w, np.float32)
    module.weight.data.copy_(torch.from_numpy(value))  # type: ignore[attr-defined]


def torch_module(model: object, name: str) -> object:
    """The torch module holding canonical weight `name` (`embed`, `lm_head`, `norm`, `layers.{i}.{kind}`), found
    through the architecture's name table (exporters.arch)."""
    modules = getattr(model, "_edgekit_modules", None)
    if modules is None:
        from edgekit.exporters.arch import ARCHITECTURES

        arch = ARCHITECTURES[model.config.model_type]  # type: ignore[attr-defined]
        n_layers = model.config.num_hidden_layers  # type: ignore[attr-defined]
        modules = {}
        for param, _ in model.named_parameters(remove_duplicate=False):  # type: ignore[attr-defined]
            canonical = arch.canonical_from_hf(param, n_layers)
            if canonical is not None:
                modules[canonical] = model.get_submodule(param.rpartition(".")[0])  # type: ignore[attr-defined]
        model._edgekit_modules = modules  # type: ignore[attr-defined]
    return modules[name]


def write_fake_quantized(model: object, weights: dict[str, BlockQuantWeight | np.ndarray]) -> None:
    """Put the dequantized weights (and float ones, e.g. tuned norms) into a transformers model: the float model
    that computes what the package computes (tests and quality reports compare against it)."""
    import torch

    with torch.no_grad():
        for name, w in weights.items():
            _set_weight(torch_module(model, name), w)


def gptq_model(model: object, windows: np.ndarray, formats: dict[str, GridFormat], quantize: QuantizeFn,
               ) -> dict[str, BlockQuantWeight]:
    """Quantize every projection of `model` (a transformers causal LM, float32, modified in place: it ends up
    holding the fake-quantized weights) in its format from `formats` (canonical name -> format) and, when
    `formats` names it, its output layer (`embed` for a tied one, `lm_head` for a separate one).
    windows: int64 [n, L]. Returns BlockQuantWeights under canonical names."""
    import torch

    out: dict[str, BlockQuantWeight] = {}
    layers = model.model.layers  # type: ignore[attr-defined]
    with torch.no_grad():
        hidden, kwargs = first_layer_inputs(model, windows)
        for i in progress(range(len(layers)), "GPTQ layers", total=len(layers)):
            layer = layers[i]
            modules = {name: torch_module(model, f"layers.{i}.{name}") for group in SHARED_INPUT_GROUPS
                       for name in group}
            hooks = {group: InputHessian() for group in SHARED_INPUT_GROUPS}
            handles = [modules[group[0]].register_forward_hook(h) for group, h in hooks.items()]
            try:
                run_layer(layer, hidden, kwargs)
            finally:
                for handle in handles:
                    handle.remove()
            for group, h in hooks.items():
                # Rows are independent in GPTQ given H: tensors of one format are stacked into one call.
                for fmt in dict.fromkeys(formats[f"layers.{i}.{name}"] for name in group):
                    names = [name for name in group if formats[f"layers.{i}.{name}"] == fmt]
                    weights = [modules[name].weight.detach().numpy() for name in names]
                    stacked = quantize(fmt, np.concatenate(weights), h.hessian)
                    start = 0
                    for name, w in zip(names, weights):
                        part = stacked.take_rows(np.arange(start, start + w.shape[0]))
                        start += w.shape[0]
                        out[f"layers.{i}.{name}"] = part
                        _set_weight(modules[name], part)
            hidden = run_layer(layer, hidden, kwargs)
        tied = model.lm_head.weight is model.model.embed_tokens.weight  # type: ignore[attr-defined]
        head = "embed" if tied else "lm_head"
        if head in formats:
            head_hessian = InputHessian()
            head_hessian(None, (model.model.norm(hidden),), None)  # type: ignore[attr-defined]
            out[head] = quantize(formats[head], model.lm_head.weight.detach().numpy(), head_hessian.hessian)  # type: ignore[attr-defined]
            _set_weight(model.lm_head, out[head])  # type: ignore[attr-defined]
    return out
