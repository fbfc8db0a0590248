"""The embedded default model, SmolLM2-135M-Instruct (GGUF Q4_1), end to end as a new user runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgekit.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_pkg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("real") / "pkg"
    result = CliRunner().invoke(main, ["export", "smollm2-135m", "-o", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_answers_paris(real_pkg: Path) -> None:
    result = CliRunner().invoke(main, ["run", str(real_pkg), "--prompt", "The capital of France is",
                                       "--max-new-tokens", "8"])
    assert result.exit_code == 0, result.output
    assert "Paris" in result.stdout


def test_low_bit_weights_stay_low_bit(real_pkg: Path) -> None:
    m = json.loads((real_pkg / "manifest.json").read_text())
    assert m["recipe"]["summary"] == {"Q8_0": 1, "Q4_1": 210}
    assert m["files"]["model.onnx.data"]["size"] < 105e6  # 4-bit codes + fp16 scales/offsets, not float32


def test_validate_greedy_64_of_64_and_perplexity(real_pkg: Path) -> None:
    result = CliRunner().invoke(main, ["validate", str(real_pkg), "--reference", "smollm2-135m", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["greedy_identical"] == [64] * 4
    assert abs(report["ppl_delta"]) < 0.001
    assert report["top1_agreement"] > 0.99
