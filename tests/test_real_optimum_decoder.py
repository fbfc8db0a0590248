"""A real decoder through optimum: SmolLM2-135M (the shipped GGUF, saved by transformers as a float Hugging Face
folder) exported with `--builder optimum`, in float and at int4, validated against PyTorch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from factories import SMOLLM2_GGUF

from edgekit.cli import main
from edgekit.evaltext import default_text

pytestmark = pytest.mark.slow
# int4 thresholds: what validate checks of a compressed package is its quantization loss, stated up front.
INT4 = ["--min-greedy", "0", "--min-top1", "0.95", "--max-ppl-delta", "0.01", "--max-kl", "0.005"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import torch
    import transformers

    root = tmp_path_factory.mktemp("smollm2-optimum")
    kwargs = {"gguf_file": SMOLLM2_GGUF.name}
    model = transformers.AutoModelForCausalLM.from_pretrained(str(SMOLLM2_GGUF.parent), dtype=torch.float32, **kwargs)
    model.save_pretrained(root / "hf")
    transformers.AutoTokenizer.from_pretrained(str(SMOLLM2_GGUF.parent), **kwargs).save_pretrained(root / "hf")
    (root / "eval.txt").write_text(default_text(6000))
    for name, options in (("f32", []), ("int4", ["--weights", "int4", "--group-size", "32"])):
        result = CliRunner().invoke(main, ["export", str(root / "hf"), "-o", str(root / name), "--builder", "optimum",
                                           *options])
        assert result.exit_code == 0, result.output
        assert "llama decoder, optimum builder" in result.output
    return {"hf": root / "hf", "f32": root / "f32", "int4": root / "int4", "text": root / "eval.txt"}


@pytest.mark.parametrize(("name", "thresholds"), [("f32", []), ("int4", INT4)])
def test_validate_passes(name: str, thresholds: list[str], folders: dict[str, Path]) -> None:
    """Float: the default (exact) thresholds, greedy 32/32 identical. int4: its stated loss thresholds."""
    result = CliRunner().invoke(main, ["validate", str(folders[name]), "--reference", str(folders["hf"]), "--device",
                                       "cpu", "--tokens", "32", "--text", str(folders["text"]), "--json", *thresholds])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["passed"]


def test_int4_answers_paris_and_is_small(folders: dict[str, Path]) -> None:
    result = CliRunner().invoke(main, ["run", str(folders["int4"]), "--prompt", "The capital of France is",
                                       "--max-new-tokens", "8"])
    assert result.exit_code == 0, result.output
    assert "Paris" in result.stdout
    float_bytes = sum(f.stat().st_size for f in folders["f32"].iterdir())
    assert sum(f.stat().st_size for f in folders["int4"].iterdir()) <= 0.30 * float_bytes
