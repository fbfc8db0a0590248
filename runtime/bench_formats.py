"""`edgekit bench --format table|json|md|csv`: one BenchResult, four renderings.

Table rows and Markdown read one column list (`columns`), CSV one field list (`csv_fields`), each made of
the columns both benchmarks share (threads, mode, load; memory, size, budgets) around those of the row's kind
(decoder: TTFT and decode speed; encoder: sentences/s and latency per batch size), so a new measurement is
one new column. JSON is the whole record (raw per-round numbers and the environment included); table,
Markdown and CSV show the medians with their quartiles.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from typing import Any

from edgekit.runtime.bench import BenchReport
from edgekit.runtime.bench_common import PERCENTILES, BenchResult
from edgekit.runtime.bench_encoder import EncoderBenchReport

FORMATS = ("table", "json", "md", "csv")

Row = Any  # BenchReport | EncoderBenchReport
Column = tuple[str, Callable[[Row], str]]
Field = tuple[str, Callable[[Row], object]]


def _iqr(s: dict[str, float], fmt: str) -> str:
    return f"{s['median']:{fmt}} [{s['q1']:{fmt}}-{s['q3']:{fmt}}]"


def _is_encoder(result: BenchResult) -> bool:
    return isinstance(result.rows[0], EncoderBenchReport)


def _percentile_text(latency: dict[str, float], sep: str = "/") -> str:
    return sep.join(f"{latency[p]:.2f}" for p in PERCENTILES)


def columns(result: BenchResult) -> list[Column]:
    """(header, cell) per column: medians with [q1-q3] over rounds; TTFT per prompt length in ms, or sentences/s
    and latency per batch size."""
    cols: list[Column] = [
        ("threads", lambda r: str(r.threads or "default")),
        ("mode", lambda r: r.mode),
        ("load s", lambda r: f"{r.load_s:.2f}"),
    ]
    cols += _encoder_columns(result) if _is_encoder(result) else _decoder_columns(result)
    cols += [
        ("peak RSS MB", lambda r: f"{r.peak_rss_mb:.0f}"),
        ("size MB", lambda r: f"{r.size_on_disk_mb:.1f}"),
        ("budgets", lambda r: "met" if not r.budget_failures else "MISSED"),
    ]
    if any(getattr(r, "speculative", None) for r in result.rows):
        cols.append(("speculative tokens/s", lambda r: f"{r.speculative['decode_tokens_per_s']:.1f} "
                     f"({r.speculative['speedup']:.2f}x)" if r.speculative else "-"))
    return cols


def _decoder_columns(result: BenchResult) -> list[Column]:
    cols: list[Column] = [(f"TTFT@{n} ms", lambda r, n=n: _iqr(r.ttft_spread_ms[n], ".1f"))
                          for n in result.rows[0].ttft_ms]
    return cols + [("decode tokens/s", lambda r: _iqr(r.decode_tokens_per_s_spread, ".1f")),
                   ("token ms p50/p90/p99", lambda r: _percentile_text(r.token_latency_ms))]


def _encoder_columns(result: BenchResult) -> list[Column]:
    sizes = list(result.rows[0].sentences_per_s)
    cols: list[Column] = [(f"sentences/s@{b}", lambda r, b=b: _iqr(r.sentences_per_s_spread[b], ".1f"))
                          for b in sizes]
    return cols + [(f"batch ms p50/p90/p99@{b}", lambda r, b=b: _percentile_text(r.batch_latency_ms[b]))
                   for b in sizes]


def environment_lines(result: BenchResult) -> list[tuple[str, str]]:
    env = result.environment
    pkg = env["package"]
    recipe = pkg["recipe"]
    bpw = f", {recipe['bits_per_weight']:.2f} bits/weight" if recipe.get("bits_per_weight") else ""
    load = "/".join(f"{x:.2f}" for x in env["load_average_start"] or []) or "n/a"
    load_end = "/".join(f"{x:.2f}" for x in env["load_average_end"] or []) or "n/a"
    return [
        ("package", f"{pkg['path']} (manifest sha256 {pkg['manifest_sha256'][:12]})"),
        ("source", (f"{pkg['source']['name']} ({pkg['source']['kind']}), {recipe['method']}: "
                   f"{json.dumps(recipe['summary'])}{bpw}")),
        ("machine", (f"{env['cpu']}, {env['logical_cores']} logical cores ({env['physical_cores']} physical), "
                    f"{env['platform']}")),
        ("software", (f"edgekit {env['edgekit_version']}, onnxruntime {env['onnxruntime_version']}, "
                     f"Python {env['python']}, {env['execution_provider']}")),
        ("load average", f"{load} at start, {load_end} at end (1/5/15 min)"),
    ]


def _aligned(rows: list[tuple[str, str]]) -> str:
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


def _speculative_line(r: BenchReport) -> tuple[str, str]:
    sp = r.speculative or {}
    return (f"speculative ({sp['mode']}, k={sp['draft_len']})",
            (f"{sp['decode_tokens_per_s']:.1f} tokens/s, {sp['speedup']:.2f}x plain, acceptance "
            f"{sp['acceptance_rate']:.0%}, {sp['accepted_per_pass']:.2f} accepted/pass, "
            f"output {'identical' if sp['identical_output'] else 'DIFFERENT'}"))


def _spread_text(s: dict[str, float], unit: str, rounds: int) -> str:
    if rounds == 1:
        return f"{s['median']:.1f} {unit}"
    return (f"{s['median']:.1f} {unit} (IQR {s['q1']:.1f}-{s['q3']:.1f}, range {s['min']:.1f}-{s['max']:.1f}, "
            f"{rounds} rounds)")


def table(result: BenchResult) -> str:
    """One thread count: a key/value list; a sweep: a row per thread count. The environment above either."""
    lines = environment_lines(result)
    if len(result.rows) > 1:
        return "\n".join([_aligned(lines), "", _grid([(h, [cell(r) for r in result.rows]) for h, cell in
                                                       columns(result)]), "", _budget_line(result)])
    r = result.rows[0]
    lines += [("device", f"{r.device} ({r.mode}, {r.threads or 'default'} threads)"), ("load", f"{r.load_s:.2f} s")]
    lines += _encoder_lines(r) if _is_encoder(result) else _decoder_lines(r)
    lines += [("peak RSS", f"{r.peak_rss_mb:.0f} MB"), ("size on disk", f"{r.size_on_disk_mb:.1f} MB")]
    if getattr(r, "speculative", None):
        lines.append(_speculative_line(r))
    return _aligned(lines) + "\n" + _budget_line(result, width=max(len(k) for k, _ in lines))


def _decoder_lines(r: BenchReport) -> list[tuple[str, str]]:
    lines = [(f"TTFT, {n}-token prompt", _spread_text(r.ttft_spread_ms[n], "ms", r.rounds)) for n in r.ttft_ms]
    return lines + [
        (f"decode, {r.new_tokens} new tokens", _spread_text(r.decode_tokens_per_s_spread, "tokens/s", r.rounds)),
        ("token latency p50/p90/p99", _percentile_text(r.token_latency_ms, " / ") + " ms"),
    ]


def _encoder_lines(r: EncoderBenchReport) -> list[tuple[str, str]]:
    lines = [("embedding", f"{r.dimension} dimensions, {r.max_seq_length} tokens at most, {r.sentences} sentences")]
    for b in r.sentences_per_s:
        lines += [(f"batch {b}", _spread_text(r.sentences_per_s_spread[b], "sentences/s", r.rounds)),
                  (f"batch {b} latency p50/p90/p99", _percentile_text(r.batch_latency_ms[b], " / ") + " ms")]
    return lines


def _budget_line(result: BenchResult, width: int = 0) -> str:
    failures = result.budget_failures
    return f"{'budgets':<{width}}  " + ("all met" if not failures else "MISSED: " + "; ".join(failures))


def _grid(cols: list[tuple[str, list[str]]]) -> str:
    widths = [max(len(h), *(len(c) for c in cells)) for h, cells in cols]
    out = ["  ".join(f"{h:<{w}}" for (h, _), w in zip(cols, widths))]
    for i in range(len(cols[0][1])):
        out.append("  ".join(f"{cells[i]:<{w}}" for (_, cells), w in zip(cols, widths)))
    return "\n".join(line.rstrip() for line in out)


def markdown(result: BenchResult) -> str:
    """The environment as a list, then a Markdown table with a row per thread count."""
    cols = columns(result)
    out = [f"- **{k}**: {v}" for k, v in environment_lines(result)] + [""]
    out.append("| " + " | ".join(h for h, _ in cols) + " |")
    out.append("|" + "---|" * len(cols))
    out += ["| " + " | ".join(cell(r).replace("|", "\\|") for _, cell in cols) + " |" for r in result.rows]
    if result.budget_failures:
        out += ["", "Budgets missed: " + "; ".join(result.budget_failures)]
    return "\n".join(out)


def _spread_fields(name: str, get: Callable[[Row], dict[str, float]]) -> list[Field]:
    """`name`, `name_q1`, `name_q3`: a spread's median and quartiles."""
    return [(name + suffix, lambda r, k=k: get(r)[k]) for suffix, k in (("", "median"), ("_q1", "q1"), ("_q3", "q3"))]


def csv_fields(result: BenchResult) -> list[Field]:
    """(header, value) per CSV field of a row, numbers unformatted."""
    fields: list[Field] = [("threads", lambda r: r.threads), ("mode", lambda r: r.mode), ("load_s", lambda r: r.load_s)]
    first = result.rows[0]
    if _is_encoder(result):
        for b in first.sentences_per_s:
            fields += _spread_fields(f"sentences_per_s_{b}", lambda r, b=b: r.sentences_per_s_spread[b])
            fields += [(f"batch_ms_{b}_{p}", lambda r, b=b, p=p: r.batch_latency_ms[b][p]) for p in PERCENTILES]
    else:
        for n in first.ttft_ms:
            fields += _spread_fields(f"ttft_ms_{n}", lambda r, n=n: r.ttft_spread_ms[n])
        fields += _spread_fields("decode_tokens_per_s", lambda r: r.decode_tokens_per_s_spread)
        fields += [(f"token_ms_{p}", lambda r, p=p: r.token_latency_ms[p]) for p in PERCENTILES]
    fields += [("peak_rss_mb", lambda r: r.peak_rss_mb), ("size_on_disk_mb", lambda r: r.size_on_disk_mb),
               ("rounds", lambda r: r.rounds)]
    if not _is_encoder(result):
        fields.append(("new_tokens", lambda r: r.new_tokens))
    return [*fields, ("passed", lambda r: not r.budget_failures)]


def csv_text(result: BenchResult) -> str:
    """A header and a line per thread count (csv_fields), with the package and machine on every line so that
    files from several runs concatenate."""
    env = result.environment
    machine = {"package": env["package"]["path"], "manifest_sha256": env["package"]["manifest_sha256"],
               **{k: env[k] for k in ("cpu", "logical_cores", "onnxruntime_version", "execution_provider")}}
    fields = csv_fields(result)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*machine, *(name for name, _ in fields)])
    for r in result.rows:
        writer.writerow([*machine.values(), *(value(r) for _, value in fields)])
    return buf.getvalue().rstrip("\n")


def render(result: BenchResult, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(result.to_dict(), indent=2)
    return {"table": table, "md": markdown, "csv": csv_text}[fmt](result)
