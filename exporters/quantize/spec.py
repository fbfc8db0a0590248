"""What to quantize to: the options of one export (formats are edgekit.formats.grid's `int4g128`, `int3g64sym`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgekit.errors import EdgekitError
from edgekit.formats.grid import DEFAULT_GROUP_SIZE, GridFormat

MIN_TARGET_BPW, MAX_TARGET_BPW = 2.0, 8.5
METHODS = ("rtn", "gptq")
# The embedding (and a tied output layer, which is the same table) gets 8 bits unless a plan says otherwise,
# as in the shipped GGUF (Q8_0) and llama.cpp's mixes: on SmolLM2-135M, the tied table alone at int4 g64
# (everything else float) raised perplexity by 8.4%; at int8 by 0.0% (14.19 -> 15.39 / 14.19, measured).
HEAD_BITS = 8
# ... in groups of at most 64: SmolLM2-135M int4 g128 decoded at 101 tok/s with an int8 g128 output layer (49152 x
# 576, a short last group) and at 151 with int8 g64, which also stores fewer bits (no padding) (measured).
HEAD_MAX_GROUP = 64

def embedding_format(fmt: GridFormat) -> GridFormat:
    """The default format of the embedding and of a tied or separate output layer: 8 bits, groups of at most
    HEAD_MAX_GROUP."""
    return GridFormat(HEAD_BITS, min(fmt.group_size, HEAD_MAX_GROUP), fmt.symmetric)


@dataclass(frozen=True)
class CalibrationConfig:
    """Calibration text: `file` (tokenized, cut into `seq_len` windows) or, without one, text the model
    generates itself from `n_prompts` neutral prompts, `new_tokens` each."""

    file: Path | None = None
    # SmolLM2-135M int4g64 GPTQ, perplexity on 2048 tokens (fp32 15.24): 8 x 128 tokens 18.35, 16 x 256 17.64.
    n_prompts: int = 16
    new_tokens: int = 256
    seq_len: int = 256
    max_tokens: int = 8192  # more text adds time, not much quality, for GPTQ on a small model
    min_tokens: int = 256
    seed: int = 0


@dataclass(frozen=True)
class QuantConfig:
    """One export's quantization: the formats (one for every projection, a plan file's rules, a bit budget, or
    a mix of these), the method, and GPTQ's options."""

    weights: GridFormat | None
    method: str = "rtn"
    calibration: CalibrationConfig = CalibrationConfig()
    act_order: bool = True  # SmolLM2-135M int4g64: perplexity 18.35 with, 20.39 without (2048 tokens, fp32 15.24)
    damp: float = 0.01  # GPTQ dampening, a fraction of the Hessian's mean diagonal
    plan: Path | None = None  # a YAML plan file (exporters.quantize.plan)
    target_bpw: float | None = None  # bits per weight over the projections, allocated by measured sensitivity
    group_size: int = DEFAULT_GROUP_SIZE  # for --target-bpw's candidate formats and the default head format
    symmetric: bool = False
    # Steps of end-to-end distillation of group scales and norm weights after the method (0: none; tune.py).
    tune_steps: int = 0

    @property
    def data_aware(self) -> bool:
        """Whether the export runs the torch model on calibration text."""
        return self.method == "gptq" or self.target_bpw is not None or self.tune_steps > 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise EdgekitError(f"unknown quantization method {self.method!r} (supported: {', '.join(METHODS)})")
        if not self.data_aware and self.calibration.file is not None:
            raise EdgekitError("--calib is only used by a data-aware method, --tune-steps or --target-bpw: "
                               "add --method gptq")
        if self.tune_steps < 0:
            raise EdgekitError(f"--tune-steps must be 0 or more, not {self.tune_steps}")
        if self.target_bpw is not None and not MIN_TARGET_BPW <= self.target_bpw <= MAX_TARGET_BPW:
            raise EdgekitError(f"--target-bpw {self.target_bpw} is out of range ({MIN_TARGET_BPW} to {MAX_TARGET_BPW})")

    def candidates(self) -> list[GridFormat]:
        """--target-bpw's choices for each projection: 3 bits at every group size (the group size is the finest
        step in bits per weight), 4 bits at 64 and 128, 8 bits at the export's group size."""
        formats = [(3, g) for g in (32, 64, 128, 256)] + [(4, 64), (4, 128), (8, self.group_size)]
        return [GridFormat(b, g, self.symmetric) for b, g in formats]

    def last_resort(self) -> list[GridFormat]:
        """2-bit formats, for budgets below what 3 bits take."""
        return [GridFormat(2, g, self.symmetric) for g in (64, 128, 256)]


def quant_config_from_options(weights: str | None, group_size: int | None = None, symmetric: bool = False,
                              method: str | None = None, calib: str | None = None,
                              act_order: bool | None = None, plan: str | None = None,
                              target_bpw: float | None = None, tune_steps: int = 0,
                              calib_elsewhere: bool = False) -> QuantConfig | None:
    """`edgekit export`'s quantization options as a QuantConfig (None: no --weights, --plan or --target-bpw:
    keep the source's weights). With `calib_elsewhere`, --calib also feeds pruning or the auto draft's
    distillation, so a quantizer that reads no calibration text leaves it unused instead of refusing it."""
    if calib_elsewhere and calib is not None and not (method == "gptq" or target_bpw is not None or tune_steps > 0):
        calib = None
    if weights is None and plan is None and target_bpw is None:
        options = (("--group-size", group_size), ("--symmetric", symmetric), ("--method", method),
                   ("--calib", calib), ("--act-order", act_order is not None), ("--tune-steps", tune_steps))
        given = [opt for opt, value in options if value]
        if given:
            raise EdgekitError(f"{given[0]} needs --weights, --plan or --target-bpw")
        return None
    fmt = GridFormat.parse(weights, group_size, symmetric) if weights else None
    group = fmt.group_size if fmt else (group_size or DEFAULT_GROUP_SIZE)
    GridFormat(4, group)  # checks the group size
    return QuantConfig(fmt, method or "rtn", CalibrationConfig(file=Path(calib) if calib else None),
                       True if act_order is None else act_order, plan=Path(plan) if plan else None,
                       target_bpw=target_bpw, group_size=group, symmetric=fmt.symmetric if fmt else symmetric,
                       tune_steps=tune_steps)
