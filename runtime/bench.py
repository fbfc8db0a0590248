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
from edgekit.runtime.generator import GenerationConfig, Model

from edgekit.evaltext import default_text


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
    speculative: dict[str, object] | None = None  # mode, tokens/s, speedup over plain, acceptance
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
        ]
        if self.speculative:
            sp = self.speculative
            rows.append((f"speculative ({sp['mode']}, k={sp['draft_len']})",
                         f"{sp['decode_tokens_per_s']:.1f} tokens/s, {sp['speedup']:.2f}x plain, acceptance "
                         f"{sp['acceptance_rate']:.0%}, {sp['accepted_per_pass']:.2f} accepted/pass, "
                         f"output {'identical' if sp['identical_output'] else 'DIFFERENT'}"))
        rows += [
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


def decode_latencies(model: Model, ids: list[int], gen: GenerationConfig) -> tuple[list[float], list[int]]:
    """Seconds between consecutive tokens after the first (the first carries the prompt), and the tokens."""
    tokens, stamps = [], []
    for t in model.generate_ids(ids, gen):
        stamps.append(time.perf_counter())
        tokens.append(t)
    return list(np.diff(stamps)), tokens


def decode_rate(model: Model, prompt_tokens: int = 128, new_tokens: int = 64, rounds: int = 3) -> float:
    """Median decode tokens/s over `rounds` (after one warm-up) of `new_tokens` after a prompt of the evaluation
    text: the short speed column of the benchmarks' tables."""
    ids = model.codec.encode(default_text())[:prompt_tokens]
    gen = GenerationConfig(max_new_tokens=new_tokens, stop_token_ids=())
    decode_latencies(model, ids, gen)
    return _median_rate([decode_latencies(model, ids, gen)[0] for _ in range(rounds)])


def _median_rate(per_round: list[list[float]]) -> float:
    """Tokens/s of the median round (by total time)."""
    lat = sorted(per_round, key=sum)[len(per_round) // 2]
    return len(lat) / sum(lat)


def speculative_summary(model: Model, ids: list[int], plain_tokens: list[int], plain_rate: float, mode: str,
                        draft_len: int, new_tokens: int, rounds: int) -> dict[str, object]:
    gen = GenerationConfig(new_tokens, stop_token_ids=(), speculative=mode, draft_len=draft_len)
    runs = [decode_latencies(model, ids, gen) for _ in range(rounds)]
    rate = _median_rate([lat for lat, _ in runs])
    stats = model.last_stats
    return {"mode": mode, "draft_len": draft_len, "decode_tokens_per_s": rate, "speedup": rate / plain_rate,
            "acceptance_rate": stats.acceptance_rate, "accepted_per_pass": stats.accepted_per_pass,
            "identical_output": runs[-1][1] == plain_tokens}


def run_bench(path: str | Path, prompt_lengths: tuple[int, ...] = (16, 128, 512), new_tokens: int = 64,
              rounds: int = 3, device: str = "cpu", fast: bool = False, threads: int = 0,
              speculative: str | None = None, draft_len: int = 4, float_passes: bool = False) -> BenchReport:
    t0 = time.perf_counter()
    model = Model(path, device=device, fast=fast, threads=threads, max_length=max(prompt_lengths) + new_tokens + 1,
                  draft=speculative == "draft", float_passes=float_passes)
    load_s = time.perf_counter() - t0
    time_to_first_token(model, _prompt_ids(model, 8))  # warm-up: first runs allocate
    ttft = {n: statistics.median(time_to_first_token(model, _prompt_ids(model, n)) for _ in range(rounds))
            for n in prompt_lengths}
    decode_ids = _prompt_ids(model, min(128, max(prompt_lengths)))
    runs = [decode_latencies(model, decode_ids, GenerationConfig(new_tokens, stop_token_ids=())) for _ in range(rounds)]
    per_round = [lat for lat, _ in runs]
    rate = _median_rate(per_round)
    spec = speculative and speculative_summary(model, decode_ids, runs[-1][1], rate, speculative, draft_len,
                                               new_tokens, rounds)
    all_lat = np.array([x for lat in per_round for x in lat]) * 1e3
    size = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 1e6
    return BenchReport(
        device=model.provider, threads=threads,
        mode="fast (int8 activations)" if fast else "exact" + (", float32 multi-token passes" if float_passes else ""),
        load_s=load_s, ttft_ms=ttft, decode_tokens_per_s=rate, speculative=spec or None,
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
