"""`edgekit bench --format table|json|md|csv`: one BenchResult, four renderings.

Every rendering but JSON reads the same column list (`columns`), so a new measurement is one new column.
JSON is the whole record (raw per-round numbers and the environment included); table, Markdown and CSV
show the medians with their quartiles.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable

from edgekit.runtime.bench import BenchReport, BenchResult

FORMATS = ("table", "json", "md", "csv")

Column = tuple[str, Callable[[BenchReport], str]]


def _iqr(s: dict[str, float], fmt: str) -> str:
    return f"{s['median']:{fmt}} [{s['q1']:{fmt}}-{s['q3']:{fmt}}]"


def columns(result: BenchResult) -> list[Column]:
    """(header, cell) per column: medians with [q1-q3] over rounds; TTFT per prompt length in ms."""
    lengths = list(result.rows[0].ttft_ms)
    cols: list[Column] = [
        ("threads", lambda r: str(r.threads or "default")),
        ("mode", lambda r: r.mode),
        ("load s", lambda r: f"{r.load_s:.2f}"),
    ]
    cols += [(f"TTFT@{n} ms", lambda r, n=n: _iqr(r.ttft_spread_ms[n], ".1f")) for n in lengths]
    cols += [
        ("decode tokens/s", lambda r: _iqr(r.decode_tokens_per_s_spread, ".1f")),
        ("token ms p50/p90/p99", lambda r: "/".join(f"{r.token_latency_ms[p]:.2f}" for p in ("p50", "p90", "p99"))),
        ("peak RSS MB", lambda r: f"{r.peak_rss_mb:.0f}"),
        ("size MB", lambda r: f"{r.size_on_disk_mb:.1f}"),
        ("budgets", lambda r: "met" if not r.budget_failures else "MISSED"),
    ]
    if any(r.speculative for r in result.rows):
        cols.append(("speculative tokens/s", lambda r: f"{r.speculative['decode_tokens_per_s']:.1f} "
                     f"({r.speculative['speedup']:.2f}x)" if r.speculative else "-"))
    return cols


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
    lines += [(f"TTFT, {n}-token prompt", _spread_text(r.ttft_spread_ms[n], "ms", r.rounds)) for n in r.ttft_ms]
    lines += [
        (f"decode, {r.new_tokens} new tokens", _spread_text(r.decode_tokens_per_s_spread, "tokens/s", r.rounds)),
        ("token latency p50/p90/p99", " / ".join(f"{r.token_latency_ms[p]:.2f}" for p in ("p50", "p90", "p99"))
         + " ms"),
        ("peak RSS", f"{r.peak_rss_mb:.0f} MB"),
        ("size on disk", f"{r.size_on_disk_mb:.1f} MB"),
    ]
    if r.speculative:
        lines.append(_speculative_line(r))
    return _aligned(lines) + "\n" + _budget_line(result, width=max(len(k) for k, _ in lines))


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


def csv_text(result: BenchResult) -> str:
    """A header and a line per thread count, numbers unformatted (TTFT median, q1, q3 per prompt length), with
    the package and machine on every line so that files from several runs concatenate."""
    env = result.environment
    lengths = list(result.rows[0].ttft_ms)
    header = ["package", "manifest_sha256", "cpu", "logical_cores", "onnxruntime_version", "execution_provider",
              "threads", "mode", "load_s"]
    header += [f"ttft_ms_{n}{suffix}" for n in lengths for suffix in ("", "_q1", "_q3")]
    header += ["decode_tokens_per_s", "decode_tokens_per_s_q1", "decode_tokens_per_s_q3", "token_ms_p50",
               "token_ms_p90", "token_ms_p99", "peak_rss_mb", "size_on_disk_mb", "rounds", "new_tokens", "passed"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for r in result.rows:
        row: list[object] = [env["package"]["path"], env["package"]["manifest_sha256"], env["cpu"],
                             env["logical_cores"], env["onnxruntime_version"], env["execution_provider"], r.threads,
                             r.mode, r.load_s]
        row += [r.ttft_spread_ms[n][k] for n in lengths for k in ("median", "q1", "q3")]
        d = r.decode_tokens_per_s_spread
        row += [d["median"], d["q1"], d["q3"], *(r.token_latency_ms[p] for p in ("p50", "p90", "p99")),
                r.peak_rss_mb, r.size_on_disk_mb, r.rounds, r.new_tokens, not r.budget_failures]
        writer.writerow(row)
    return buf.getvalue().rstrip("\n")


def render(result: BenchResult, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(result.to_dict(), indent=2)
    return {"table": table, "md": markdown, "csv": csv_text}[fmt](result)
