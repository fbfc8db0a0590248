"""`edgekit prune` as stages: open the source -> calibration text -> importance -> selection -> cut the model ->
recover (optional distillation from the unpruned model) -> write a Hugging Face folder.

The folder is written to a temporary folder beside OUT and renamed at the end, as packages are: a failed
or interrupted prune never leaves a half-written folder.
"""

from __future__ import annotations

import os
import secrets
import shutil
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from edgekit.exporters.distill import distill, mean_kl
from edgekit.exporters.hf_folder import copy_tokenizer_files, write_tokenizer_files
from edgekit.exporters.prune.importance import Importance, measure
from edgekit.exporters.prune.knowledge import knowledge_windows
from edgekit.exporters.prune.quant_aware import seen_quantized
from edgekit.exporters.prune.request import PruneRequest
from edgekit.exporters.prune.selection import layer_dims, select
from edgekit.exporters.prune.surgery import apply_keep, save_pruned
from edgekit.exporters.quantize.calibration import file_windows, self_generated_windows
from edgekit.exporters.quantize.spec import CalibrationConfig
from edgekit.exporters.sources import open_source, source_tokenizer

from edgekit.errors import EdgekitError
from edgekit.formats import GridFormat

# Recovery trains every weight but the embedding (tied to the output layer: 28M of SmolLM2's 135M, and the
# layers it feeds are what pruning changed). The rate is measured on SmolLM2-135M at 25% fewer parameters,
# 100 steps: KL to the unpruned model on held-out text 1.41 -> 1.01 at 3e-4 (at 1e-4, 60 steps went less far).
RECOVERY_LR = 3e-4
# Each step's gradient is clipped to this global norm (transformers' Trainer default). Unclipped, a 600-step run at
# 3e-4 diverged between steps 200 and 300 (factual check 47% -> 3%, KL on general text 1.19 -> 1.46); a clipped
# 400-step run did not (benchmarks/results/pruning-experiments.md).
RECOVERY_MAX_GRAD_NORM = 1.0
RECOVERY_BATCH = 2
# More text than GPTQ takes: recovery trains on it. Its last windows are held out to measure recovery.
CALIBRATION = CalibrationConfig(n_prompts=32, new_tokens=256)
HELD_OUT = 4
# Prompts the model continues for its calibration text when no file is given: encyclopedic ones (knowledge.py;
# SmolLM2-135M at 25% fewer parameters keeps 45% of the factual check instead of 3%, 60% instead of 8% after 150
# recovery steps) or the neutral ones quantization uses (lower KL on general text without recovery).
CALIB_PROMPTS = ("knowledge", "neutral")


@dataclass
class PruneResult:
    folder: Path
    record: dict[str, Any]

    def describe(self) -> str:
        r, p = self.record, self.record["parameters"]
        line = (f"{p['before'] / 1e6:.1f}M -> {p['after'] / 1e6:.1f}M parameters ({p['removed']:.1%} removed; "
                f"layers {r['shape_before']['layers']} -> {len(r['layers'])}, query heads "
                f"{r['shape_before']['heads']} -> {sum(x['heads'] for x in r['layers'])}, MLP channels "
                f"{r['shape_before']['channels']} -> {sum(x['intermediate_size'] for x in r['layers'])}); "
                f"{r['importance']}")
        rec = r.get("recovery")
        if rec:
            aware = rec.get("quantization_aware")
            line += (f"; recovery {rec['steps']} steps" + (f" through {aware} rounding" if aware else "") +
                     f" on {rec.get('device', 'cpu')}" +
                     f": KL to the unpruned model {rec['kl_before']:.3f} -> {rec['kl_after']:.3f} nats/token on "
                     f"{rec['held_out_tokens']} held-out tokens")
            if aware:
                line += f" (export with --weights {aware}, method rtn)"
        return line


def numel(module: Any) -> int:
    """Parameters, a tied output layer counted once (torch's parameters() yields each tensor once)."""
    return sum(p.numel() for p in module.parameters())


def prune(src: str, out: str | Path, request: PruneRequest, calib: str | None = None,
          recover_steps: int = 0, recover_lr: float = RECOVERY_LR, calib_prompts: str = "knowledge",
          recover_for: GridFormat | None = None) -> PruneResult:
    """SRC (GGUF file, Hugging Face folder or built-in name) pruned as `request` says, optionally recovered by
    `recover_steps` steps of distillation at `recover_lr` (through `recover_for`'s RTN rounding: quant_aware.py),
    written as a Hugging Face folder `out` (exporters.prune.surgery). Calibration text: the file `calib`, else the
    model's own continuations of `calib_prompts` (CALIB_PROMPTS)."""
    import torch
    from edgekit.exporters.quantize.tune import float_teacher
    from edgekit.exporters.reference import TorchReference

    out = Path(out)
    if out.exists():
        raise EdgekitError("output already exists (remove it or choose another -o)", out)
    if recover_steps < 0:
        raise EdgekitError(f"--recover-steps is {recover_steps}, expected 0 or more")
    if recover_for is not None and not recover_steps:
        raise EdgekitError("--recover-for shapes recovery: give --recover-steps too")
    if calib_prompts not in CALIB_PROMPTS:
        raise EdgekitError(f"--calib-prompts is {calib_prompts!r}, expected one of {', '.join(CALIB_PROMPTS)}")
    source = open_source(src)
    tokenizer, tok_info = source_tokenizer(source)
    model = TorchReference(src, "cpu").model
    layers = list(model.model.layers)
    total, layer_params, dims = numel(model), [numel(layer) for layer in layers], layer_dims(model)
    select(Importance.zeros(dims), dims, layer_params, total, request)  # bad requests fail before the slow part
    if calib:
        windows = file_windows(calib, tokenizer, CALIBRATION)
    elif calib_prompts == "knowledge":
        windows = knowledge_windows(model, tokenizer)
    else:
        windows = self_generated_windows(model, tokenizer, CALIBRATION)
    held = min(HELD_OUT, len(windows) // 4)
    train, held_out = windows[: len(windows) - held], windows[len(windows) - held:]
    importance = measure(model, train, request.importance, with_layers=request.depth > 0)
    keep = select(importance, dims, layer_params, total, request)
    teacher = float_teacher(model) if recover_steps else None
    apply_keep(model, keep, importance.inputs)
    record: dict[str, Any] = {
        "request": request.describe(), "importance": importance.describe(), "method": request.importance,
        "calibration": f"{Path(calib).name}" if calib else f"self-generated from {calib_prompts} prompts, "
                                                            f"{windows.size} tokens",
        "shape_before": {"layers": len(dims), "heads": sum(d.heads for d in dims),
                         "channels": sum(d.width for d in dims)},
        "layers": [k.record() for k in keep if k is not None],
        "dropped_layers": [i for i, k in enumerate(keep) if k is None],
        "parameters": {"before": total, "after": numel(model), "removed": 1 - numel(model) / total},
    }
    if teacher is not None:
        record["recovery"] = recover(teacher, model, train, held_out if held else train, recover_steps, recover_lr,
                                     recover_for)
    with torch.no_grad():
        model.float()
    _write(out, model, record, source, tokenizer, tok_info)
    return PruneResult(out, record)


def recover(teacher: Any, student: Any, train: np.ndarray, held_out: np.ndarray, steps: int,
            lr: float = RECOVERY_LR, fmt: GridFormat | None = None) -> dict[str, Any]:
    """Distil the unpruned `teacher` into the pruned `student` (every weight but the embedding) for `steps` steps
    at `lr`, with its projections rounded to `fmt` if given (quant_aware.py); KL to the teacher on `held_out`
    windows before and after (of the rounded model, with `fmt`). Runs on the GPU when torch sees one, as
    --tune-steps does: recovery is the slow stage, and what it brings back grows with the text it covers
    (benchmarks/results/pruning-experiments.md); both models are back on the CPU afterwards."""
    from edgekit.exporters.reference import torch_device

    device = torch_device("auto")
    teacher.to(device)
    student.to(device)
    try:
        with seen_quantized(student, fmt) if fmt is not None else nullcontext():
            before = mean_kl(teacher, student, held_out)
            params = [p for name, p in student.named_parameters()
                      if "embed_tokens" not in name and "lm_head" not in name]
            student.train()
            distill(teacher, lambda batch: student(batch).logits, params, train, steps, lr, "recovery",
                    batch=RECOVERY_BATCH, max_grad_norm=RECOVERY_MAX_GRAD_NORM)
            student.eval()
            after = mean_kl(teacher, student, held_out)
    finally:
        student.to("cpu")
        teacher.to("cpu")
    record = {"steps": steps, "learning_rate": lr, "max_grad_norm": RECOVERY_MAX_GRAD_NORM, "kl_before": before,
              "kl_after": after, "held_out_tokens": int(held_out.size), "device": device}
    if fmt is not None:
        record["quantization_aware"] = fmt.name
    return record


def _write(out: Path, model: Any, record: dict[str, Any], source: Any, tokenizer: Any,
           tok_info: dict[str, Any]) -> None:
    from edgekit.exporters.pipeline import sweep_stale_partials

    out.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_partials(out)  # left by a prune killed outright (SIGKILL, power cut)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        tmp.mkdir(mode=0o755)
        save_pruned(model, tmp, record)
        if source.kind == "hf":
            copy_tokenizer_files(Path(source.path), tmp)
        else:
            write_tokenizer_files(tmp, tokenizer, tok_info)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

