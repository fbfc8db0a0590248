"""`edgekit bench`: the on-device latency check (numpy + onnxruntime only, so it runs where the app runs).

Time to first token is measured per prompt length on a fresh cache; decode speed from the
per-token latencies of one long generation that never stops early. Medians over rounds, with their
quartiles and range, and the raw per-round numbers for `edgekit report`'s distributions.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
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
from edgekit.runtime.generator import GenerationConfig, Model

from edgekit.errors import EdgekitError
from edgekit.evaltext import default_text


@dataclass
class BenchReport:
    """One measured configuration (one thread count). Times in ms unless named `_s`; sizes in MB (10^6 bytes)
    except `peak_rss_mb` (MiB)."""

    device: str
    mode: str
    threads: int  # as requested; 0: onnxruntime's default
    load_s: float
    ttft_ms: dict[int, float]  # prompt length -> median ms
    decode_tokens_per_s: float  # median over rounds
    token_latency_ms: dict[str, float]  # p50 / p90 / p99 of every round's inter-token gaps
    new_tokens: int
    peak_rss_mb: float
    size_on_disk_mb: float
    speculative: dict[str, object] | None = None  # mode, tokens/s, speedup over plain, acceptance
    budget_failures: list[str] = field(default_factory=list)
    rounds: int = 1
    ttft_spread_ms: dict[int, dict[str, float]] = field(default_factory=dict)  # prompt length -> spread()
    decode_tokens_per_s_spread: dict[str, float] = field(default_factory=dict)  # spread() of per-round rates
    # The raw measurements behind the medians (the report's distributions): per prompt length one TTFT per
    # round, and per round the gap before each token after the first.
    ttft_rounds_ms: dict[int, list[float]] = field(default_factory=dict)
    token_latencies_ms: list[list[float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return row_dict(self, ("ttft_ms", "ttft_spread_ms", "ttft_rounds_ms"))


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


def round_rates(per_round: list[list[float]]) -> list[float]:
    """Tokens/s of each round, from its inter-token gaps (seconds)."""
    return [len(lat) / sum(lat) for lat in per_round]


def _median_rate(per_round: list[list[float]]) -> float:
    """Median tokens/s over rounds."""
    return statistics.median(round_rates(per_round))


def speculative_summary(model: Model, ids: list[int], plain_tokens: list[int], plain_rate: float, mode: str,
                        draft_len: int, new_tokens: int, rounds: int) -> dict[str, object]:
    gen = GenerationConfig(new_tokens, stop_token_ids=(), speculative=mode, draft_len=draft_len)
    runs = [decode_latencies(model, ids, gen) for _ in range(rounds)]
    rate = _median_rate([lat for lat, _ in runs])
    stats = model.last_stats
    return {"mode": mode, "draft_len": draft_len, "decode_tokens_per_s": rate, "speedup": rate / plain_rate,
            "acceptance_rate": stats.acceptance_rate, "accepted_per_pass": stats.accepted_per_pass,
            "identical_output": runs[-1][1] == plain_tokens}


def check_lengths(prompt_lengths: tuple[int, ...], new_tokens: int, max_length: int | None = None) -> None:
    """Refuse prompt lengths the benchmark cannot run, naming the value (before loading when max_length is None,
    against the loaded context after)."""
    if not prompt_lengths:
        raise EdgekitError("--prompt-lengths: give at least one prompt length")
    for n in prompt_lengths:
        if n < 1:
            raise EdgekitError(f"--prompt-lengths: {n} is not a prompt length (at least 1 token)")
        if max_length is not None and n >= max_length:
            raise EdgekitError(f"--prompt-lengths: {n} tokens do not fit the model's context of {max_length} "
                               "tokens (the first token needs one more)")
    if max_length is not None and decode_prompt_length(prompt_lengths) + new_tokens > max_length:
        raise EdgekitError(f"--new-tokens: {new_tokens} new tokens after a {decode_prompt_length(prompt_lengths)}"
                           f"-token prompt do not fit the model's context of {max_length} tokens")


def decode_prompt_length(prompt_lengths: tuple[int, ...]) -> int:
    """Decode speed is measured after a prompt of this many tokens."""
    return min(128, max(prompt_lengths))


def run_bench(path: str | Path, prompt_lengths: tuple[int, ...] = (16, 128, 512), new_tokens: int = 64,
              rounds: int = 3, device: str = "cpu", fast: bool = False, threads: int = 0,
              speculative: str | None = None, draft_len: int = 4, float_passes: bool = False) -> BenchReport:
    """Load the package once with `threads` (0: onnxruntime's default) and measure it."""
    check_lengths(prompt_lengths, new_tokens)
    t0 = time.perf_counter()
    model = Model(path, device=device, fast=fast, threads=threads, max_length=max(prompt_lengths) + new_tokens + 1,
                  draft=speculative == "draft", float_passes=float_passes)
    load_s = time.perf_counter() - t0
    check_lengths(prompt_lengths, new_tokens, model.max_length)
    time_to_first_token(model, _prompt_ids(model, min(8, model.max_length - 1)))  # warm-up: first runs allocate
    ttft_rounds = {n: [time_to_first_token(model, _prompt_ids(model, n)) for _ in range(rounds)]
                   for n in prompt_lengths}
    decode_ids = _prompt_ids(model, decode_prompt_length(prompt_lengths))
    runs = [decode_latencies(model, decode_ids, GenerationConfig(new_tokens, stop_token_ids=())) for _ in range(rounds)]
    per_round = [lat for lat, _ in runs]
    rates = round_rates(per_round)
    rate = statistics.median(rates)
    spec = speculative and speculative_summary(model, decode_ids, runs[-1][1], rate, speculative, draft_len,
                                               new_tokens, rounds)
    return BenchReport(
        device=model.provider, threads=threads,
        mode=FAST_MODE if fast else "exact" + (", float32 multi-token passes" if float_passes else ""),
        load_s=load_s, ttft_ms={n: statistics.median(v) for n, v in ttft_rounds.items()},
        decode_tokens_per_s=rate, speculative=spec or None,
        token_latency_ms=percentiles([x * 1e3 for lat in per_round for x in lat]),
        new_tokens=new_tokens, peak_rss_mb=peak_rss_mb(), size_on_disk_mb=size_on_disk_mb(path), rounds=rounds,
        ttft_spread_ms={n: spread(v) for n, v in ttft_rounds.items()}, decode_tokens_per_s_spread=spread(rates),
        ttft_rounds_ms=ttft_rounds, token_latencies_ms=[[x * 1e3 for x in lat] for lat in per_round],
    )


def run_sweep(path: str | Path, thread_counts: tuple[int, ...] = (0,), prompt_lengths: tuple[int, ...] = (16, 128, 512),
              **kwargs: Any) -> BenchResult:
    """run_bench once per thread count (keyword arguments as run_bench's), with the environment around them."""
    check_lengths(prompt_lengths, int(kwargs.get("new_tokens", 64)))
    return sweep(path, thread_counts, lambda t: run_bench(path, prompt_lengths, threads=t, **kwargs))


def check_budgets(report: BenchReport, max_ttft_ms: float | None, min_tokens_per_s: float | None,
                  max_rss_mb: float | None) -> None:
    """Record every missed budget in report.budget_failures (TTFT is checked at every prompt length)."""
    if max_ttft_ms is not None:
        for n, ms in report.ttft_ms.items():
            if ms > max_ttft_ms:
                report.budget_failures.append(f"TTFT {ms:.1f} ms at {n} tokens > {max_ttft_ms:g} ms")
    if min_tokens_per_s is not None and report.decode_tokens_per_s < min_tokens_per_s:
        report.budget_failures.append(f"decode {report.decode_tokens_per_s:.1f} tokens/s < {min_tokens_per_s:g}")
    check_rss(report, max_rss_mb)
