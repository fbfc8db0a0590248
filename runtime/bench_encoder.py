"""`edgekit bench` for sentence-embedding packages: sentences/s and latency per batch, at batch 1 and 32.

Each round embeds the built-in sentences (edgekit.evaltext.sentences: 40 of 4 to 60 words) in full batches,
cycling through them, and times every `embed` call: tokenization and padding included, as an app waits for
them. Sentences/s are medians over rounds, latencies percentiles over every batch of every round.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.runtime.bench_common import (
    FAST_MODE,
    BenchResult,
    check_rss,
    peak_rss_mb,
    percentiles,
    row_dict,
    size_on_disk_mb,
    spread,
    sweep,
)
from edgekit.runtime.encoder import Encoder

from edgekit.evaltext import sentences

BATCH_SIZES = (1, 32)


@dataclass
class EncoderBenchReport:
    """One measured configuration (one thread count). Times in ms unless named `_s`; sizes in MB (10^6 bytes)
    except `peak_rss_mb` (MiB). Dicts are keyed by batch size."""

    device: str
    mode: str
    threads: int  # as requested; 0: onnxruntime's default
    load_s: float
    dimension: int
    max_seq_length: int
    sentences: int  # distinct built-in sentences, cycled through to fill the batches
    sentences_per_s: dict[int, float]  # median over rounds
    batch_latency_ms: dict[int, dict[str, float]]  # p50 / p90 / p99 of every batch of every round
    peak_rss_mb: float
    size_on_disk_mb: float
    rounds: int = 1
    budget_failures: list[str] = field(default_factory=list)
    sentences_per_s_spread: dict[int, dict[str, float]] = field(default_factory=dict)  # spread() of round rates
    batch_latencies_ms: dict[int, list[list[float]]] = field(default_factory=dict)  # per round, each batch's ms

    def to_dict(self) -> dict[str, object]:
        return row_dict(self, ("sentences_per_s", "batch_latency_ms", "sentences_per_s_spread",
                               "batch_latencies_ms"))


def batch_latencies(encoder: Encoder, texts: list[str], batch_size: int) -> list[float]:
    """Seconds of each `embed` call over full batches of `batch_size` texts, cycling through `texts`, until every
    text has been embedded once."""
    out = []
    for b in range(-(-len(texts) // batch_size)):
        batch = [texts[(b * batch_size + i) % len(texts)] for i in range(batch_size)]
        t0 = time.perf_counter()
        encoder.embed(batch, batch_size=batch_size)
        out.append(time.perf_counter() - t0)
    return out


def run_encoder_bench(path: str | Path, rounds: int = 3, device: str = "cpu", fast: bool = False, threads: int = 0,
                      batch_sizes: tuple[int, ...] = BATCH_SIZES) -> EncoderBenchReport:
    """Load the package once with `threads` (0: onnxruntime's default) and measure it."""
    t0 = time.perf_counter()
    encoder = Encoder(path, device=device, fast=fast, threads=threads)
    load_s = time.perf_counter() - t0
    texts = sentences()
    encoder.embed(texts, batch_size=max(batch_sizes))  # warm-up: first runs allocate
    runs = {b: [batch_latencies(encoder, texts, b) for _ in range(rounds)] for b in batch_sizes}
    rates = {b: [b * len(lat) / sum(lat) for lat in per_round] for b, per_round in runs.items()}
    return EncoderBenchReport(
        device=encoder.provider, mode=FAST_MODE if fast else "exact", threads=threads, load_s=load_s,
        dimension=encoder.dimension, max_seq_length=encoder.max_length, sentences=len(texts),
        sentences_per_s={b: statistics.median(r) for b, r in rates.items()},
        batch_latency_ms={b: percentiles([x * 1e3 for lat in per_round for x in lat]) for b, per_round in runs.items()},
        peak_rss_mb=peak_rss_mb(), size_on_disk_mb=size_on_disk_mb(path), rounds=rounds,
        sentences_per_s_spread={b: spread(r) for b, r in rates.items()},
        batch_latencies_ms={b: [[x * 1e3 for x in lat] for lat in per_round] for b, per_round in runs.items()},
    )


def run_encoder_sweep(path: str | Path, thread_counts: tuple[int, ...] = (0,), **kwargs: Any) -> BenchResult:
    """run_encoder_bench once per thread count (keyword arguments as its), with the environment around them."""
    return sweep(path, thread_counts, lambda t: run_encoder_bench(path, threads=t, **kwargs))


def check_encoder_budgets(report: EncoderBenchReport, min_sentences_per_s: float | None,
                          max_latency_ms: float | None, max_rss_mb: float | None) -> None:
    """Record every missed budget in report.budget_failures: sentences/s at the largest batch size (throughput),
    latency p90 at the smallest (batch 1: one text at a time, as interactive use waits), peak RSS."""
    if min_sentences_per_s is not None:
        batch = max(report.sentences_per_s)
        rate = report.sentences_per_s[batch]
        if rate < min_sentences_per_s:
            report.budget_failures.append(f"{rate:.1f} sentences/s at batch {batch} < {min_sentences_per_s:g}")
    if max_latency_ms is not None:
        batch = min(report.batch_latency_ms)
        p90 = report.batch_latency_ms[batch]["p90"]
        if p90 > max_latency_ms:
            report.budget_failures.append(f"latency p90 {p90:.1f} ms at batch {batch} > {max_latency_ms:g} ms")
    check_rss(report, max_rss_mb)
