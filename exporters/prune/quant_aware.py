"""Quantization-aware recovery: while recovery distils, every projection of the pruned model is seen through
the round-to-nearest quantization the export will apply, with straight-through gradients (the rounding is
treated as the identity backwards), so that recovery repairs the quantized model instead of the float one it is
later rounded from.

Why: a pruned model has less slack, so 4-bit rounding after a float recovery costs it far more than it costs
the unpruned model. Measured on SmolLM2-135M at 25% fewer parameters, 150 recovery steps, int4 g32 packages:
perplexity 50.1 and KL to the unpruned model 1.15 after this recovery (RTN), against 53.9 and 1.20 (GPTQ) and
56.2 and 1.27 (RTN) after float recovery; fp32 46.2 and 1.07; the unpruned model loses nothing at int4. The
factual check does not gain (48% against 50% and 62%; benchmarks/results/pruning-experiments.md, "Session 13").

The model keeps its latent float weights: round-to-nearest at the same format (`edgekit export --weights`, method
rtn) maps them to exactly the codes recovery trained through. Their float model is not meant to be run as is.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from edgekit.exporters.quantize.rtn import quantize_rtn
from edgekit.exporters.quantize.spec import QuantConfig

from edgekit.errors import EdgekitError
from edgekit.formats import GridFormat


def _fake_quantizer(fmt: GridFormat) -> Any:
    import torch

    class RoundToNearest(torch.nn.Module):
        """weight -> its RTN round trip in the forward pass, the identity in the backward pass."""

        def forward(self, w: Any) -> Any:
            q = torch.from_numpy(quantize_rtn(w.detach().cpu().numpy(), fmt).dequantize()).to(w)
            return w + (q - w).detach()

    return RoundToNearest()


@contextmanager
def seen_quantized(model: Any, fmt: GridFormat) -> Iterator[None]:
    """Within the block, every linear layer of `model`'s decoder layers (the projections an export quantizes with
    --weights) computes with its weight rounded to `fmt` as RTN rounds it; gradients reach the float weight.
    On leaving, the layers hold their trained float weights again (not the rounded ones)."""
    import torch
    from torch.nn.utils import parametrize

    linears = [m for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear)]
    for m in linears:
        parametrize.register_parametrization(m, "weight", _fake_quantizer(fmt))
    try:
        yield
    finally:
        for m in linears:
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)


def recovery_format(quant: QuantConfig | None) -> GridFormat | None:
    """The format `export --prune` recovery trains through: the export's one projection format when RTN rounds
    it. GPTQ, a plan or a bit budget choose codes or formats after recovery, from the float model, and
    --tune-steps distils from the float model: float recovery for them."""
    if quant is None or quant.method != "rtn" or quant.plan is not None or quant.target_bpw is not None \
            or quant.tune_steps:
        return None
    return quant.weights


def check_export_format(pruning: dict[str, Any] | None, quant: QuantConfig | None, src: str) -> None:
    """Refuse to export a folder recovered through one format's rounding (`pruning`: its config's record) any
    other way: its float weights are trained to be rounded so, and as they are they make a worse model."""
    recovery = (pruning or {}).get("recovery") or {}
    aware = recovery.get("quantization_aware") if isinstance(recovery, dict) else None
    fmt = recovery_format(quant)
    if aware and (fmt is None or fmt.name != aware):
        raise EdgekitError(f"this folder was recovered through {aware} rounding: export it with --weights {aware} "
                           "and method rtn (no --plan, --target-bpw or --tune-steps), which gives the model "
                           "recovery trained", src)
