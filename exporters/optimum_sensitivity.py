"""`--target-bpw` for graphs built through optimum: each weight's measured cost, then the native allocation.

A graph from optimum has no layer structure edgekit knows, so the cost of a format for one weight is
measured on the whole torch model: that weight alone replaced by its RTN-quantized value, the model run on
the calibration inputs, the output compared with the float model's. A decoder's cost is the mean KL
divergence of its next-token distribution (as exporters.quantize.sensitivity measures native layers); an
encoder's is the mean 1 - cosine similarity of its mean-pooled token vectors. The allocation is the native
one (exporters.quantize.allocation), over one unit per weight.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from edgekit.exporters.graph_weights import WeightSite
from edgekit.exporters.quantize.allocation import Unit
from edgekit.exporters.quantize.rtn import quantize_rtn

from edgekit.formats import GridFormat
from edgekit.progress import progress

MAX_ROWS = 64  # calibration inputs per measurement: enough to rank weights, a fraction of a second per format


def set_weight(module: object, w: np.ndarray) -> None:
    """Write an [N, K] (out, in) weight into a torch module: nn.Linear stores it so, GPT-2's Conv1D transposed."""
    import torch

    param = module.weight  # type: ignore[attr-defined]
    value = torch.from_numpy(np.ascontiguousarray(w if tuple(param.shape) == w.shape else w.T))
    param.data.copy_(value)


def measure_sites(model: object, rows: list[np.ndarray], sites: list[WeightSite], candidates: list[GridFormat],
                  decoder: bool) -> list[Unit]:
    """One Unit per site (a torch module of `model`), with its cost per candidate format."""
    import torch

    output = _output_fn(model, rows[:MAX_ROWS], decoder)
    with torch.no_grad():
        reference = output()
        units = []
        for site in progress(sites, "measuring weight sensitivity"):
            module = model.get_submodule(site.name)  # type: ignore[attr-defined]
            original = module.weight.detach().clone()
            costs = {}
            for fmt in candidates:
                set_weight(module, quantize_rtn(site.weight, fmt).dequantize())
                costs[fmt] = _cost(reference, output(), decoder)
            module.weight.data.copy_(original)
            units.append(Unit((site.name,), (site.weight.shape,), costs))  # type: ignore[arg-type]
    return units


def _output_fn(model: object, rows: list[np.ndarray], decoder: bool) -> Callable[[], object]:
    """The model's output on `rows`, one padded batch: a decoder's log-probabilities, an encoder's mean-pooled
    token vectors."""
    import torch
    from edgekit.exporters.optimum_build import padded_batches

    ids, mask = padded_batches(rows, size=len(rows))[0]

    def run() -> object:
        if decoder:
            return torch.log_softmax(model(ids, attention_mask=mask).logits.float(), dim=-1)[mask.bool()]  # type: ignore[operator]
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state  # type: ignore[operator]
        m = mask[:, :, None].float()
        return (hidden * m).sum(1) / m.sum(1)

    return run


def _cost(reference: object, quantized: object, decoder: bool) -> float:
    import torch

    if decoder:
        return float((reference.exp() * (reference - quantized)).sum(-1).mean())  # type: ignore[union-attr, operator]
    return float((1 - torch.nn.functional.cosine_similarity(reference, quantized, dim=-1)).mean())  # type: ignore[arg-type]
