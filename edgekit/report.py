"""`edgekit report`: bench (and validate) JSON results as one self-contained HTML page of plotly charts.

Workstation side: it needs plotly (`pip install 'edgekit[report]'`) and the runtime never imports it.
Input files are told apart by their keys: a bench result has `decode_tokens_per_s` (one thread count) or
`rows` (a sweep); a validate result has `ppl_delta`. A validate result belongs to the bench results of the
same package: same manifest sha256, else same package path (both in its `package` block).
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError


@dataclass
class BenchRow:
    """One measured configuration of one package, as the charts need it."""

    label: str
    source_file: str
    row: dict[str, Any]  # a BenchReport.to_dict()
    environment: dict[str, Any]
    validation: dict[str, Any] | None = None

    @property
    def package(self) -> dict[str, Any]:
        return self.environment.get("package", {})


@dataclass
class Results:
    bench: list[BenchRow] = field(default_factory=list)
    validations: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (file, validate JSON)
    unmatched: list[str] = field(default_factory=list)  # validate files no bench result shares a package with


def result_kind(data: object) -> str:
    """'bench' or 'validate' by the keys the JSON has, 'encoder bench' for an encoder's, '' for neither."""
    if not isinstance(data, dict):
        return ""
    if "ppl_delta" in data and "greedy_identical" in data:
        return "validate"
    rows = data.get("rows")
    first = rows[0] if isinstance(rows, list) and rows and isinstance(rows[0], dict) else data
    if "sentences_per_s" in first:
        return "encoder bench"
    if "decode_tokens_per_s" in data or ("rows" in data and "environment" in data):
        return "bench"
    return ""


def recipe_text(package: dict[str, Any]) -> str:
    """`rtn 4-bit g64, 4.56 bpw, {"int4g64": 210, "int8g64": 1}` from a package identity block."""
    r = package.get("recipe") or {}
    parts = [str(r.get("method", "?"))]
    if r.get("bits"):
        parts[0] += f" {r['bits']}-bit g{r.get('group_size')}" + (" sym" if r.get("symmetric") else "")
    if r.get("bits_per_weight"):
        parts.append(f"{r['bits_per_weight']:.2f} bpw")
    if r.get("plan"):
        parts.append(str(r["plan"]))
    if r.get("summary"):
        parts.append(json.dumps(r["summary"]))
    return ", ".join(parts)


def load_results(paths: list[str | Path]) -> Results:
    """Read and sort the files; match each validate result to the bench rows of its package."""
    results = Results()
    for path in paths:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except OSError as exc:
            raise EdgekitError(f"cannot read ({exc.strerror})", path) from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise EdgekitError(f"not a JSON file ({exc})", path) from exc
        kind = result_kind(data)
        if kind == "validate":
            results.validations.append((str(path), data))
        elif kind == "bench":
            environment = data.get("environment", {})
            rows = data.get("rows", [data])
            for row in rows:
                name = Path(environment.get("package", {}).get("path") or path.stem).name
                threads = f", {row.get('threads') or 'default'} threads" if len(rows) > 1 else ""
                results.bench.append(BenchRow(f"{name}{threads}", str(path), row, environment))
        elif kind == "encoder bench":
            raise EdgekitError("an encoder package's bench result: the report charts text decoders' results only",
                               path)
        else:
            raise EdgekitError("neither a `bench --format json` nor a `validate --json` result "
                               "(no decode_tokens_per_s, rows or ppl_delta key)", path)
    if not results.bench:
        raise EdgekitError("no bench result among the files: give at least one `bench --format json` output")
    _disambiguate(results.bench)
    for file, v in results.validations:
        matched = [b for b in results.bench if same_package(b.package, v.get("package") or {})]
        for b in matched:
            b.validation = v
        if not matched:
            results.unmatched.append(file)
    return results


def same_package(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if a.get("manifest_sha256") and b.get("manifest_sha256"):
        return a["manifest_sha256"] == b["manifest_sha256"]
    return bool(a.get("path")) and a.get("path") == b.get("path")


def _disambiguate(rows: list[BenchRow]) -> None:
    """Packages of the same folder name (pkg/ under two parents) get their file's name added."""
    seen: dict[str, int] = {}
    for r in rows:
        seen[r.label] = seen.get(r.label, 0) + 1
    for r in rows:
        if seen[r.label] > 1:
            r.label += f" ({Path(r.source_file).name})"


def _plotly() -> Any:
    try:
        import plotly.graph_objects as go
    except ImportError:
        raise EdgekitError("edgekit report needs plotly: pip install 'edgekit[report]'") from None
    return go


def latency_figures(results: Results) -> list[Any]:
    """TTFT per prompt length (a box per bench row over its rounds) and per-token latency histograms."""
    go = _plotly()
    ttft = go.Figure()
    tokens = go.Figure()
    for b in results.bench:
        rounds = b.row.get("ttft_rounds_ms") or {n: [ms] for n, ms in b.row["ttft_ms"].items()}
        xs = [f"{n} tokens" for n, values in rounds.items() for _ in values]
        ttft.add_trace(go.Box(x=xs, y=[v for values in rounds.values() for v in values], name=b.label,
                              boxpoints="all", jitter=0.3, pointpos=0))
        gaps = [ms for r in b.row.get("token_latencies_ms", []) for ms in r]
        if gaps:
            tokens.add_trace(go.Histogram(x=gaps, name=b.label, opacity=0.6, nbinsx=40))
    _layout(ttft, "Time to first token per prompt length (every round)", "prompt length", "TTFT (ms)",
            boxmode="group")
    _layout(tokens, "Per-token decode latency (every gap of every round)", "latency between tokens (ms)", "tokens",
            barmode="overlay")
    return [ttft, tokens]


def _layout(fig: Any, title: str, x: str, y: str, **kwargs: Any) -> None:
    """The look all charts share: white template, tight margins, legend above the plot."""
    fig.update_layout(title={"text": title, "font": {"size": 15}}, xaxis_title=x, yaxis_title=y,
                      template="plotly_white", margin={"l": 60, "r": 20, "t": 70, "b": 50},
                      legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "x": 0}, **kwargs)


def _hover(b: BenchRow) -> str:
    r = b.row
    d = r.get("decode_tokens_per_s_spread") or {}
    spread = f" [{d['q1']:.1f}-{d['q3']:.1f}]" if d else ""
    lines = [f"<b>{html.escape(b.label)}</b>", html.escape(recipe_text(b.package)),
             f"{r['decode_tokens_per_s']:.1f} tokens/s{spread}, {r['size_on_disk_mb']:.1f} MB",
             f"{r.get('mode', '')}, {r.get('threads') or 'default'} threads"]
    if b.validation:
        v = b.validation
        lines.append(f"perplexity {v['ppl_runtime']:.3f} vs {v['ppl_reference']:.3f} ({v['ppl_delta']:+.3%}), "
                     f"top-1 {v['top1_agreement']:.1%}")
    else:
        lines.append("no validate result")
    return "<br>".join(lines)


def frontier_figure(results: Results) -> Any:
    """Size on disk (x) against decode tokens/s (y, bars q1-q3); colour: perplexity change from validate."""
    go = _plotly()
    fig = go.Figure()
    for validated in (True, False):
        rows = [b for b in results.bench if (b.validation is not None) == validated]
        if not rows:
            continue
        spreads = [b.row.get("decode_tokens_per_s_spread") or {} for b in rows]
        rates = [b.row["decode_tokens_per_s"] for b in rows]
        marker: dict[str, Any] = {"size": 16, "line": {"width": 1, "color": "#333"}}
        if validated:
            marker.update(color=[100 * b.validation["ppl_delta"] for b in rows], colorscale="Viridis",
                          reversescale=True, showscale=True, colorbar={"title": "perplexity<br>change (%)"})
        else:
            marker.update(color="lightgrey", symbol="diamond")
        fig.add_trace(go.Scatter(
            x=[b.row["size_on_disk_mb"] for b in rows], y=rates, mode="markers+text",
            text=[b.label for b in rows], textposition="top center", marker=marker,
            name="validated" if validated else "not validated",
            hovertext=[_hover(b) for b in rows], hoverinfo="text",
            error_y={"type": "data", "symmetric": False,
                     "array": [s.get("q3", r) - r for s, r in zip(spreads, rates)],
                     "arrayminus": [r - s.get("q1", r) for s, r in zip(spreads, rates)]}))
    _layout(fig, "Size, speed and quality (hover for the recipe)", "size on disk (MB)",
            "decode tokens/s (median, bars: quartiles)")
    # Room at both ends for the labels above the markers (autorange fits the markers only).
    sizes = [b.row["size_on_disk_mb"] for b in results.bench]
    pad = max(0.12 * (max(sizes) - min(sizes)), 0.05 * max(sizes), 0.01)
    fig.update_xaxes(range=[min(sizes) - pad, max(sizes) + pad])
    return fig


def summary_table(results: Results) -> str:
    """An HTML table of the medians, one line per bench row."""
    lengths = list(dict.fromkeys(n for b in results.bench for n in b.row["ttft_ms"]))
    head = ["result", "recipe", "size MB", *(f"TTFT@{n} ms" for n in lengths), "decode tokens/s",
            "perplexity change", "machine"]
    lines = []
    for b in results.bench:
        env = b.environment
        ppl = f"{b.validation['ppl_delta']:+.3%}" if b.validation else "-"
        cells = [b.label, recipe_text(b.package), f"{b.row['size_on_disk_mb']:.1f}",
                 *(f"{b.row['ttft_ms'][n]:.1f}" if n in b.row["ttft_ms"] else "-" for n in lengths),
                 f"{b.row['decode_tokens_per_s']:.1f}", ppl,
                 (f"{env.get('cpu', '?')}, {env.get('logical_cores', '?')} cores, onnxruntime "
                 f"{env.get('onnxruntime_version', '?')}")]
        lines.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return ("<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr></thead><tbody>"
            + "".join(lines) + "</tbody></table>")


def environment_panel(results: Results) -> str:
    """Where each bench result ran: machine, software, threads, load average before and after."""
    items = []
    for file in dict.fromkeys(b.source_file for b in results.bench):
        env = next(b.environment for b in results.bench if b.source_file == file)
        pkg = env.get("package", {})
        load = " → ".join("/".join(f"{x:.2f}" for x in la) for la in (env.get("load_average_start"),
                                                                       env.get("load_average_end")) if la)
        facts = [f"{env.get('cpu', '?')}, {env.get('logical_cores', '?')} logical cores",
                 (f"edgekit {env.get('edgekit_version', '?')}, onnxruntime {env.get('onnxruntime_version', '?')}, "
                 f"Python {env.get('python', '?')}, {env.get('execution_provider', '?')}"),
                 f"threads {env.get('threads', '?')} (used {env.get('threads_used', '?')}), load average {load or '?'}",
                 f"package {pkg.get('path', '?')}, manifest sha256 {str(pkg.get('manifest_sha256'))[:12]}"]
        items.append(f"<li><b>{html.escape(Path(file).name)}</b><br>" + "<br>".join(html.escape(f) for f in facts)
                     + "</li>")
    return '<div class="env"><h3>Environment</h3><ul>' + "".join(items) + "</ul></div>"


PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:1em}} h1{{font-size:22px;margin:0 0 8px}} table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left}} .note{{color:#a40}} .env{{font-size:13px}} .env li{{margin-bottom:8px}}
.charts{{display:grid;grid-template-columns:repeat(2,minmax(0,1fr));gap:8px;margin-top:12px}}
@media (max-width:1000px){{.charts{{grid-template-columns:minmax(0,1fr)}}}}</style>
</head>
<body><h1>{title}</h1>{notes}{table}<div class="charts">{charts}</div></body></html>
"""


def build_html(results: Results, title: str = "edgekit benchmark report") -> str:
    """The whole page; plotly.js is embedded once (the page works offline)."""
    figures = [frontier_figure(results), *latency_figures(results)]
    config = {"responsive": True, "displaylogo": False}
    charts = "".join("<div>" + fig.to_html(full_html=False, include_plotlyjs=(i == 0), default_height=380,
                                           config=config) + "</div>" for i, fig in enumerate(figures))
    charts += environment_panel(results)
    notes = "".join(f'<p class="note">{html.escape(f)}: no bench result of the same package '
                    "(manifest sha256 or path); not shown</p>" for f in results.unmatched)
    return PAGE.format(title=html.escape(title), notes=notes, table=summary_table(results), charts=charts)


def write_report(paths: list[str | Path], out: str | Path) -> Results:
    results = load_results(paths)
    Path(out).write_text(build_html(results), encoding="utf-8")
    return results
