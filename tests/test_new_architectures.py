"""Qwen3 and Gemma 3 (text) exports compute what PyTorch computes: tiny random models, from a Hugging Face
folder and from GGUF files of K-quant and legacy block types, 32 greedy tokens each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from edgekit.exporters.pipeline import export
from edgekit.exporters.reference import TorchReference
from factories import tiny_gguf, tiny_hf_model
from torch_compare import compare_with_torch

from edgekit.cli import main

GREEDY = 32
# HF model_type -> GGUF general.architecture
GGUF_ARCH = {"qwen3": "qwen3", "gemma3_text": "gemma3"}
ARCHS = sorted(GGUF_ARCH)
# Gemma 3: an attention scale that is not 1/sqrt(head_dim), to see that query_pre_attn_scalar is read.
HF_OVERRIDES: dict[str, dict[str, object]] = {"qwen3": {}, "gemma3_text": {"query_pre_attn_scalar": 24.0}}


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("new_archs")
    return {a: tiny_hf_model(root / a, arch=a, **HF_OVERRIDES[a]) for a in ARCHS}


@pytest.fixture(scope="module")
def k_quant_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Rows of whole 256-element K-quant super-blocks (hidden 256, MLP 512, heads x head_dim 256 or 512); at least
    three layers, one per block type of MIXED_BLOCKS."""
    root = tmp_path_factory.mktemp("new_archs_k")
    sizes = {"gemma3_text": {"head_dim": 64}, "qwen3": {"num_hidden_layers": 3}}
    return {a: tiny_hf_model(root / a, arch=a, hidden_size=256, intermediate_size=512, **sizes[a]) for a in ARCHS}


@pytest.fixture(scope="module")
def hf_packages(tmp_path_factory: pytest.TempPathFactory, hf_models: dict[str, Path]) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("new_arch_pkgs")
    for a in ARCHS:
        export(str(hf_models[a]), root / a)
    return {a: root / a for a in ARCHS}


@pytest.mark.parametrize("arch", ARCHS)
def test_hf_folder_matches_torch(hf_models: dict[str, Path], hf_packages: dict[str, Path], arch: str) -> None:
    ids = compare_with_torch(hf_packages[arch], str(hf_models[arch]), GREEDY)
    if arch == "gemma3_text":  # the sliding window must actually cut the prompt
        assert len(ids) > json.loads((hf_models[arch] / "config.json").read_text())["sliding_window"]


def test_gemma3_variant_matches_torch(tmp_path: Path) -> None:
    """Alternate local/global layers, linear rope scaling on the global layers, final logit soft-capping, an
    untied output layer."""
    src = tiny_hf_model(tmp_path / "src", arch="gemma3_text", tied=False, num_hidden_layers=4,
                        sliding_window_pattern=2, rope_scaling={"rope_type": "linear", "factor": 8.0},
                        final_logit_softcapping=3.0)
    manifest = export(str(src), tmp_path / "pkg")
    assert manifest.data["model"]["layer_types"] == ["sliding_attention", "full_attention"] * 2
    compare_with_torch(tmp_path / "pkg", str(src), GREEDY)


@pytest.mark.parametrize("arch", ARCHS)
def test_gguf_q8_0_matches_transformers(tmp_path: Path, hf_models: dict[str, Path], arch: str) -> None:
    src = tiny_gguf(tmp_path / "m.gguf", hf_models[arch], "Q8_0", "Q8_0", arch=GGUF_ARCH[arch])
    export(str(src), tmp_path / "pkg")
    compare_with_torch(tmp_path / "pkg", str(src), GREEDY)


# Layer i's linear layers take MIXED_BLOCKS[i % 3]: a K-quant and both legacy 4-bit types in one file (one
# transformers GGUF load instead of three: each parses the 49k-token vocabulary twice, seconds apiece).
MIXED_BLOCKS = ("Q6_K", "Q4_0", "Q4_1")


@pytest.mark.parametrize("arch", ARCHS)
def test_gguf_k_quant_and_legacy_blocks_match_transformers(tmp_path: Path, k_quant_models: dict[str, Path],
                                                           arch: str) -> None:
    src = tiny_gguf(tmp_path / "m.gguf", k_quant_models[arch], MIXED_BLOCKS, "Q6_K", arch=GGUF_ARCH[arch])
    manifest = export(str(src), tmp_path / "pkg")
    assert set(MIXED_BLOCKS) <= set(manifest.data["recipe"]["summary"])
    compare_with_torch(tmp_path / "pkg", str(src), GREEDY)


def test_gemma3_float_gguf_keeps_what_transformers_drops(tmp_path: Path) -> None:
    """A float32 GGUF with llama.cpp's rope-scaling and soft-capping keys matches the original Hugging Face model
    (transformers' GGUF loader ignores both keys, so it is not the reference here)."""
    hf = tiny_hf_model(tmp_path / "src", arch="gemma3_text", query_pre_attn_scalar=256.0,
                       rope_scaling={"rope_type": "linear", "factor": 8.0}, final_logit_softcapping=3.0)
    src = tiny_gguf(tmp_path / "m.gguf", hf, "F32", "F32", arch="gemma3")
    export(str(src), tmp_path / "pkg")
    compare_with_torch(tmp_path / "pkg", TorchReference(str(hf), "cpu"), GREEDY)


def test_validate_passes_on_gemma3(tmp_path: Path, hf_models: dict[str, Path], hf_packages: dict[str, Path]) -> None:
    """The default thresholds (every greedy token identical, perplexity within 0.1%, top-1 agreement 99%) hold
    for an exact float export, even of a random model whose logits are nearly flat."""
    text = tmp_path / "eval.txt"
    text.write_text("The cat sat on the mat. " * 60)
    result = CliRunner().invoke(main, ["validate", str(hf_packages["gemma3_text"]), "--reference",
                                       str(hf_models["gemma3_text"]),
                                       "--device", "cpu", "--tokens", "32", "--text", str(text), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["passed"] and report["greedy_identical"] == [32] * 4
    assert report["max_logit_error"] < 1e-4  # measured 4.8e-6
