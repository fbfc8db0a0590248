"""`edgekit bench`: the on-device latency check (numpy + onnxruntime only, so it runs where the app runs).

Time to first token is measured per prompt length on a fresh cache; decode speed from the
per-token latencies of one long generation that never stops early. Medians over rounds.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgekit.evaltext import default_text
from edgekit.runtime.generator import GenerationConfig, Model


@dataclass
class BenchReport:
    device: str
    mode: str
    threads: int
    load_s: float
    ttft_ms: dict[int, float]  # prompt length -> median ms
    decode_tokens_per_s: float
    token_latency_ms: dict[str, float]  # p50 / p90 / p99
    new_tokens: int
    peak_rss_mb: float
    size_on_disk_mb: float
    budget_failures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["ttft_ms"] = {str(k): v for k, v in self.ttft_ms.items()}
        d["passed"] = not self.budget_failures
        return d

    def table(self) -> str:
        rows = [("device", f"{self.device} ({self.mode}, {self.threads or 'default'} threads)"),
                ("load", f"{self.load_s:.2f} s")]
        rows += [(f"TTFT, {n}-token prompt", f"{ms:.1f} ms") for n, ms in self.ttft_ms.items()]
        rows += [
            ("decode", f"{self.decode_tokens_per_s:.1f} tokens/s ({self.new_tokens} new tokens)"),
            ("token latency p50/p90/p99", " / ".join(f"{self.token_latency_ms[p]:.2f}" for p in ("p50", "p90", "p99"))
             + " ms"),
            ("peak RSS", f"{self.peak_rss_mb:.0f} MB"),
            ("size on disk", f"{self.size_on_disk_mb:.1f} MB"),
            ("budgets", "all met" if not self.budget_failures else "MISSED: " + "; ".join(self.budget_failures)),
        ]
        w = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


def peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


def _prompt_ids(model: Model, length: int) -> list[int]:
    ids = model.codec.encode(default_text())
    while len(ids) < length:
        ids = ids + ids
    return ids[:length]


def time_to_first_token(model: Model, ids: list[int]) -> float:
    t0 = time.perf_counter()
    next(model.generate_ids(ids, GenerationConfig(max_new_tokens=1, stop_token_ids=())))
    return (time.perf_counter() - t0) * 1e3


def decode_latencies(model: Model, ids: list[int], new_tokens: int) -> list[float]:
    """Seconds between consecutive tokens after the first (the first carries the prompt)."""
    stamps = [time.perf_counter() for _ in model.generate_ids(ids, GenerationConfig(new_tokens, stop_token_ids=()))]
    return list(np.diff(stamps))


def run_bench(path: str | Path, prompt_lengths: tuple[int, ...] = (16, 128, 512), new_tokens: int = 64,
              rounds: int = 3, device: str = "cpu", fast: bool = False, threads: int = 0) -> BenchReport:
    t0 = time.perf_counter()
    model = Model(path, device=device, fast=fast, threads=threads, max_length=max(prompt_lengths) + new_tokens + 1)
    load_s = time.perf_counter() - t0
    time_to_first_token(model, _prompt_ids(model, 8))  # warm-up: first runs allocate
    ttft = {n: statistics.median(time_to_first_token(model, _prompt_ids(model, n)) for _ in range(rounds))
            for n in prompt_lengths}
    decode_ids = _prompt_ids(model, min(128, max(prompt_lengths)))
    per_round = [decode_latencies(model, decode_ids, new_tokens) for _ in range(rounds)]
    median_round = sorted(per_round, key=lambda lat: sum(lat))[len(per_round) // 2]
    all_lat = np.array([x for lat in per_round for x in lat]) * 1e3
    size = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 1e6
    return BenchReport(
        device=model.provider, mode="fast (int8 activations)" if fast else "exact", threads=threads,
        load_s=load_s, ttft_ms=ttft, decode_tokens_per_s=len(median_round) / sum(median_round),
        token_latency_ms={p: float(np.percentile(all_lat, int(p[1:]))) for p in ("p50", "p90", "p99")},
        new_tokens=new_tokens, peak_rss_mb=peak_rss_mb(), size_on_disk_mb=size,
    )


def check_budgets(report: BenchReport, max_ttft_ms: float | None, min_tokens_per_s: float | None,
                  max_rss_mb: float | None) -> None:
    """Record every missed budget in report.budget_failures (TTFT is checked at every prompt length)."""
    if max_ttft_ms is not None:
        for n, ms in report.ttft_ms.items():
            if ms > max_ttft_ms:
                report.budget_failures.append(f"TTFT {ms:.1f} ms at {n} tokens > {max_ttft_ms:g} ms")
    if min_tokens_per_s is not None and report.decode_tokens_per_s < min_tokens_per_s:
        report.budget_failures.append(f"decode {report.decode_tokens_per_s:.1f} tokens/s < {min_tokens_per_s:g}")
    if max_rss_mb is not None and report.peak_rss_mb > max_rss_mb:
        report.budget_failures.append(f"peak RSS {report.peak_rss_mb:.0f} MB > {max_rss_mb:g} MB")
