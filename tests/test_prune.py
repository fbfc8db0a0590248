"""Structured pruning (exporters.prune): smaller real tensors per layer, exported and run exactly like the pruned
PyTorch model, alone and with low-bit weights; bad requests refused in one line with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from edgekit.exporters.hf_folder import stored_parameters
from edgekit.exporters.prune import load_pruned
from edgekit.exporters.reference import TorchReference
from edgekit.exporters.validate import Thresholds, validate
from edgekit.runtime import Model
from factories import tiny_gguf, tiny_hf_model, tiny_torch_model
from safetensors import safe_open
from test_bad_input import _fails

from edgekit.cli import main
from edgekit.evaltext import default_text
from edgekit.package import read_manifest

PLAN = """
ratio: 0.02
rules:
  - match: layers.0
    heads: 2
    mlp: 64
  - match: layers.3
    drop: true
  - match: layers.2
    keep: true
"""


def _cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_hf_model(tmp_path_factory.mktemp("prune") / "src", num_hidden_layers=4)


@pytest.fixture(scope="module")
def calib(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A calibration file: the model's own text (the default) costs more time than these tests need."""
    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    path.write_text(default_text()[:12_000])
    return str(path)


@pytest.fixture(scope="module")
def pruned(tmp_path_factory: pytest.TempPathFactory, src: Path, calib: str) -> Path:
    root = tmp_path_factory.mktemp("pruned")
    (root / "plan.yaml").write_text(PLAN)
    _cli("prune", str(src), "-o", str(root / "out"), "--plan", str(root / "plan.yaml"), "--calib", calib)
    return root / "out"


def test_plan_gives_uneven_real_tensors(src: Path, pruned: Path) -> None:
    record = json.loads((pruned / "config.json").read_text())["edgekit_pruning"]
    layers = record["layers"]
    assert record["dropped_layers"] == [3] and [x["source"] for x in layers] == [0, 1, 2]
    assert (layers[0]["heads"], layers[0]["intermediate_size"]) == (2, 64)
    assert (layers[2]["heads"], layers[2]["kv_heads"], layers[2]["intermediate_size"]) == (4, 2, 128)
    with safe_open(str(next(pruned.glob("*.safetensors"))), framework="pt") as st:
        for i, shape in enumerate(layers):
            q = st.get_slice(f"model.layers.{i}.self_attn.q_proj.weight").get_shape()
            k = st.get_slice(f"model.layers.{i}.self_attn.k_proj.weight").get_shape()
            down = st.get_slice(f"model.layers.{i}.mlp.down_proj.weight").get_shape()
            assert (q[0], k[0], down[1]) == (16 * shape["heads"], 16 * shape["kv_heads"], shape["intermediate_size"])
    params = record["parameters"]
    assert params["after"] == stored_parameters(pruned) and params["before"] == stored_parameters(src)
    assert 0.02 <= params["removed"] < 0.025  # the ratio, overshot by less than one removal step


def test_package_matches_pruned_torch_model(tmp_path: Path, pruned: Path) -> None:
    _cli("export", str(pruned), "-o", str(tmp_path / "pkg"))
    manifest = read_manifest(tmp_path / "pkg")
    record = json.loads((pruned / "config.json").read_text())["edgekit_pruning"]
    assert manifest.data["recipe"]["pruning"]["layers"] == record["layers"]
    c = manifest.model
    assert [c.heads_of(i) for i in range(c.num_layers)] == [x["heads"] for x in record["layers"]]
    assert [c.kv_heads_of(i) for i in range(c.num_layers)] == [x["kv_heads"] for x in record["layers"]]
    assert [c.intermediate_size_of(i) for i in range(c.num_layers)] == [x["intermediate_size"] for x in record["layers"]]
    report = validate(Model(tmp_path / "pkg"), TorchReference(str(pruned), "cpu"), 16, None, Thresholds())
    assert not report.failures, report.table()
    assert report.max_logit_error < 1e-4 and all(g == report.greedy_tokens for g in report.greedy_identical)
    assert "pruned: per-layer shapes" in _cli("inspect", str(tmp_path / "pkg"))


def test_uniform_pruning_loads_with_plain_transformers(tmp_path: Path, src: Path, calib: str) -> None:
    from transformers import AutoModelForCausalLM

    (tmp_path / "plan.yaml").write_text("rules:\n  - match: 'layers.*'\n    heads: 2\n    kv_heads: 1\n    mlp: 96\n")
    _cli("prune", str(src), "-o", str(tmp_path / "out"), "--plan", str(tmp_path / "plan.yaml"), "--calib", calib)
    plain = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
    ours = load_pruned(tmp_path / "out")
    ids = __import__("torch").tensor([[5, 9, 200, 31]])
    assert plain.config.num_attention_heads == 2 and plain.config.intermediate_size == 96
    assert (plain(ids).logits - ours(ids).logits).abs().max() < 1e-5


def test_export_prune_with_recovery_then_int4(tmp_path: Path, src: Path, calib: str) -> None:
    """Straight to a package: pruned by gradient importance, recovered, quantized to int4 with GPTQ; the package
    equals PyTorch running the pruned model with the package's own dequantized weights (greedy)."""
    import torch

    # A calibration file: on the default text's random-model continuations, 8 steps are too few to lower held-out KL.
    out = _cli("export", str(src), "-o", str(tmp_path / "pkg"), "--prune", "0.03", "--recover-steps", "8",
               "--weights", "int4", "--group-size", "16", "--method", "gptq", "--calib", calib)
    assert "wrote" in out
    manifest = read_manifest(tmp_path / "pkg")
    pruning = manifest.data["recipe"]["pruning"]
    assert pruning["recovery"]["steps"] == 8 and pruning["recovery"]["kl_after"] < pruning["recovery"]["kl_before"]
    assert pruning["recovery"]["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert "(pruned: ratio 0.03)" in manifest.data["source"]["name"]
    assert manifest.data["recipe"]["method"] == "gptq"
    assert not list(tmp_path.glob(".pkg.pruned-*"))  # the temporary folder is gone
    ids = Model(tmp_path / "pkg").encode("Hello world, this is")
    assert len(list(Model(tmp_path / "pkg").generate_ids(ids, __import__("edgekit.runtime", fromlist=["x"])
                                                         .GenerationConfig(max_new_tokens=8, stop_token_ids=())))) == 8


def test_seen_quantized_rounds_forward_and_trains_the_float_weights(tmp_path: Path) -> None:
    """Quantization-aware recovery's rounding: inside, the projections compute with their RTN round trip (the
    export's own rounding) and gradients reach the float weights; outside, the float weights are back."""
    import torch
    from edgekit.exporters.prune.quant_aware import seen_quantized
    from edgekit.exporters.quantize.rtn import quantize_rtn

    from edgekit.formats import GridFormat

    model = tiny_torch_model(tmp_path / "m")
    fmt = GridFormat(4, 16)
    proj = model.model.layers[0].mlp.down_proj
    latent = proj.weight.detach().clone()
    rounded = torch.from_numpy(quantize_rtn(latent.numpy(), fmt).dequantize())
    x = torch.randn(3, latent.shape[1])
    with seen_quantized(model, fmt):
        assert torch.equal(proj.weight, rounded) and not torch.equal(rounded, latent)
        out = proj(x)
        assert torch.allclose(out, x @ rounded.T, atol=1e-6)
        out.square().sum().backward()
        grad = proj.parametrizations.weight.original.grad
        assert torch.allclose(grad, 2 * out.T @ x, atol=1e-5)  # straight through: d(loss)/d(rounded weight)
    assert torch.equal(proj.weight, latent) and "parametrizations" not in dict(proj.named_children())
    assert set(model.state_dict()) == set(tiny_torch_model(tmp_path / "again").state_dict())


def test_int4_aware_recovery_then_rtn_export_is_the_trained_model(tmp_path: Path, src: Path, calib: str) -> None:
    """`prune --recover-for int4g16`, then `export --weights int4g16` (RTN): the package equals PyTorch running
    the folder with its projections rounded as recovery saw them, and any other export of the folder is refused;
    `export --prune` picks the same recovery."""
    import torch
    from edgekit.exporters.quantize.rtn import quantize_rtn
    from edgekit.exporters.quantize.spec import embedding_format

    from edgekit.formats import GridFormat

    out = _cli("prune", str(src), "-o", str(tmp_path / "out"), "--ratio", "0.03", "--recover-steps", "8",
               "--recover-for", "int4g16", "--calib", calib)
    assert "through int4g16 rounding" in out and "export with --weights int4g16, method rtn" in out
    record = json.loads((tmp_path / "out" / "config.json").read_text())["edgekit_pruning"]
    assert record["recovery"]["quantization_aware"] == "int4g16"
    assert record["recovery"]["kl_after"] < record["recovery"]["kl_before"]
    for other in ([], ["--weights", "int4g32"], ["--weights", "int4g16", "--method", "gptq", "--calib", calib]):
        _fails(["export", str(tmp_path / "out"), "-o", str(tmp_path / "pkg"), *other],
               "was recovered through int4g16 rounding: export it with --weights int4g16 and method rtn")
        assert not (tmp_path / "pkg").exists()
    _cli("export", str(tmp_path / "out"), "-o", str(tmp_path / "pkg"), "--weights", "int4g16")
    ref = TorchReference(str(tmp_path / "out"), "cpu")
    fmt = GridFormat(4, 16)
    with torch.no_grad():
        rounded = [(m, fmt) for m in ref.model.model.layers.modules() if isinstance(m, torch.nn.Linear)]
        for m, f in [*rounded, (ref.model.model.embed_tokens, embedding_format(fmt))]:  # the tied table: int8
            m.weight.copy_(torch.from_numpy(quantize_rtn(m.weight.numpy(), f).dequantize()))
    report = validate(Model(tmp_path / "pkg"), ref, 12, None, Thresholds())
    assert not report.failures and report.max_logit_error < 1e-3, report.table()

    _cli("export", str(src), "-o", str(tmp_path / "pkg2"), "--prune", "0.03", "--recover-steps", "2",
         "--weights", "int4", "--group-size", "16", "--calib", calib)
    recovery = read_manifest(tmp_path / "pkg2").data["recipe"]["pruning"]["recovery"]
    assert recovery["quantization_aware"] == "int4g16"
    assert "recovered 2 steps through int4g16 rounding" in _cli("inspect", str(tmp_path / "pkg2"))


def test_taylor_importance_and_depth(tmp_path: Path, src: Path, calib: str) -> None:
    out = _cli("prune", str(src), "-o", str(tmp_path / "out"), "--ratio", "0.02", "--depth", "0.5", "--attention-share", "1",
               "--importance", "taylor", "--calib", calib)
    assert "taylor importance" in out and "layers by the loss increase when skipped" in out
    record = json.loads((tmp_path / "out" / "config.json").read_text())["edgekit_pruning"]
    assert len(record["dropped_layers"]) == 1  # a layer is 1.1% of this model: one of the 2%, the rest from width
    assert record["parameters"]["removed"] >= 0.02 and sum(x["intermediate_size"] for x in record["layers"]) < 3 * 128
    assert sum(x["heads"] for x in record["layers"]) < 3 * 4  # --attention-share 1: heads go too
    ref = TorchReference(str(tmp_path / "out"), "cpu")
    assert len(ref.model.model.layers) == 3


@pytest.mark.parametrize("arch", ["qwen3", "gemma3_text"])
def test_other_architectures_prune_and_match(tmp_path: Path, arch: str, calib: str) -> None:
    """QK-norm (qwen3) and per-layer attention types (gemma3: sliding and global layers narrowed with the drop)."""
    src = tiny_hf_model(tmp_path / "src", arch=arch, num_hidden_layers=4)
    (tmp_path / "plan.yaml").write_text("rules:\n  - match: layers.1\n    drop: true\n  - match: layers.0\n"
                                        "    heads: 2\n    mlp: 64\n")
    _cli("prune", str(src), "-o", str(tmp_path / "out"), "--plan", str(tmp_path / "plan.yaml"), "--calib", calib)
    _cli("export", str(tmp_path / "out"), "-o", str(tmp_path / "pkg"))
    report = validate(Model(tmp_path / "pkg"), TorchReference(str(tmp_path / "out"), "cpu"), 12, None, Thresholds())
    assert not report.failures, report.table()


def test_gguf_source_pruned_and_requantized(tmp_path: Path, src: Path, calib: str) -> None:
    gguf = tiny_gguf(tmp_path / "m.gguf", src)
    _cli("export", str(gguf), "-o", str(tmp_path / "pkg"), "--prune", "0.02", "--weights", "int8", "--group-size", "16",
         "--calib", calib)
    manifest = read_manifest(tmp_path / "pkg")
    assert manifest.data["recipe"]["pruning"]["parameters"]["removed"] >= 0.02
    assert set(manifest.data["recipe"]["summary"]) <= {"int8g16", "f32"}


@pytest.mark.parametrize(("args", "expected"), [
    (["--ratio", "0"], "strictly between 0 and 1"),
    (["--ratio", "1.5"], "strictly between 0 and 1"),
    (["--ratio", "0.9"], "cannot be met without removing every head or channel"),
    ([], "nothing to prune"),
])
def test_bad_ratio(tmp_path: Path, src: Path, args: list[str], expected: str) -> None:
    _fails(["prune", str(src), "-o", str(tmp_path / "out"), *args], expected)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))


@pytest.mark.parametrize(("plan", "expected"), [
    ("rules:\n  - match: layers.9\n    drop: true\n", "matches no layer"),
    ("rules:\n  - match: 'layers.*'\n    drop: true\n", "drop every layer"),
    ("rules:\n  - match: layers.0\n    heads: 0\n", "expected a whole number of at least 1"),
    ("rules:\n  - match: layers.0\n    heads: 3\n", "cannot be kept as whole groups"),
    ("rules:\n  - match: layers.0\n    mlp: 4096\n", "more than its 128 channels"),
    ("ratio: 0.045\ndepth: 1\nrules: []\n", "every layer"),
    ("ratio: 2\n", "strictly between 0 and 1"),
    ("colour: red\n", "unknown key"),
])
def test_bad_plan(tmp_path: Path, src: Path, plan: str, expected: str) -> None:
    (tmp_path / "plan.yaml").write_text(plan)
    err = _fails(["prune", str(src), "-o", str(tmp_path / "out"), "--plan", str(tmp_path / "plan.yaml")], expected)
    assert "plan.yaml" in err or "ratio" in err
    assert not (tmp_path / "out").exists()
    _fails(["export", str(src), "-o", str(tmp_path / "pkg"), "--prune", str(tmp_path / "plan.yaml")], expected)
    assert not (tmp_path / "pkg").exists() and not list(tmp_path.glob(".pkg.*"))


def test_recover_steps_needs_prune(tmp_path: Path, src: Path) -> None:
    _fails(["export", str(src), "-o", str(tmp_path / "pkg"), "--recover-steps", "5"], "give --prune too")
    _fails(["prune", str(src), "-o", str(tmp_path / "out"), "--ratio", "0.03", "--recover-for", "int4"],
           "--recover-for shapes recovery: give --recover-steps too")
    _fails(["prune", str(src), "-o", str(tmp_path / "out"), "--ratio", "0.03", "--recover-steps", "2",
            "--recover-for", "int9"], "unknown weight format 'int9'")
    assert not (tmp_path / "out").exists()
    _fails(["export", str(src), "-o", str(tmp_path / "pkg"), "--calib-prompts", "neutral"],
           "--calib-prompts is for a pruned model: give --prune too")


def test_pruned_package_runs_without_torch(tmp_path: Path, pruned: Path) -> None:
    import subprocess
    import sys

    from test_no_torch import SCRIPT

    _cli("export", str(pruned), "-o", str(tmp_path / "pkg"), "--weights", "int4", "--group-size", "16")
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "pkg")], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0 and "generated" in result.stdout, result.stderr


def test_pruned_static_graph_for_the_npu(tmp_path: Path, pruned: Path) -> None:
    """The static-shape graph (--target qnn) takes each layer's own head counts too."""
    from edgekit.exporters.pipeline import export

    export(str(pruned), tmp_path / "pkg", targets=("cpu", "qnn"), static_chunk=8, static_context=64)
    ids = list(range(5, 60))
    dynamic, static = Model(tmp_path / "pkg"), Model(tmp_path / "pkg", target="qnn")
    np.testing.assert_allclose(static.logits(ids), dynamic.logits(ids), atol=1e-4)


def test_knowledge_calibration_never_states_an_evaluated_fact() -> None:
    """The default calibration text (exporters.prune.knowledge) must not teach the factual check: every fact's
    prompt names a subject the cut looks for, no knowledge prompt names one, and text is cut at the first one
    (whole words: the pronoun "He" is not helium's symbol)."""
    import re

    from edgekit.exporters.prune.knowledge import cut, evaluation_words, prompts

    from edgekit.factcheck import FACTS, SUBJECTS

    subject = re.compile(r"\b(" + "|".join(map(re.escape, SUBJECTS)) + r")\b", re.IGNORECASE)
    assert [p for p, _ in FACTS if not subject.search(p)] == []
    banned = evaluation_words()
    assert len(prompts()) > 500 and [p for p in prompts() if banned.search(p)] == []
    assert cut("Bogota is high. Unlike Lisbon, it is cold", banned) == "Bogota is high. Unlike"
    assert cut("Zinc is Zn. He named it; parisian cafes", banned) == "Zinc is Zn. He named it; parisian cafes"
    assert cut("water freezes", banned) == "water"


def test_knowledge_calibration_keeps_every_kind_of_prompt_under_its_cap(src: Path) -> None:
    """Where the text outgrows its cap, the cap drops a sample of all prompts, not one kind: joined in batch
    order (by prompt length), SmolLM2's text once held no chemical element at all."""
    from dataclasses import replace

    from edgekit.exporters.prune.knowledge import KNOWLEDGE, TEMPLATES, knowledge_windows
    from edgekit.exporters.sources import open_source, source_tokenizer

    tokenizer, _ = source_tokenizer(open_source(str(src)))
    model = TorchReference(str(src), "cpu").model
    windows = knowledge_windows(model, tokenizer, replace(KNOWLEDGE, new_tokens=4, max_tokens=2048))
    text = tokenizer.decode(windows.reshape(-1).tolist())
    assert windows.size == 2048
    for names, templates in TEMPLATES:
        for template in templates:
            assert any(template.format(x) in text for x in names), template


def test_neutral_calibration_prompts(tmp_path: Path, src: Path) -> None:
    out = _cli("prune", str(src), "-o", str(tmp_path / "out"), "--ratio", "0.02", "--calib-prompts", "neutral")
    record = json.loads((tmp_path / "out" / "config.json").read_text())["edgekit_pruning"]
    assert record["calibration"].startswith("self-generated from neutral prompts") and "wrote" in out
    _cli("export", str(src), "-o", str(tmp_path / "pkg"), "--prune", "0.02", "--calib-prompts", "neutral")
    pruning = read_manifest(tmp_path / "pkg").data["recipe"]["pruning"]
    assert pruning["calibration"].startswith("self-generated from neutral prompts")


def test_activation_channel_score_is_the_rms_norm_of_what_the_channel_adds(src: Path) -> None:
    """An MLP channel's activation score is RMS(activation) x its down-projection column's norm, computed here
    from the activations captured independently of importance.measure."""
    import torch
    from edgekit.exporters.prune.importance import measure

    model = TorchReference(str(src), "cpu").model
    windows = np.random.default_rng(0).integers(0, model.config.vocab_size, (6, 16))
    captured: list[torch.Tensor] = []
    down = model.model.layers[1].mlp.down_proj
    handle = down.register_forward_pre_hook(
        lambda _m, args: captured.append(args[0].detach().reshape(-1, down.in_features)))
    try:
        scores = measure(model, windows, "activation", with_layers=False).channels[1]
    finally:
        handle.remove()
    a = torch.cat(captured).double()
    expected = a.pow(2).mean(0).sqrt() * down.weight.detach().double().norm(dim=0)
    np.testing.assert_allclose(scores, expected.numpy(), rtol=1e-6)
    assert not np.allclose(scores, (a.abs().mean(0) * down.weight.detach().double().norm(dim=0)).numpy(), rtol=1e-3)
