"""`edgekit embed` and `edgekit bench` on sentence-embedding packages; each kind of package refused, in one line,
by the other kind's commands and options."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from edgekit.runtime import Encoder

from edgekit.cli import main

ONE_ROUND = ["--rounds", "1"]


def test_embed_prints_a_line_per_text(tiny_encoder_pkg: Path) -> None:
    result = CliRunner().invoke(main, ["embed", str(tiny_encoder_pkg), "A cat sat.", "Hello"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and lines[0].endswith("norm 1.0000  A cat sat.") and lines[1].endswith("  Hello")
    assert lines[0].startswith("[") and lines[0].count(" ...]") == 1
    assert "2 texts, 32 dimensions" in result.stderr


def test_embed_json_has_the_full_vectors(tiny_encoder_pkg: Path, tmp_path: Path) -> None:
    texts = tmp_path / "texts.txt"
    texts.write_text("first line\nsecond line\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["embed", str(tiny_encoder_pkg), "an argument", "-f", str(texts), "--json",
                                       "--batch-size", "1"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["model"] == str(tiny_encoder_pkg) and data["dimension"] == 32
    expected = Encoder(tiny_encoder_pkg).embed(["an argument", "first line", "second line"])
    np.testing.assert_allclose(np.array(data["embeddings"], np.float32), expected, atol=1e-6)
    stdin = CliRunner().invoke(main, ["embed", str(tiny_encoder_pkg), "-f", "-", "--json"], input="from stdin\n")
    assert stdin.exit_code == 0 and len(json.loads(stdin.stdout)["embeddings"]) == 1


def test_embed_without_text_is_one_line(tiny_encoder_pkg: Path, tmp_path: Path) -> None:
    for args, words in (([], "give the texts to embed"), (["-f", str(tmp_path / "none.txt")], "cannot read the text file")):
        result = CliRunner().invoke(main, ["embed", str(tiny_encoder_pkg), *args])
        assert result.exit_code == 2, result.output
        assert len(result.output.strip().splitlines()) == 1 and words in result.output


def test_each_kind_refuses_the_other_kinds_command(tiny_encoder_pkg: Path, tiny_gguf_pkg: Path) -> None:
    for args, expected in (
        (["run", str(tiny_encoder_pkg), "--prompt", "Hi"],
         (f"edgekit: error: {tiny_encoder_pkg}: this package is a sentence-embedding encoder (bert): use "
          f"`edgekit embed {tiny_encoder_pkg} TEXT...`")),
        (["embed", str(tiny_gguf_pkg), "Hi"],
         (f"edgekit: error: {tiny_gguf_pkg}: this package is a text decoder (llama): use "
          f"`edgekit run {tiny_gguf_pkg} --prompt TEXT`")),
        (["bench", str(tiny_encoder_pkg), "--speculative", "ngram", "--prompt-lengths", "8"],
         (f"edgekit: error: {tiny_encoder_pkg}: --prompt-lengths, --speculative do not apply to this package: it "
          "is a sentence-embedding encoder (bert)")),
        (["bench", str(tiny_gguf_pkg), "--max-latency-ms", "5"],
         (f"edgekit: error: {tiny_gguf_pkg}: --max-latency-ms does not apply to this package: it is a text decoder "
          "(llama)")),
    ):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, (args, result.output)
        assert result.output.strip().splitlines() == [expected]


def test_encoder_bench_json(tiny_encoder_pkg: Path) -> None:
    result = CliRunner().invoke(main, ["bench", str(tiny_encoder_pkg), *ONE_ROUND, "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["passed"] is True and report["dimension"] == 32 and report["sentences"] == 40
    for batch in ("1", "32"):
        assert report["sentences_per_s"][batch] > 0
        assert report["sentences_per_s_spread"][batch]["median"] == report["sentences_per_s"][batch]
        latency = report["batch_latency_ms"][batch]
        assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"]
    # every text embedded once per round, in full batches: 40 of one, 2 of 32
    assert [len(r) for r in report["batch_latencies_ms"]["1"]] == [40]
    assert [len(r) for r in report["batch_latencies_ms"]["32"]] == [2]
    assert report["peak_rss_mb"] > 0 and report["size_on_disk_mb"] > 0
    env = report["environment"]
    assert env["execution_provider"] == "CPUExecutionProvider" and env["package"]["source"]["kind"] == "hf"


def test_encoder_bench_budgets_fail_with_exit_1(tiny_encoder_pkg: Path) -> None:
    args = ["bench", str(tiny_encoder_pkg), *ONE_ROUND, "--threads", "1,2"]
    missed = CliRunner().invoke(main, [*args, "--format", "json", "--min-sentences-per-s", "1e9",
                                       "--max-latency-ms", "1e-6", "--max-rss-mb", "1"])
    assert missed.exit_code == 1, missed.output
    report = json.loads(missed.stdout)
    assert report["passed"] is False and [r["threads"] for r in report["rows"]] == [1, 2]
    first = report["budget_failures"][:3]
    assert first[0].startswith("threads 1: ") and first[0].endswith("sentences/s at batch 32 < 1e+09")
    assert "latency p90" in first[1] and first[1].endswith("ms at batch 1 > 1e-06 ms")
    assert "peak RSS" in first[2] and len(report["budget_failures"]) == 6
    met = CliRunner().invoke(main, ["bench", str(tiny_encoder_pkg), *ONE_ROUND, "--min-sentences-per-s", "0.01"])
    assert met.exit_code == 0 and "budgets" in met.stdout and "all met" in met.stdout


def test_encoder_bench_table_markdown_and_csv(tiny_encoder_pkg: Path) -> None:
    table = CliRunner().invoke(main, ["bench", str(tiny_encoder_pkg), *ONE_ROUND])
    assert table.exit_code == 0, table.output
    assert "batch 32 latency p50/p90/p99" in table.stdout and "sentences/s" in table.stdout
    md = CliRunner().invoke(main, ["bench", str(tiny_encoder_pkg), *ONE_ROUND, "--format", "md"]).stdout
    header = next(line for line in md.splitlines() if line.startswith("| threads"))
    assert "sentences/s@1" in header and "batch ms p50/p90/p99@32" in header
    out = CliRunner().invoke(main, ["bench", str(tiny_encoder_pkg), *ONE_ROUND, "--format", "csv"]).stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 1 and float(rows[0]["sentences_per_s_32"]) > 0 and float(rows[0]["batch_ms_1_p90"]) > 0


def test_report_refuses_encoder_bench_results_in_one_line(tiny_encoder_pkg: Path, tmp_path: Path) -> None:
    for threads in ("0", "1,2"):
        bench = CliRunner().invoke(main, ["bench", str(tiny_encoder_pkg), *ONE_ROUND, "--threads", threads, "--json"])
        result_file = tmp_path / "bench.json"
        result_file.write_text(bench.stdout)
        result = CliRunner().invoke(main, ["report", str(result_file), "-o", str(tmp_path / "report.html")])
        assert result.exit_code == 2, result.output
        expected = (f"edgekit: error: {result_file}: an encoder package's bench result: the report charts text "
                    "decoders' results only")
        assert result.output.strip().splitlines() == [expected]
