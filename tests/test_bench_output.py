"""`edgekit bench`: spreads, raw measurements, the environment block, thread sweeps, output formats, bad lengths."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

from click.testing import CliRunner

from edgekit.cli import main

FAST = ["--rounds", "2", "--prompt-lengths", "8,16", "--new-tokens", "4"]


def test_json_has_spreads_raw_rounds_and_environment(tiny_gguf_pkg: Path) -> None:
    result = CliRunner().invoke(main, ["bench", str(tiny_gguf_pkg), *FAST, "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["rounds"] == 2
    for n in ("8", "16"):
        s = report["ttft_spread_ms"][n]
        assert s["min"] <= s["q1"] <= s["median"] <= s["q3"] <= s["max"]
        assert s["median"] == report["ttft_ms"][n]
        assert len(report["ttft_rounds_ms"][n]) == 2
    assert report["decode_tokens_per_s_spread"]["median"] == report["decode_tokens_per_s"]
    assert [len(r) for r in report["token_latencies_ms"]] == [3, 3]  # gaps after the first of 4 tokens
    env = report["environment"]
    for key in ("edgekit_version", "onnxruntime_version", "python", "platform", "cpu", "logical_cores",
                "threads", "threads_used", "execution_provider", "load_average_start", "load_average_end"):
        assert key in env, key
    assert env["threads"] == [0] and env["execution_provider"] == "CPUExecutionProvider"
    pkg = env["package"]
    assert pkg["path"] == str(tiny_gguf_pkg.resolve()) and len(pkg["manifest_sha256"]) == 64
    assert pkg["source"]["kind"] == "gguf" and pkg["recipe"]["summary"]


def test_json_flag_is_format_json(tiny_gguf_pkg: Path) -> None:
    result = CliRunner().invoke(main, ["bench", str(tiny_gguf_pkg), *FAST, "--json"])
    assert result.exit_code == 0, result.output
    assert "environment" in json.loads(result.stdout)
    clash = CliRunner().invoke(main, ["bench", str(tiny_gguf_pkg), *FAST, "--json", "--format", "csv"])
    assert clash.exit_code == 2 and "--json" in clash.output


def test_thread_sweep_has_a_row_per_count_and_budgets_fail_across_rows(tiny_gguf_pkg: Path) -> None:
    args = ["bench", str(tiny_gguf_pkg), *FAST, "--threads", "1,2"]
    result = CliRunner().invoke(main, [*args, "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [r["threads"] for r in report["rows"]] == [1, 2]
    assert report["environment"]["threads"] == [1, 2] and report["environment"]["threads_used"] == [1, 2]
    assert report["passed"] is True
    missed = CliRunner().invoke(main, [*args, "--format", "json", "--min-tokens-per-s", "1e9"])
    assert missed.exit_code == 1
    failures = json.loads(missed.stdout)["budget_failures"]
    assert [f.split(":")[0] for f in failures] == ["threads 1", "threads 2"]
    table = CliRunner().invoke(main, [*args, "--min-tokens-per-s", "1e9"])
    assert table.exit_code == 1 and "MISSED: threads 1: decode" in table.stdout


def test_table_markdown_and_csv(tiny_gguf_pkg: Path) -> None:
    table = CliRunner().invoke(main, ["bench", str(tiny_gguf_pkg), *FAST])
    assert table.exit_code == 0, table.output
    assert "TTFT, 16-token prompt" in table.stdout and "IQR" in table.stdout and "load average" in table.stdout
    md = CliRunner().invoke(main, ["bench", str(tiny_gguf_pkg), *FAST, "--format", "md"]).stdout
    header = next(line for line in md.splitlines() if line.startswith("| threads"))
    assert "TTFT@8 ms" in header and "decode tokens/s" in header
    out = CliRunner().invoke(main, ["bench", str(tiny_gguf_pkg), *FAST, "--threads", "1,2", "--format", "csv"])
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert [r["threads"] for r in rows] == ["1", "2"]
    assert float(rows[0]["ttft_ms_16"]) > 0 and float(rows[1]["decode_tokens_per_s"]) > 0


def test_bad_prompt_lengths_are_one_line(tiny_gguf_pkg: Path) -> None:
    for value, words in (("0", "0 is not a prompt length"), ("8,-3", "-3 is not a prompt length"),
                         ("8,x", "comma-separated integers"), ("300", "300 tokens do not fit")):
        result = CliRunner().invoke(main, ["bench", str(tiny_gguf_pkg), "--rounds", "1", "--new-tokens", "4",
                                           "--prompt-lengths", value])
        assert result.exit_code == 2, (value, result.output)
        assert words in result.output and len(result.output.strip().splitlines()) == 1, result.output
    result = CliRunner().invoke(main, ["bench", str(tiny_gguf_pkg), "--threads", "2,-1"])
    assert result.exit_code == 2 and "-1 is not a thread count" in result.output


DEVICE_ONLY = textwrap.dedent("""
    import sys

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "transformers", "gguf", "onnx", "plotly") or name == "edgekit.report":
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, Block())
    from edgekit.runtime.bench import run_sweep
    from edgekit.runtime.bench_formats import FORMATS, render

    result = run_sweep(sys.argv[1], (1,), (8,), new_tokens=3, rounds=1)
    print(all(render(result, fmt) for fmt in FORMATS))
""")


def test_bench_runs_on_the_device_side_only(tiny_gguf_pkg: Path) -> None:
    """bench and its formats need neither the workstation libraries nor the report's plotly."""
    result = subprocess.run([sys.executable, "-c", DEVICE_ONLY, str(tiny_gguf_pkg)], check=False,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"
