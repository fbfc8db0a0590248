"""The commands as a user runs them: export, run, validate, bench (tiny models; the real one in test_real_model)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from edgekit.cli import main
from edgekit.package import read_manifest, sha256_of


def test_export_writes_a_complete_manifest(tmp_path: Path, tiny_gguf_file: Path) -> None:
    result = CliRunner().invoke(main, ["export", str(tiny_gguf_file), "-o", str(tmp_path / "pkg")])
    assert result.exit_code == 0, result.output
    m = read_manifest(tmp_path / "pkg")
    assert m.data["source"]["sha256"] == sha256_of(tiny_gguf_file)
    assert set(m.files) == {"model.onnx", "model.cpu.onnx", "model.cpu-fast.onnx", "model.onnx.data", "tokenizer.json"}
    assert m.data["graph"]["targets"] == {"cpu": {"provider": "CPUExecutionProvider", "file": "model.cpu.onnx",
                                                  "fast_file": "model.cpu-fast.onnx"}}
    for rel, entry in m.files.items():
        assert entry["sha256"] == sha256_of(tmp_path / "pkg" / rel)
    assert m.custom_ops == ["GatherBlockQ8", "MatMulBlockQ4", "MatMulBlockQ8"]  # tied output layer reads Q8_0
    assert m.data["recipe"]["summary"] == {"Q8_0": 1, "Q4_1": 14}
    assert m.tokenizer["add_bos_token"] is False and m.tokenizer["eos_token"] == "<|im_end|>"


def test_export_targets_share_one_weights_file(tmp_path: Path, tiny_gguf_file: Path) -> None:
    """Several targets: each adds small graph files; the weights are stored once."""
    sizes = {}
    for targets in (["portable"], ["cpu", "cuda"]):
        out = tmp_path / "-".join(targets)
        args = ["export", str(tiny_gguf_file), "-o", str(out), *(a for t in targets for a in ("--target", t))]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        sizes[out.name] = (out / "model.onnx.data").stat().st_size
        assert set(read_manifest(out).data["graph"]["targets"]) == set(targets) - {"portable"}
    assert sizes["cpu-cuda"] <= 1.01 * sizes["portable"]


def test_unknown_target_is_one_line(tmp_path: Path, tiny_gguf_file: Path) -> None:
    result = CliRunner().invoke(main, ["export", str(tiny_gguf_file), "-o", str(tmp_path / "p"), "--target", "tpu"])
    assert result.exit_code == 2 and not (tmp_path / "p").exists()
    assert "unknown target 'tpu' (supported: portable, cpu, cuda, qnn)" in result.output


def test_run_streams_text(tiny_gguf_pkg: Path) -> None:
    result = CliRunner().invoke(main, ["run", str(tiny_gguf_pkg), "--prompt", "Hello", "--max-new-tokens", "5"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip()


def test_run_chat_and_sampling_options(tiny_gguf_pkg: Path) -> None:
    args = ["run", str(tiny_gguf_pkg), "--prompt", "Hi", "--chat", "--max-new-tokens", "6", "--temperature", "0.8",
            "--top-k", "20", "--top-p", "0.9", "--seed", "3"]
    first, second = CliRunner().invoke(main, args), CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    assert first.stdout == second.stdout


def test_bench_json_fields_and_budgets(tiny_gguf_pkg: Path) -> None:
    args = ["bench", str(tiny_gguf_pkg), "--rounds", "1", "--prompt-lengths", "8,32", "--new-tokens", "8", "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report["ttft_ms"]) == {"8", "32"}
    assert set(report["token_latency_ms"]) == {"p50", "p90", "p99"}
    for key in ("decode_tokens_per_s", "peak_rss_mb", "size_on_disk_mb", "load_s"):
        assert report[key] > 0
    assert report["passed"] is True
    missed = CliRunner().invoke(main, [*args, "--min-tokens-per-s", "1e9", "--max-ttft-ms", "0.001"])
    assert missed.exit_code == 1
    failures = json.loads(missed.stdout)["budget_failures"]
    assert any("decode" in f for f in failures) and any("TTFT" in f for f in failures)


def test_validate_passes_on_an_exact_import(tiny_gguf_pkg: Path, tiny_gguf_file: Path, tmp_path: Path) -> None:
    text = tmp_path / "eval.txt"
    text.write_text("The cat sat on the mat. " * 60)
    result = CliRunner().invoke(main, ["validate", str(tiny_gguf_pkg), "--reference", str(tiny_gguf_file),
                                       "--device", "cpu", "--tokens", "16", "--text", str(text), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["passed"] and report["greedy_identical"] == [16] * 4
    assert abs(report["ppl_delta"]) < 1e-3


def test_validate_fails_against_the_wrong_reference(tiny_gguf_pkg: Path, tmp_path: Path) -> None:
    from factories import tiny_hf_model

    other = tiny_hf_model(tmp_path / "other", seed=1)
    text = tmp_path / "eval.txt"
    text.write_text("The cat sat on the mat. " * 60)
    result = CliRunner().invoke(main, ["validate", str(tiny_gguf_pkg), "--reference", str(other),
                                       "--device", "cpu", "--tokens", "8", "--text", str(text)])
    assert result.exit_code == 1
    assert "FAIL" in result.stdout
