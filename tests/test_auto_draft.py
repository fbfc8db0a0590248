"""`--draft auto`: a subset of the target's layers, distilled from the target, written as the package's draft."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgekit.cli import main


def test_auto_draft_is_a_distilled_layer_subset(auto_draft_pkg: Path) -> None:
    manifest = json.loads((auto_draft_pkg / "manifest.json").read_text())
    draft = manifest["draft"]
    assert draft["layers"] == 2 and draft["measured"]["acceptance_rate"] > 0
    training = draft["training"]
    assert training["steps"] == 30
    assert training["kl_after"] < 0.9 * training["kl_before"], training  # distillation moved it toward the target
    inner = json.loads((auto_draft_pkg / "draft" / "manifest.json").read_text())
    assert inner["model"]["num_layers"] == 2
    assert inner["recipe"]["pruning"]["dropped_layers"] == [1, 2]  # the first layer and the last kept
    formats = set(inner["recipe"]["summary"])
    assert any(f.startswith("int4") for f in formats), formats  # the draft is quantized (exporters.draft)


def test_untrained_auto_draft_keeps_the_target_weights(tmp_path: Path, tiny_hf: Path) -> None:
    result = CliRunner().invoke(main, ["export", str(tiny_hf), "-o", str(tmp_path / "pkg"), "--draft", "auto",
                                       "--draft-layers", "1", "--draft-steps", "0"])
    assert result.exit_code == 0, result.output
    assert "draft: 1 layers, measured acceptance" in result.output
    draft = json.loads((tmp_path / "pkg" / "manifest.json").read_text())["draft"]
    assert "training" not in draft and "untrained" in draft["source"]["name"]


@pytest.mark.parametrize(("args", "message"), [
    (["--draft-steps", "5"], "give --draft auto too"),
    (["--draft", "auto", "--draft-layers", "2"], "keeps from 1 to 1 of the target's 2 layers"),
])
def test_auto_draft_options_are_checked(tmp_path: Path, tiny_hf: Path, args: list[str], message: str) -> None:
    out = tmp_path / "pkg"
    result = CliRunner().invoke(main, ["export", str(tiny_hf), "-o", str(out), *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not out.exists() and not list(tmp_path.iterdir())
