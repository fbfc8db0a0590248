"""The static-shape decoder graph (`--target qnn`) run on the CPU: the same tokens and logits as the dynamic graph,
chunking, rollback, a full context, and the export options it takes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from edgekit.runtime import Model
from edgekit.runtime.coverage import coverage
from factories import tiny_hf_model

from edgekit.cli import main
from edgekit.errors import EdgekitError

CHUNK, CONTEXT = 8, 96
PROMPTS = ["Hi", "The capital of France is", "Once upon a time, in a land far away, there lived a small dragon who",
           "def add(a, b):\n    return a + b\n\nprint(add(2, 3))"]


@pytest.fixture(scope="module")
def static_pkg(tmp_path_factory: pytest.TempPathFactory, tiny_gguf_file: Path) -> Path:
    out = tmp_path_factory.mktemp("static") / "pkg"
    result = CliRunner().invoke(main, ["export", str(tiny_gguf_file), "-o", str(out), "--target", "cpu",
                                       "--target", "qnn", "--static-chunk", str(CHUNK),
                                       "--static-context", str(CONTEXT)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def models(static_pkg: Path) -> tuple[Model, Model]:
    """(the dynamic cpu graph, the static graph on the CPU) of one package."""
    return Model(static_pkg), Model(static_pkg, target="qnn")


def test_manifest_records_the_static_target(static_pkg: Path) -> None:
    m = json.loads((static_pkg / "manifest.json").read_text())
    assert m["graph"]["targets"]["qnn"] == {"provider": "QNNExecutionProvider", "file": "model.qnn.onnx",
                                            "step_file": "model.qnn-step.onnx",
                                            "static": {"chunk": CHUNK, "context": CONTEXT}, "activations": "float"}
    graph = onnx.load(str(static_pkg / "model.qnn.onnx"), load_external_data=False)
    step = onnx.load(str(static_pkg / "model.qnn-step.onnx"), load_external_data=False)
    step_shapes = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in step.graph.input}
    assert step_shapes["input_ids"] == [1, 1] and step_shapes["attention_mask"] == [1, 1, 1, CONTEXT + 1]
    assert step_shapes["past_key_values.0.key"] == [1, 2, CONTEXT, 16]
    assert {n.domain for n in graph.graph.node} <= {"", "edgekit"}  # no com.microsoft kernels
    shapes = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.graph.input}
    assert shapes["input_ids"] == shapes["position_ids"] == [1, CHUNK]
    assert shapes["attention_mask"] == [1, 1, CHUNK, CONTEXT + CHUNK]
    assert shapes["past_key_values.0.key"] == [1, 2, CONTEXT, 16]
    out = {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in graph.graph.output}
    assert out["present.1.value"] == [1, 2, CHUNK, 16]
    # The weights are the portable graph's initializers, stored once.
    portable = onnx.load(str(static_pkg / "model.onnx"), load_external_data=False)
    external = {t.name for t in graph.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}
    assert external and external <= {t.name for t in portable.graph.initializer}
    assert {t.name for t in step.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL} == external


def test_decode_steps_run_the_step_graph(models: tuple[Model, Model]) -> None:
    """The prompt goes through the chunk graph in whole chunks, then its short tail and every decode step through
    the one-token graph: no step pays a padded chunk."""
    dynamic, static = models
    runs = {"chunk": 0, "step": 0}

    class Counted:
        def __init__(self, session: object, kind: str):
            self.session, self.kind = session, kind

        def run(self, *args: object) -> object:
            runs[self.kind] += 1
            return self.session.run(*args)  # type: ignore[attr-defined]

    d = static.decoder
    assert d.step_below == 2  # max(2, C / 8) for C = 8: single tokens step
    d.session, d.step_session = Counted(d.session, "chunk"), Counted(d.step_session, "step")
    try:
        ids = dynamic.encode(PROMPTS[2])
        tail = len(ids) % CHUNK
        d.reset()
        logits = d.forward(ids, n_logits=len(ids))
        assert runs == {"chunk": len(ids) // CHUNK + (tail >= 2), "step": int(tail == 1)}
        np.testing.assert_allclose(logits, dynamic.logits(ids), atol=1e-4)
        before = dict(runs)
        for token in (5, 6, 7):
            d.forward([token])
        assert runs == {"chunk": before["chunk"], "step": before["step"] + 3}
    finally:
        d.session, d.step_session = d.session.session, d.step_session.session


def test_a_one_token_chunk_needs_no_step_graph(tmp_path: Path, tiny_gguf_file: Path) -> None:
    from edgekit.exporters.pipeline import export

    export(str(tiny_gguf_file), tmp_path / "pkg", targets=("qnn",), static_chunk=1, static_context=16)
    assert "step_file" not in json.loads((tmp_path / "pkg" / "manifest.json").read_text())["graph"]["targets"]["qnn"]
    assert not (tmp_path / "pkg" / "model.qnn-step.onnx").exists()
    ids = [5, 6, 7, 8]
    assert len(list(Model(tmp_path / "pkg", target="qnn").generate_ids(ids, max_new_tokens=4))) == 4


def test_greedy_and_logits_equal_the_dynamic_graph(models: tuple[Model, Model]) -> None:
    dynamic, static = models
    assert static.max_length == CONTEXT
    for prompt in PROMPTS:
        ids = dynamic.encode(prompt)
        want = list(dynamic.generate_ids(ids, max_new_tokens=32))
        assert list(static.generate_ids(ids, max_new_tokens=32)) == want, prompt
        np.testing.assert_allclose(static.logits(ids + want), dynamic.logits(ids + want), atol=1e-4)
    assert len(dynamic.encode(PROMPTS[2])) > 2 * CHUNK  # a prompt of several chunks, the last one padded


def test_speculative_and_rollback(models: tuple[Model, Model]) -> None:
    _, static = models
    ids = static.encode(PROMPTS[3] * 2)
    plain = list(static.generate_ids(ids, max_new_tokens=24))
    assert list(static.generate_ids(ids, max_new_tokens=24, speculative="ngram")) == plain
    assert static.last_stats.drafted > 0
    d = static.decoder
    d.reset()
    fresh = d.forward(ids + plain[:10], n_logits=10)
    d.reset()
    d.forward(ids + [5, 6, 7, 8, 9, 10, 11, 12, 13])  # a wrong continuation crossing a chunk boundary, rolled back
    d.rollback(len(ids))
    np.testing.assert_allclose(d.forward(plain[:10], n_logits=10), fresh, atol=1e-5)
    assert d.length == len(ids) + 10


def test_context_full_is_one_error(models: tuple[Model, Model]) -> None:
    d = models[1].decoder
    d.reset()
    d.forward(list(range(3, 3 + CONTEXT - 2)))
    with pytest.raises(EdgekitError, match=f"context full: {CONTEXT + 1} tokens exceed the maximum length {CONTEXT}"):
        d.forward([3, 4, 5])
    d.forward([3, 4])  # exactly full
    assert d.length == CONTEXT
    # Generation stops at the last slot, as with a dynamic graph; a prompt that fills the context is refused.
    assert len(list(models[1].generate_ids(list(range(3, 3 + CONTEXT - 3)), max_new_tokens=8))) == 3
    with pytest.raises(EdgekitError, match=f"the context holds {CONTEXT} .export with a larger --static-context"):
        models[1].encode("word " * CONTEXT)


def test_no_static_graph_is_one_error(tiny_gguf_pkg: Path) -> None:
    with pytest.raises(EdgekitError, match=r"this package has no qnn graph \(export with --target qnn\)"):
        Model(tiny_gguf_pkg, target="qnn")


@pytest.mark.parametrize(("args", "message"), [
    (["--target", "qnn", "--static-chunk", "100", "--static-context", "50"],
     "--static-chunk 100 is more than --static-context 50"),
    (["--target", "qnn", "--static-context", "1000"], "--static-context 1000 is more than the model's 256 positions"),
    (["--target", "qnn", "--static-chunk", "0"], "must be at least 1"),
    (["--target", "qnn", "--draft", "auto"], "--draft needs dynamic shapes"),
    (["--static-chunk", "8"], "are for static-shape targets (--target qnn)"),
    (["--target", "qnn", "--calib", "text.txt"], "a decoder's static graph has float activations, nothing to calibrate"),
])
def test_bad_static_options_are_one_line(tmp_path: Path, tiny_gguf_file: Path, args: list[str], message: str) -> None:
    out = tmp_path / "pkg"
    result = CliRunner().invoke(main, ["export", str(tiny_gguf_file), "-o", str(out), *args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.iterdir())


def test_default_shapes_fit_the_model(tmp_path: Path, tiny_gguf_file: Path) -> None:
    from edgekit.exporters.sources import open_source
    from edgekit.exporters.static_graph import static_shapes

    config = open_source(str(tiny_gguf_file)).config  # 256 positions
    assert static_shapes(config, None, None).to_dict() == {"chunk": 64, "context": 256}
    assert static_shapes(config, None, 32).to_dict() == {"chunk": 32, "context": 32}


def test_runs_wholly_on_the_qnn_htp_simulator(static_pkg: Path, models: tuple[Model, Model], tmp_path: Path,
                                              capfd: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """`device="qnn"` runs the static graphs (chunk and step) on QNN's HTP simulator (onnxruntime-qnn, x86 Linux;
    float16): every node on the NPU, the same greedy tokens as the static graphs on the CPU. The coverage lines
    cost a measuring session per graph on the first load only."""
    pytest.importorskip("onnxruntime_qnn")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    measured = []
    monkeypatch.setattr("edgekit.runtime.coverage.coverage", lambda *args: measured.append(args) or coverage(*args))
    npu = Model(static_pkg, device="qnn")
    assert npu.provider == "QNNExecutionProvider"
    placed = re.findall(r"QNN \(HTP\): (\d+) of (\d+) nodes on the NPU", capfd.readouterr().err)
    assert len(placed) == 2 and all(on == total for on, total in placed), placed  # the chunk and step graphs
    assert len(measured) == 2
    Model(static_pkg, device="qnn")  # a second load reads the coverage lines from the user's cache
    assert re.findall(r"QNN \(HTP\): (\d+) of (\d+) nodes on the NPU", capfd.readouterr().err) == placed
    assert len(measured) == 2
    ids = models[1].encode(PROMPTS[2])  # several chunks
    assert list(npu.generate_ids(ids, max_new_tokens=8)) == list(models[1].generate_ids(ids, max_new_tokens=8))


def test_inspect_reports_both_static_graphs(static_pkg: Path) -> None:
    """`inspect --ep qnn` measures the chunk graph and the step graph; --require-full holds for both."""
    pytest.importorskip("onnxruntime_qnn")
    result = CliRunner().invoke(main, ["inspect", str(static_pkg), "--ep", "qnn", "--json", "--require-full"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["graph"] == "model.qnn.onnx" and report["full"]
    assert [(g["graph"], g["full"]) for g in report["other_graphs"]] == [("model.qnn-step.onnx", True)]
    assert report["other_graphs"][0]["nodes"] == report["nodes"]  # the same graph at another chunk length
    text = CliRunner().invoke(main, ["inspect", str(static_pkg), "--ep", "qnn"]).output
    assert "graph: model.qnn.onnx" in text and "graph: model.qnn-step.onnx" in text


@pytest.mark.parametrize(("arch", "chunk", "context"), [("qwen2", 8, 64), ("qwen3", 8, 64), ("gemma3_text", 4, 8)])
def test_other_architectures(tmp_path: Path, arch: str, chunk: int, context: int) -> None:
    """Biases, QK-norm, Gemma's scaled embedding, post-norms and soft-capping: the same primitives, static.
    The tiny Gemma's sliding window is 8 tokens, so its context is 8 at most."""
    from edgekit.exporters.pipeline import export

    export(str(tiny_hf_model(tmp_path / "src", arch=arch)), tmp_path / "pkg", targets=("cpu", "qnn"),
           static_chunk=chunk, static_context=context)
    ids = list(range(5, 5 + context - 2))
    dynamic, static = Model(tmp_path / "pkg"), Model(tmp_path / "pkg", target="qnn")
    np.testing.assert_allclose(static.logits(ids), dynamic.logits(ids), atol=1e-4)


def test_short_sliding_window_is_refused(tmp_path: Path) -> None:
    src = tiny_hf_model(tmp_path / "mistral", arch="mistral", sliding_window=16)
    result = CliRunner().invoke(main, ["export", str(src), "-o", str(tmp_path / "pkg"), "--target", "qnn",
                                       "--static-context", "64"])
    assert result.exit_code == 2, result.output
    assert "sliding window of 16 tokens: a static graph needs --static-context 16 or less" in result.stderr


@pytest.mark.slow
def test_real_model_static_greedy_equals_dynamic(tmp_path: Path) -> None:
    out = tmp_path / "pkg"
    result = CliRunner().invoke(main, ["export", "smollm2-135m", "-o", str(out), "--target", "cpu",
                                       "--target", "qnn"])
    assert result.exit_code == 0, result.output
    dynamic, static = Model(out), Model(out, target="qnn")
    assert static.max_length == 512
    for prompt in ["The capital of France is", "Write a haiku about the sea.", "def fibonacci(n):",
                   ("In 1969, the first humans landed on the Moon. The mission was called Apollo 11, and the "
                   "astronauts were Neil Armstrong, Buzz Aldrin and Michael Collins, who stayed in orbit while "
                   "the other two walked on the surface for about two and a half hours. Summarize this:")]:
        ids = dynamic.encode(prompt, chat=True)
        want = list(dynamic.generate_ids(ids, max_new_tokens=32))
        assert list(static.generate_ids(ids, max_new_tokens=32)) == want, prompt
