"""`edgekit validate` for encoders: the runtime's embeddings against the PyTorch reference's on fixed texts.

Both sides tokenize with the package's tokenizer.json, so every difference is numerical. Cosine similarity
is what retrieval and clustering compare, so the thresholds are on it; the largest element error is reported
(and can be limited) because cosine alone cannot see a missing normalization.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol

import numpy as np
from edgekit.exporters.sentences import DISTRACTORS, PARAPHRASE_PAIRS, VALIDATION_SENTENCES
from edgekit.exporters.validation_table import validation_table

from edgekit.errors import EdgekitError

WORST_SHOWN = 3


class Embedder(Protocol):
    def embed(self, texts: list[str], batch_size: int = 32) -> np.ndarray: ...


@dataclass(frozen=True)
class EncoderThresholds:
    min_mean_cosine: float = 0.98
    min_cosine: float = 0.95
    max_abs_error: float | None = None  # None: reported, not checked


@dataclass(frozen=True)
class SentenceScore:
    text: str
    cosine: float


@dataclass
class EncoderValidationReport:
    sentences: int
    mean_cosine: float
    min_cosine: float
    max_abs_error: float
    worst: list[SentenceScore]  # lowest cosine first
    reference_device: str
    failures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "passed": not self.failures}

    def table(self) -> str:
        rows = [
            ("reference", f"PyTorch float32 on {self.reference_device}"),
            ("sentences", str(self.sentences)),
            ("mean cosine", f"{self.mean_cosine:.6f}"),
            ("min cosine", f"{self.min_cosine:.6f}"),
            ("max |element error|", f"{self.max_abs_error:.3g}"),
            *((f"worst {i}", f"{s.cosine:.6f}  {_one_line(s.text)}") for i, s in enumerate(self.worst, 1)),
        ]
        return validation_table(rows, self.failures)


def _one_line(text: str, width: int = 60) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= width else flat[:width - 1] + "…")


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N] cosine similarity of each row of a with the same row of b ([N, D] each), in float64."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    norms = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return (a * b).sum(axis=1) / norms


def validate_encoder(model: Embedder, reference: Embedder, texts: Sequence[str] | None = None,
                     thresholds: EncoderThresholds = EncoderThresholds()) -> EncoderValidationReport:
    """Compare `model` (the runtime Encoder) with `reference` (TorchEncoderReference) on texts, by default
    VALIDATION_SENTENCES."""
    texts = list(VALIDATION_SENTENCES if texts is None else texts)
    if not texts:
        raise EdgekitError("no texts to validate the encoder on")
    ref, run = reference.embed(texts), model.embed(texts)
    if ref.shape != run.shape:
        raise EdgekitError(f"the runtime's embeddings are {list(run.shape)}, the reference's {list(ref.shape)}")
    cos = row_cosines(run, ref)
    report = EncoderValidationReport(
        sentences=len(texts),
        mean_cosine=float(cos.mean()),
        min_cosine=float(cos.min()),
        max_abs_error=float(np.abs(run.astype(np.float64) - ref).max()),
        worst=[SentenceScore(texts[i], float(cos[i])) for i in np.argsort(cos, kind="stable")[:WORST_SHOWN]],
        reference_device=getattr(reference, "device", "cpu"),
    )
    if report.mean_cosine < thresholds.min_mean_cosine:
        report.failures.append(f"mean cosine {report.mean_cosine:.4f}, need {thresholds.min_mean_cosine:.4f}")
    if report.min_cosine < thresholds.min_cosine:
        report.failures.append(f"min cosine {report.min_cosine:.4f} on {_one_line(report.worst[0].text, 40)}, "
                               f"need {thresholds.min_cosine:.4f}")
    if thresholds.max_abs_error is not None and report.max_abs_error > thresholds.max_abs_error:
        report.failures.append(f"max element error {report.max_abs_error:.3g}, limit {thresholds.max_abs_error:.3g}")
    return report


def retrieval_ranks(embed: Callable[[list[str]], np.ndarray],
                    pairs: Sequence[tuple[str, str]] = PARAPHRASE_PAIRS,
                    distractors: Sequence[str] = DISTRACTORS) -> list[int]:
    """For each (query, match) pair, the match's rank (1 = best) by cosine among all matches and distractors;
    a candidate scoring exactly as high as the match does not push it down."""
    queries = embed([q for q, _ in pairs]).astype(np.float64)
    candidates = embed([m for _, m in pairs] + list(distractors)).astype(np.float64)
    queries /= np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    candidates /= np.maximum(np.linalg.norm(candidates, axis=1, keepdims=True), 1e-12)
    scores = queries @ candidates.T  # [queries, candidates]; query i's match is candidate i
    own = scores[np.arange(len(pairs)), np.arange(len(pairs))]
    return [int(r) for r in 1 + (scores > own[:, None]).sum(axis=1)]


__all__ = ["EncoderThresholds", "EncoderValidationReport", "SentenceScore", "retrieval_ranks", "row_cosines",
           "validate_encoder"]
