"""Decoders with no native builder (GPT-2, Phi-3) exported through optimum, compressed, run by the same runtime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from edgekit.exporters.graph_weights import EMBED, weight_sites
from edgekit.exporters.optimum_export import DECODER_TASK, optimum_graph
from edgekit.exporters.pipeline import export
from edgekit.exporters.quantize.rtn import quantize_rtn
from edgekit.exporters.quantize.spec import quant_config_from_options
from edgekit.exporters.reference import TorchReference
from edgekit.runtime import GenerationConfig, load
from factories import OPTIMUM_CONFIGS, VOCAB, tiny_optimum_decoder, tokenizer_files

from edgekit.cli import main
from edgekit.formats import BlockQuantWeight, weight_format

PROMPTS = ("The capital of France is", "def add(a, b):\n    return")
GREEDY = GenerationConfig(max_new_tokens=32, stop_token_ids=())


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("optimum")
    return {arch: tiny_optimum_decoder(root / arch, arch) for arch in OPTIMUM_CONFIGS}


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory, models: dict[str, Path]) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("optimum-pkg")
    out = {}
    for arch, folder in models.items():
        export(str(folder), root / arch)
        out[arch] = root / arch
    for bits in ("int4", "int8"):
        export(str(models["gpt2"]), root / f"gpt2-{bits}", quant=quant_config_from_options(bits, 32))
        out[f"gpt2-{bits}"] = root / f"gpt2-{bits}"
    return out


@pytest.mark.parametrize("arch", list(OPTIMUM_CONFIGS))
def test_float_export_generates_what_pytorch_generates(arch: str, models: dict[str, Path],
                                                      packages: dict[str, Path]) -> None:
    manifest = json.loads((packages[arch] / "manifest.json").read_text())
    assert (manifest["graph"]["builder"], manifest["graph"]["contract"]) == ("optimum", "causal-lm-concat-kv")
    assert "past_key_values.0.key" in manifest["graph"]["inputs"]
    model, reference = load(packages[arch]), TorchReference(str(models[arch]), "cpu")
    for prompt in PROMPTS:
        ids = model.encode(prompt)
        assert list(model.generate_ids(ids, GREEDY)) == reference.greedy(ids, 32)
        np.testing.assert_allclose(model.logits(ids), reference.logits(ids), atol=1e-4)


def test_validate_passes_with_default_thresholds(models: dict[str, Path], packages: dict[str, Path]) -> None:
    result = CliRunner().invoke(main, ["validate", str(packages["gpt2"]), "--reference", str(models["gpt2"]),
                                       "--device", "cpu", "--tokens", "16", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["passed"]


def test_int4_validate_passes_its_loss_thresholds(models: dict[str, Path], packages: dict[str, Path]) -> None:
    """validate of the int4 package against the float model measures its quantization loss. A random tiny model's
    logits are nearly flat (perplexity close to the vocabulary size), so top-1 and greedy agreement mean nothing
    here; the distribution's loss does: perplexity within 1% and KL within 0.01 nats (a wrong weight mapping
    moves both by orders of magnitude)."""
    result = CliRunner().invoke(main, ["validate", str(packages["gpt2-int4"]), "--reference", str(models["gpt2"]),
                                       "--device", "cpu", "--tokens", "8", "--min-greedy", "0", "--min-top1", "0",
                                       "--max-ppl-delta", "0.01", "--max-kl", "0.01", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["passed"] and report["kl_divergence"] < 0.01


def _fake_quantized(folder: Path, package: Path) -> TorchReference:
    """The torch model with the package's own low-bit weights, dequantized, written into its modules."""
    reference = TorchReference(str(folder), "cpu")
    graph = optimum_graph(folder, DECODER_TASK)
    formats = json.loads((package / "manifest.json").read_text())["recipe"]["tensor_formats"]
    with torch.no_grad():
        for site in weight_sites(graph, VOCAB):
            if site.tied:
                continue
            w: BlockQuantWeight = quantize_rtn(site.weight, weight_format(formats[site.name]))
            value = torch.from_numpy(w.dequantize())
            if site.name == EMBED:
                reference.model.get_input_embeddings().weight.copy_(value)
                continue
            module = reference.model.get_submodule(site.name)
            module.weight.copy_(value if isinstance(module, torch.nn.Linear) else value.T)  # Conv1D is [in, out]
    return reference


@pytest.mark.parametrize("bits", ["int4", "int8"])
def test_low_bit_package_computes_what_its_weights_say(bits: str, models: dict[str, Path],
                                                       packages: dict[str, Path]) -> None:
    """Low-bit through optimum (GPT-2's Conv1D weights are Gemm nodes on 2-D inputs): the package equals PyTorch
    running the same dequantized weights, token for token."""
    manifest = json.loads((packages[f"gpt2-{bits}"] / "manifest.json").read_text())
    assert set(manifest["recipe"]["summary"]) == {f"{bits}g32", "int8g32"}
    assert {f"MatMulBlockQ{bits[3:]}", "GatherBlockQ8"} <= set(manifest["graph"]["custom_ops"])
    reference = _fake_quantized(models["gpt2"], packages[f"gpt2-{bits}"])
    model = load(packages[f"gpt2-{bits}"])
    for prompt in PROMPTS:
        ids = model.encode(prompt)
        assert list(model.generate_ids(ids, GREEDY)) == reference.greedy(ids, 32)
        np.testing.assert_allclose(model.logits(ids), reference.logits(ids), atol=2e-3)


def test_int4_package_is_under_30_percent_of_optimums_float_export(models: dict[str, Path],
                                                                   packages: dict[str, Path]) -> None:
    optimum_bytes = optimum_graph(models["gpt2"], DECODER_TASK).ByteSize()
    package_bytes = sum(f.stat().st_size for f in packages["gpt2-int4"].iterdir())
    assert package_bytes <= 0.30 * optimum_bytes, (package_bytes, optimum_bytes)


def test_run_command_generates(packages: dict[str, Path]) -> None:
    result = CliRunner().invoke(main, ["run", str(packages["gpt2-int4"]), "--prompt", "Hello", "--max-new-tokens",
                                       "5"])
    assert result.exit_code == 0, result.output


def test_builder_choice_is_said_and_checked(models: dict[str, Path], tmp_path: Path, tiny_gguf_file: Path) -> None:
    result = CliRunner().invoke(main, ["export", str(models["gpt2"]), "-o", str(tmp_path / "a")])
    assert result.exit_code == 0 and "gpt2 decoder, optimum builder" in result.output, result.output
    for args, said in (([str(models["gpt2"]), "--builder", "native"], "no native builder for architecture 'gpt2'"),
                       ([str(tiny_gguf_file), "--builder", "optimum"], "--builder optimum takes a Hugging Face")):
        result = CliRunner().invoke(main, ["export", *args, "-o", str(tmp_path / "b")])
        assert result.exit_code == 2 and said in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1
        assert not (tmp_path / "b").exists()


def test_architecture_neither_builder_knows(tmp_path: Path) -> None:
    folder = tmp_path / "unknown"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "frobnicator", "architectures":
                                                    ["FrobnicatorForCausalLM"]}))
    tokenizer_files(folder)
    result = CliRunner().invoke(main, ["export", str(folder), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "optimum could not export this model" in result.output and "frobnicator" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unknown"]
