"""Exported packages compute what PyTorch computes: tiny models of each supported layout and source."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from edgekit.exporters.pipeline import export
from edgekit.exporters.reference import TorchReference
from edgekit.runtime import load
from factories import tiny_gguf, tiny_hf_model, tiny_torch_model
from torch_compare import PROMPT
from torch_compare import compare_with_torch as _compare


def test_gguf_q4_1_import_matches_transformers(tiny_gguf_pkg: Path, tiny_gguf_file: Path) -> None:
    _compare(tiny_gguf_pkg, str(tiny_gguf_file))


@pytest.mark.parametrize("linear_type,embed_type", [("Q4_0", "Q8_0"), ("Q8_0", "Q4_0"), ("Q4_1", "Q4_1")])
def test_gguf_block_types_match_transformers(tmp_path: Path, tiny_hf: Path, linear_type: str, embed_type: str) -> None:
    src = tiny_gguf(tmp_path / "m.gguf", tiny_hf, linear_type, embed_type)
    export(str(src), tmp_path / "pkg")
    _compare(tmp_path / "pkg", str(src))


@pytest.fixture(scope="module")
def k_quant_hf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model whose every row (hidden 256, MLP 512) holds whole 256-element K-quant super-blocks."""
    return tiny_hf_model(tmp_path_factory.mktemp("k_quant_hf") / "model", hidden_size=256, intermediate_size=512)


@pytest.mark.parametrize("linear_type,embed_type", [("Q6_K", "Q6_K"), ("Q4_K", "Q5_K"), ("Q3_K", "Q2_K")])
def test_gguf_k_quants_match_transformers(tmp_path: Path, k_quant_hf: Path, linear_type: str, embed_type: str) -> None:
    """Q6_K carries the model's own weights (the tests' encoder); other K-quants are random stand-in blocks."""
    src = tiny_gguf(tmp_path / "m.gguf", k_quant_hf, linear_type, embed_type)
    export(str(src), tmp_path / "pkg")
    _compare(tmp_path / "pkg", str(src))


def test_hf_folder_float32_matches_torch(tiny_hf_pkg: Path, tiny_hf: Path) -> None:
    _compare(tiny_hf_pkg, str(tiny_hf))


@pytest.mark.parametrize("arch,overrides", [
    ("llama", {"tied": False}),
    ("mistral", {"sliding_window": 8, "tied": False}),
    ("qwen2", {"tied": True}),
    ("llama", {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 64}}),
])
def test_layouts_match_torch(tmp_path: Path, arch: str, overrides: dict) -> None:
    src = tiny_hf_model(tmp_path / "src", arch=arch, **overrides)
    export(str(src), tmp_path / "pkg")
    _compare(tmp_path / "pkg", str(src))


def test_pruned_uneven_layer_widths_match_torch(tmp_path: Path) -> None:
    torch_model = tiny_torch_model(tmp_path / "src", layer_widths=(96, 64))
    manifest = export(str(tmp_path / "src"), tmp_path / "pkg")
    assert manifest.model.layer_intermediate_sizes == (96, 64)
    _compare(tmp_path / "pkg", TorchReference.from_model(torch_model))


def test_fast_mode_is_close(tiny_gguf_pkg: Path, tiny_gguf_file: Path) -> None:
    """int8 activations: not exact, but close (the opt-in mode's promise)."""
    exact, fast = load(tiny_gguf_pkg), load(tiny_gguf_pkg, fast=True)
    ids = exact.encode(PROMPT)
    a, b = exact.logits(ids), fast.logits(ids)
    assert np.abs(a - b).max() < 0.05 * np.abs(a).max()
    assert (a.argmax(-1) == b.argmax(-1)).mean() > 0.9
