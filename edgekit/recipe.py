"""A compression recipe is a value: it is printed, saved in the manifest and compared.

For an imported checkpoint the recipe records the formats the weights arrived in (kept as they are);
for a quantized export, the method and its settings (bits, group size, symmetric, calibration text)
and, per tensor, the format it got (e.g. `int4g64`; the embedding 8 bits unless a plan says otherwise),
how a mixed plan was chosen, and the bits per weight the package stores.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Recipe:
    method: str = "import"  # "import": weights kept exactly as the source stores them; or "rtn", "gptq"
    tensor_formats: dict[str, str] = field(default_factory=dict)  # canonical tensor name -> format
    bits: int | None = None  # the projections' bit width when quantized on export
    group_size: int | None = None
    symmetric: bool = False
    act_order: bool = False  # GPTQ's column order by decreasing Hessian diagonal
    calibration: str | None = None  # e.g. "self-generated, 1064 tokens"
    tune_steps: int = 0  # steps of end-to-end distillation of group scales and norm weights
    # Projection nodes (`layers.3.qkv`) that keep exact activations in fast mode, by measured error (fast_mode.py).
    fast_exact: list[str] = field(default_factory=list)
    plan: str | None = None  # how mixed formats were chosen: "plan mixed.yaml", "target 3.5 bpw by ..."
    bits_per_weight: float | None = None  # stored bits (codes, scales, offsets) per projection weight
    bits_per_weight_all: float | None = None  # the same over every quantized tensor, embedding included
    # How the source was structurally pruned (exporters.prune): plan, per-layer shapes, parameter counts, recovery.
    pruning: dict[str, Any] | None = None

    def summary(self) -> dict[str, int]:
        return dict(Counter(self.tensor_formats.values()))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "summary": self.summary()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Recipe:
        return cls(method=d["method"], tensor_formats=dict(d["tensor_formats"]), bits=d.get("bits"),
                   group_size=d.get("group_size"), symmetric=bool(d.get("symmetric", False)),
                   act_order=bool(d.get("act_order", False)), calibration=d.get("calibration"),
                   tune_steps=int(d.get("tune_steps", 0)), fast_exact=list(d.get("fast_exact", [])),
                   plan=d.get("plan"),
                   bits_per_weight=d.get("bits_per_weight"), bits_per_weight_all=d.get("bits_per_weight_all"),
                   pruning=d.get("pruning"))
