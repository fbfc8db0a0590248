"""What every `edgekit bench` shares, decoder or encoder: spreads and percentiles of per-round timings,
memory and size, and a thread sweep with the environment around it."""

from __future__ import annotations

import resource
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from edgekit.runtime.bench_environment import bench_environment, load_average

PERCENTILES = ("p50", "p90", "p99")
FAST_MODE = "fast (int8 activations)"  # a row's `mode` in fast mode; else "exact"


class BenchRow(Protocol):
    """One measured configuration (one thread count) of either benchmark."""

    device: str
    threads: int
    peak_rss_mb: float
    budget_failures: list[str]

    def to_dict(self) -> dict[str, object]: ...


def spread(values: list[float]) -> dict[str, float]:
    """Median, quartiles (q1, q3) and range (min, max) of per-round measurements, in their own unit."""
    q1, median, q3 = (float(x) for x in np.percentile(values, [25, 50, 75]))
    return {"median": median, "q1": q1, "q3": q3, "min": float(min(values)), "max": float(max(values))}


def percentiles(values: list[float]) -> dict[str, float]:
    """p50 / p90 / p99 of latencies, in their own unit."""
    return {p: float(np.percentile(values, int(p[1:]))) for p in PERCENTILES}


def peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


def size_on_disk_mb(path: str | Path) -> float:
    """Every file of a package folder (or one model file, such as a GGUF), in MB (10^6 bytes)."""
    path = Path(path)
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
    return sum(f.stat().st_size for f in files) / 1e6


def row_dict(row: BenchRow, int_keyed: tuple[str, ...]) -> dict[str, object]:
    """A row's fields for JSON: the dicts keyed by a number (prompt length, batch size) keyed by its text, and
    `passed`."""
    d = asdict(row)  # type: ignore[call-overload]
    for key in int_keyed:
        d[key] = {str(k): v for k, v in d[key].items()}
    d["passed"] = not row.budget_failures
    return d


def check_rss(row: BenchRow, max_rss_mb: float | None) -> None:
    if max_rss_mb is not None and row.peak_rss_mb > max_rss_mb:
        row.budget_failures.append(f"peak RSS {row.peak_rss_mb:.0f} MB > {max_rss_mb:g} MB")


@dataclass
class BenchResult:
    """A bench run: the environment and one row per thread count (the package reloaded for each)."""

    environment: dict[str, Any]
    rows: list[Any]  # BenchRow: runtime.bench.BenchReport or runtime.bench_encoder.EncoderBenchReport

    @property
    def budget_failures(self) -> list[str]:
        if len(self.rows) == 1:
            return list(self.rows[0].budget_failures)
        return [f"threads {r.threads or 'default'}: {f}" for r in self.rows for f in r.budget_failures]

    def to_dict(self) -> dict[str, object]:
        """One thread count: that row's fields at the top level (the format before sweeps existed) plus
        `environment`; a sweep: `environment`, `rows`, `budget_failures` and `passed`."""
        if len(self.rows) == 1:
            return {**self.rows[0].to_dict(), "environment": self.environment}
        return {"environment": self.environment, "rows": [r.to_dict() for r in self.rows],
                "budget_failures": self.budget_failures, "passed": not self.budget_failures}


def sweep(path: str | Path, thread_counts: tuple[int, ...], measure: Callable[[int], BenchRow]) -> BenchResult:
    """`measure(threads)` once per thread count, with the environment and the load averages around them.
    Peak RSS is the process's: a later row's includes the earlier rows' peaks."""
    load_before = load_average()
    rows = [measure(t) for t in thread_counts]
    environment = bench_environment(path, rows[0].device, list(thread_counts))
    environment["load_average_start"] = load_before
    environment["load_average_end"] = load_average()
    return BenchResult(environment, rows)
