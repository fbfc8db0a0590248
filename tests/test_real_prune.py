"""The real model pruned: SmolLM2-135M with a quarter of its parameters removed (uneven heads, KV groups and MLP
widths per layer) exports to a package that equals the pruned PyTorch model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgekit.cli import main
from edgekit.evaltext import default_text, held_out_text
from edgekit.package import read_manifest

pytestmark = pytest.mark.slow


def _cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_quarter_pruned_smollm2_matches_torch(tmp_path: Path) -> None:
    (tmp_path / "calib.txt").write_text(held_out_text(30_000))
    (tmp_path / "eval.txt").write_text(default_text(4000))
    out = _cli("prune", "smollm2-135m", "-o", str(tmp_path / "pruned"), "--ratio", "0.25", "--calib",
               str(tmp_path / "calib.txt"))
    record = json.loads((tmp_path / "pruned" / "config.json").read_text())["edgekit_pruning"]
    removed = record["parameters"]["removed"]
    assert abs(removed - 0.25) < 0.01, out
    layers = record["layers"]
    assert len({(x["heads"], x["kv_heads"], x["intermediate_size"]) for x in layers}) > 1  # uneven shapes
    _cli("export", str(tmp_path / "pruned"), "-o", str(tmp_path / "pkg"))
    c = read_manifest(tmp_path / "pkg").model
    assert [(c.heads_of(i), c.kv_heads_of(i), c.intermediate_size_of(i)) for i in range(c.num_layers)] == \
        [(x["heads"], x["kv_heads"], x["intermediate_size"]) for x in layers]
    report = json.loads(_cli("validate", str(tmp_path / "pkg"), "--reference", str(tmp_path / "pruned"), "--tokens",
                             "32", "--text", str(tmp_path / "eval.txt"), "--json"))
    assert report["max_logit_error"] < 1e-2 and report["failures"] == [], report
    assert all(g == 32 for g in report["greedy_identical"]), report
