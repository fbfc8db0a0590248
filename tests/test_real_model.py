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


def _prompts_50() -> list[str]:
    """25 knowledge prompts and 25 that ask to repeat a sentence (prompt lookup finds long matches in those)."""
    from edgekit.evaltext import sentences
    from edgekit.factcheck import FACTS

    return [p for p, _ in FACTS[:25]] + [f"Repeat this sentence exactly: {s}\n" for s in sentences(25)]


@pytest.mark.parametrize("float_passes", [False, True], ids=["stock passes", "float32 passes"])
def test_prompt_lookup_equals_plain_greedy_on_50_prompts(real_pkg: Path, float_passes: bool) -> None:
    """Every verify pass gives plain greedy's tokens on the real model: MatMulNBits' multi-row path, or float32
    weights (another kernel, another summation order), against plain decoding on the stock one-row path."""
    from edgekit.runtime import GenerationConfig, load

    plain_model, spec_model = load(real_pkg), load(real_pkg, float_passes=float_passes)
    accepted = 0
    for prompt in _prompts_50():
        ids = plain_model.encode(prompt)
        plain = list(plain_model.generate_ids(ids, GenerationConfig(24, stop_token_ids=())))
        gen = GenerationConfig(24, stop_token_ids=(), speculative="ngram", draft_len=8, draft_policy="all")
        assert list(spec_model.generate_ids(ids, gen)) == plain, prompt
        accepted += spec_model.last_stats.accepted
    assert accepted > 100  # drafts were verified and accepted: the multi-row passes were exercised
