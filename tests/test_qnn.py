"""NPU: graphs on Qualcomm's QNN execution provider (its HTP simulator on x86 Linux), coverage read from
onnxruntime's partitioning, `inspect --ep`, and `--device qnn` with CPU fallback. QNN tests skip without the
`onnxruntime-qnn` plugin; the fallback and missing-provider tests run everywhere."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from edgekit.runtime import providers
from edgekit.runtime.coverage import coverage, from_log
from edgekit.runtime.providers import create_session, select_provider

from edgekit.cli import main

QNN = "QNNExecutionProvider"
needs_qnn = pytest.mark.skipif(importlib.util.find_spec("onnxruntime_qnn") is None,
                               reason="the onnxruntime-qnn plugin is not installed")


def _qdq_model(folder: Path, extra_op: str | None = None) -> Path:
    """x [1, 8] -> MatMul -> Add -> Relu (-> extra_op) -> MatMul -> Softmax -> y [1, 4], QDQ-quantized
    (uint16 activations, uint8 weights) from a float model."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
               for name, shape in (("w1", (8, 16)), ("b1", (16,)), ("w2", (16, 4)))]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h1"], name="mm1"),
             helper.make_node("Add", ["h1", "b1"], ["h2"], name="add"),
             helper.make_node("Relu", ["h2"], ["h3"], name="relu")]
    if extra_op:
        nodes.append(helper.make_node(extra_op, ["h3"], ["h3x"], name="extra"))
    nodes += [helper.make_node("MatMul", [nodes[-1].output[0], "w2"], ["h4"], name="mm2"),
              helper.make_node("Softmax", ["h4"], ["y"], name="softmax", axis=-1)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    float_path, qdq_path = folder / f"float-{extra_op}.onnx", folder / f"qdq-{extra_op}.onnx"
    onnx.save(model, float_path)

    class Calibration(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"x": rng.standard_normal((1, 8)).astype(np.float32)} for _ in range(16)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    quantize_static(str(float_path), str(qdq_path), Calibration(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt16, weight_type=QuantType.QUInt8)
    return qdq_path


@needs_qnn
def test_qdq_graph_runs_whole_on_the_htp(tmp_path: Path) -> None:
    graph = _qdq_model(tmp_path)
    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    npu = create_session(graph, options, QNN)
    assert npu.get_providers()[0] == "QNN"
    x = np.random.default_rng(1).standard_normal((1, 8)).astype(np.float32)
    cpu = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(npu.run(None, {"x": x})[0], cpu.run(None, {"x": x})[0], atol=1e-3)
    measured = coverage(graph, QNN)
    assert measured.full and measured.total == measured.on_provider > 5 and not measured.fallback
    assert measured.by_op["MatMul"] == [2, 0] and measured.by_op["Softmax"] == [1, 0]
    assert measured.summary() == f"QNN (HTP): {measured.total} of {measured.total} nodes on the NPU"


@needs_qnn
def test_an_op_the_htp_lacks_falls_back(tmp_path: Path) -> None:
    measured = coverage(_qdq_model(tmp_path, "Erf"), QNN)  # exact GELU's Erf: QNN has no HTP kernel for it
    assert not measured.full
    assert measured.by_op["Erf"] == [0, 1] and measured.by_op["Softmax"] == [1, 0]
    assert "extra" in [node.name for node in measured.fallback]
    assert "fall back to the CPU (" in measured.summary() and "Erf 1" in measured.summary()


@needs_qnn
def test_inspect_require_full_on_a_graph_of_edgekit_ops(tiny_gguf_pkg: Path) -> None:
    result = CliRunner().invoke(main, ["inspect", str(tiny_gguf_pkg), "--ep", "qnn", "--require-full"])
    assert result.exit_code == 1, result.output
    assert "graph: model.onnx" in result.stdout  # no graph lowered for QNN: the portable one
    assert "GroupQueryAttention" in result.stdout and "fall back to the CPU" in result.stdout
    as_json = CliRunner().invoke(main, ["inspect", str(tiny_gguf_pkg), "--ep", "qnn", "--json"])
    assert as_json.exit_code == 0, as_json.output
    report = json.loads(as_json.stdout)
    assert report["full"] is False and report["nodes"] == report["on_provider"] + report["fallback"]
    assert report["by_op"]["GroupQueryAttention"]["fallback"] == 2


@needs_qnn
def test_run_on_qnn_falls_back_node_by_node(tiny_gguf_pkg: Path) -> None:
    args = ["run", str(tiny_gguf_pkg), "--prompt", "The capital of France is", "--max-new-tokens", "6"]
    cpu, npu = CliRunner().invoke(main, args), CliRunner().invoke(main, [*args, "--device", "qnn"])
    assert npu.exit_code == 0, npu.output
    assert "edgekit: QNN (HTP): " in npu.stderr and " nodes on the NPU; " in npu.stderr
    assert npu.stdout == cpu.stdout


@needs_qnn
def test_embed_on_qnn_matches_the_cpu(tiny_encoder_pkg: Path) -> None:
    args = ["embed", str(tiny_encoder_pkg), "A cat sat on the mat.", "Markets fell.", "--json"]
    cpu, npu = CliRunner().invoke(main, args), CliRunner().invoke(main, [*args, "--device", "qnn"])
    assert npu.exit_code == 0, npu.output
    assert "edgekit: QNN (HTP): " in npu.stderr
    np.testing.assert_allclose(json.loads(npu.stdout)["embeddings"], json.loads(cpu.stdout)["embeddings"],
                               atol=1e-4)


def test_inspect_ep_cpu_is_full(tiny_gguf_pkg: Path) -> None:
    result = CliRunner().invoke(main, ["inspect", str(tiny_gguf_pkg), "--ep", "cpu", "--require-full"])
    assert result.exit_code == 0, result.output
    assert "graph: model.cpu.onnx" in result.stdout and "nodes on the CPU" in result.stdout


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA is installed")
def test_inspect_ep_cuda_without_cuda_is_one_line(tiny_gguf_pkg: Path) -> None:
    result = CliRunner().invoke(main, ["inspect", str(tiny_gguf_pkg), "--ep", "cuda"])
    assert result.exit_code == 2
    assert result.stderr.startswith("edgekit: error: cannot measure coverage: CUDAExecutionProvider is not "
                                    "available") and result.stderr.count("\n") == 1


# onnxruntime 1.32's placement report for a graph split between CUDA and the CPU (timestamps cut)
CUDA_PLACEMENTS = """\
[V:onnxruntime:, session_state.cc:1598 VerifyEachNodeIsAssignedToAnEp] Node placements
[V:onnxruntime:, session_state.cc:1604 VerifyEachNodeIsAssignedToAnEp]  Node(s) placed on [CUDAExecutionProvider]. Number of nodes: 3
[V:onnxruntime:, session_state.cc:1606 VerifyEachNodeIsAssignedToAnEp]   MatMulNBits (MatMulNBits_1)
[V:onnxruntime:, session_state.cc:1606 VerifyEachNodeIsAssignedToAnEp]   MatMulNBits (MatMulNBits_2)
[V:onnxruntime:, session_state.cc:1606 VerifyEachNodeIsAssignedToAnEp]   GroupQueryAttention (gqa)
[V:onnxruntime:, session_state.cc:1604 VerifyEachNodeIsAssignedToAnEp]  Node(s) placed on [CPUExecutionProvider]. Number of nodes: 2
[V:onnxruntime:, session_state.cc:1606 VerifyEachNodeIsAssignedToAnEp]   Shape ()
[V:onnxruntime:, session_state.cc:1606 VerifyEachNodeIsAssignedToAnEp]   Gather (Gather_3)
"""


def test_placements_give_per_op_coverage() -> None:
    measured = from_log("CUDAExecutionProvider", CUDA_PLACEMENTS)
    assert (measured.total, measured.on_provider) == (5, 3)
    assert measured.by_op == {"MatMulNBits": [2, 0], "GroupQueryAttention": [1, 0], "Shape": [0, 1], "Gather": [0, 1]}
    assert [(n.op_type, n.name) for n in measured.fallback] == [("Shape", ""), ("Gather", "Gather_3")]
    assert measured.summary() == ("CUDAExecutionProvider: 3 of 5 nodes on the GPU; 2 fall back to the CPU "
                                  "(Gather 1, Shape 1)")
    everything = from_log("CPUExecutionProvider", "[V:onnxruntime:, session_state.cc:1601 "
                          "VerifyEachNodeIsAssignedToAnEp]  All nodes placed on [CPUExecutionProvider]. Number of "
                          "nodes: 79\n")
    assert everything.full and everything.total == 79 and not everything.by_op


def test_require_full_needs_an_ep(tiny_gguf_pkg: Path) -> None:
    result = CliRunner().invoke(main, ["inspect", str(tiny_gguf_pkg), "--require-full"])
    assert result.exit_code == 2 and result.stderr.startswith("edgekit: error: --require-full needs --ep")


def test_missing_plugin_falls_back_to_the_cpu(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(providers.PLUGINS, QNN, replace(providers.PLUGINS[QNN], module="onnxruntime_qnn_absent"))
    monkeypatch.setattr(providers, "_registered", {})
    assert select_provider("qnn") == "CPUExecutionProvider"
    err = capsys.readouterr().err
    assert err == ("edgekit: QNNExecutionProvider needs the onnxruntime-qnn plugin (pip install onnxruntime-qnn): "
                   "not installed, not loadable here, or it finds no device; falling back to CPUExecutionProvider\n")


@needs_qnn
@pytest.mark.skipif(not providers.PLUGINS[QNN].simulated(), reason="a real HTP: auto may take it")
def test_auto_passes_over_the_htp_simulator() -> None:
    assert select_provider("qnn") == QNN and select_provider("auto") != QNN


def test_a_graph_the_provider_cannot_compile_runs_on_the_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture) -> None:
    """A provider that fails to build a sound graph (the HTP does with some ops: QNN_COMMON_ERROR_MEM_ALLOC) is
    one line naming the provider, and the graph runs on the CPU; not "corrupt package"."""
    from edgekit.runtime import decoder

    def failing(graph: Path, options: ort.SessionOptions, provider: str) -> ort.InferenceSession:
        if provider != "CPUExecutionProvider":
            raise RuntimeError("QNN_COMMON_ERROR_MEM_ALLOC\nmore lines")
        return create_session(graph, options, provider)

    monkeypatch.setattr(decoder, "create_session", failing)
    path = _qdq_model(tmp_path)
    session = decoder.make_session(path, decoder.SessionSettings(provider=QNN))
    assert session.get_providers() == ["CPUExecutionProvider"]
    said = capsys.readouterr().err.strip().splitlines()
    assert said == [(f"edgekit: {QNN} could not take this graph (QNN_COMMON_ERROR_MEM_ALLOC); running it on "
                    "CPUExecutionProvider")]
    session.run(None, {"x": np.zeros((1, 8), np.float32)})
