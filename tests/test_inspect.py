"""`edgekit inspect PKG`: the manifest's facts as a table or JSON, without loading the graph."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from edgekit.cli import main


def test_inspect_table_of_an_imported_gguf(tiny_gguf_pkg: Path) -> None:
    result = CliRunner().invoke(main, ["inspect", str(tiny_gguf_pkg)])
    assert result.exit_code == 0, result.output
    out = result.stdout
    for words in ("source        ", "gguf", "architecture  llama: 2 layers, hidden 64", "recipe        import",
                  "embed Q8_0, lm_head tied to embed", "0-1     Q4_1", "model.onnx.data", "contract causal-lm-kv",
                  "custom ops    GatherBlockQ8", "cpu (CPUExecutionProvider): model.cpu.onnx",
                  "chat template yes", "draft         none"):
        assert words in out, (words, out)


def test_inspect_json(tiny_hf_pkg: Path) -> None:
    result = CliRunner().invoke(main, ["inspect", str(tiny_hf_pkg), "--json"])
    assert result.exit_code == 0, result.output
    s = json.loads(result.stdout)
    assert s["source"]["kind"] == "hf" and s["source"]["sha256"] is None
    assert s["recipe"]["method"] == "import" and "tensor_formats" not in s["recipe"]
    assert [row["index"] for row in s["formats"]["layers"]] == [0, 1]
    assert s["formats"]["layers"][0]["down"] == "f32" and s["formats"]["embed"] == "f32"
    assert s["total_bytes"] == sum(s["files"].values()) and "manifest.json" not in s["files"]
    manifest = json.loads((tiny_hf_pkg / "manifest.json").read_text())
    assert s["files"] == {k: v["size"] for k, v in manifest["files"].items()}
    assert s["graph"]["targets"] == manifest["graph"]["targets"]
    assert s["tokenizer"]["bos"][0] == 1 and s["tokenizer"]["chat_template"] is True
    # 2 layers of 64 hidden, 4 heads x 16, 2 kv heads, MLP 128; tied 49152 x 64 embedding
    per_layer = 64 * 64 * 2 + 64 * 32 * 2 + 3 * 64 * 128 + 2 * 64
    assert s["architecture"]["parameters"] == 2 * per_layer + 64 + 49152 * 64


def test_inspect_shows_a_mixed_plan_per_layer(tmp_path: Path, tiny_hf: Path) -> None:
    plan = tmp_path / "mix.yaml"
    plan.write_text('default: int4g32\nrules:\n  - match: "layers.1.down"\n    weights: int8g32\n')
    pkg = tmp_path / "pkg"
    export = CliRunner().invoke(main, ["export", str(tiny_hf), "-o", str(pkg), "--plan", str(plan)])
    assert export.exit_code == 0, export.output
    out = CliRunner().invoke(main, ["inspect", str(pkg)]).stdout
    rows = [line.split() for line in out.splitlines() if line.strip().startswith(("0 ", "1 "))]
    assert rows[0][1:] == ["int4g32"] * 7, out
    assert rows[1][-1].startswith("int8") and rows[1][1:-1] == ["int4g32"] * 6, out
    assert "plan: plan mix.yaml" in out and "bits/weight" in out


def test_inspect_errors_are_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "no such package folder" in result.output
    (tmp_path / "manifest.json").write_text("{")
    result = CliRunner().invoke(main, ["inspect", str(tmp_path)])
    assert result.exit_code == 2 and "not valid JSON" in result.output


def test_inspect_shows_the_draft(tmp_path: Path, tiny_hf: Path) -> None:
    from factories import tiny_hf_model

    draft_src = tiny_hf_model(tmp_path / "draft_src", seed=1, num_hidden_layers=1)
    pkg = tmp_path / "pkg"
    export = CliRunner().invoke(main, ["export", str(tiny_hf), "-o", str(pkg), "--draft", str(draft_src)])
    assert export.exit_code == 0, export.output
    out = CliRunner().invoke(main, ["inspect", str(pkg)]).stdout
    line = next(line for line in out.splitlines() if line.startswith("draft"))
    assert "draft/" in line and "1 layers" in line and "measured acceptance" in line, line
    s = json.loads(CliRunner().invoke(main, ["inspect", str(pkg), "--json"]).stdout)
    assert s["draft"]["layers"] == 1
