"""`edgekit validate`: the runtime against the PyTorch reference on the same token ids.

Both sides see identical ids (the package's tokenizer), so every difference is numerical:
logit error and top-1 agreement on fixed prompts, the length of identical greedy output, and
perplexity and KL divergence on an evaluation text.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from edgekit.exporters.validation_table import validation_table
from edgekit.runtime import GenerationConfig, Model

from edgekit.evaltext import default_text, log_softmax, windows
from edgekit.progress import progress

PROMPTS = (
    "The capital of France is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Once upon a time, in a small village by the sea,",
    "Photosynthesis is the process by which",
)


@dataclass(frozen=True)
class Thresholds:
    min_greedy: int | None = None  # None: all requested tokens identical
    max_ppl_delta: float = 0.001  # relative
    min_top1: float = 0.99
    max_kl: float | None = None


@dataclass
class ValidationReport:
    max_logit_error: float
    mean_logit_error: float
    top1_agreement: float
    greedy_identical: list[int]
    greedy_tokens: int
    ppl_reference: float
    ppl_runtime: float
    kl_divergence: float
    reference_device: str
    failures: list[str] = field(default_factory=list)

    @property
    def ppl_delta(self) -> float:
        return self.ppl_runtime / self.ppl_reference - 1

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "ppl_delta": self.ppl_delta, "passed": not self.failures}

    def table(self) -> str:
        g = f"{min(self.greedy_identical)}/{self.greedy_tokens} (per prompt: {self.greedy_identical})"
        rows = [
            ("reference", f"PyTorch float32 on {self.reference_device}"),
            ("max |logit error|", f"{self.max_logit_error:.3g}"),
            ("mean |logit error|", f"{self.mean_logit_error:.3g}"),
            ("top-1 agreement", f"{self.top1_agreement:.2%}"),
            ("identical greedy tokens", g),
            ("perplexity reference", f"{self.ppl_reference:.4f}"),
            ("perplexity runtime", f"{self.ppl_runtime:.4f} ({self.ppl_delta:+.3%})"),
            ("KL(reference || runtime)", f"{self.kl_divergence:.3g} nats/token"),
        ]
        return validation_table(rows, self.failures)


def _identical_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _kl(ref_logits: np.ndarray, run_logits: np.ndarray) -> np.ndarray:
    lp, lq = log_softmax(ref_logits), log_softmax(run_logits)
    return (np.exp(lp) * (lp - lq)).sum(axis=-1)


def validate(model: Model, reference: object, greedy_tokens: int = 64, text: str | None = None,
             thresholds: Thresholds = Thresholds()) -> ValidationReport:
    """Compare `model` (the runtime) with `reference` (TorchReference: logits(ids), greedy(ids, n))."""
    errors, agree, greedy = [], [], []
    no_stop = GenerationConfig(max_new_tokens=greedy_tokens, stop_token_ids=())
    for prompt in progress(PROMPTS, "prompts"):
        ids = model.encode(prompt)
        ref, run = reference.logits(ids), model.logits(ids)  # type: ignore[attr-defined]
        errors.append(np.abs(ref - run))
        agree.append(ref.argmax(-1) == run.argmax(-1))
        ref_tokens = reference.greedy(ids, greedy_tokens)  # type: ignore[attr-defined]
        greedy.append(_identical_prefix(ref_tokens, list(model.generate_ids(ids, no_stop))))
    ids = model.codec.encode(text if text is not None else default_text())
    ref_nll, run_nll, kls = [], [], []
    for w in progress(list(windows(ids, min(512, model.max_length))), "perplexity windows"):
        ref, run = reference.logits(w), model.logits(w)  # type: ignore[attr-defined]
        ref_nll.append(-log_softmax(ref[:-1])[np.arange(len(w) - 1), w[1:]])
        run_nll.append(-log_softmax(run[:-1])[np.arange(len(w) - 1), w[1:]])
        kls.append(_kl(ref[:-1], run[:-1]))
    all_err = np.concatenate([e.ravel() for e in errors])
    report = ValidationReport(
        max_logit_error=float(all_err.max()),
        mean_logit_error=float(all_err.mean()),
        top1_agreement=float(np.concatenate(agree).mean()),
        greedy_identical=greedy,
        greedy_tokens=greedy_tokens,
        ppl_reference=float(np.exp(np.concatenate(ref_nll).mean())),
        ppl_runtime=float(np.exp(np.concatenate(run_nll).mean())),
        kl_divergence=float(np.concatenate(kls).mean()),
        reference_device=getattr(reference, "device", "cpu"),
    )
    need = greedy_tokens if thresholds.min_greedy is None else thresholds.min_greedy
    if min(greedy) < need:
        report.failures.append(f"greedy output identical for {min(greedy)} tokens, need {need}")
    if abs(report.ppl_delta) > thresholds.max_ppl_delta:
        report.failures.append(f"perplexity differs by {report.ppl_delta:+.3%}, limit {thresholds.max_ppl_delta:.3%}")
    if report.top1_agreement < thresholds.min_top1:
        report.failures.append(f"top-1 agreement {report.top1_agreement:.2%}, need {thresholds.min_top1:.2%}")
    if thresholds.max_kl is not None and report.kl_divergence > thresholds.max_kl:
        report.failures.append(f"KL divergence {report.kl_divergence:.3g}, limit {thresholds.max_kl:.3g}")
    return report


__all__ = ["Thresholds", "ValidationReport", "validate"]
