"""`edgekit export --target qnn` for sentence encoders: the static-shape QDQ graph runs wholly on QNN's HTP
simulator (CPU fallback disabled: a session is created only if every node is on the NPU) and embeds as the float
package does; the manifest records the target; bad input is one line, exit 2, nothing written. The slow test
takes all-MiniLM-L6-v2 against PyTorch."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from edgekit.runtime import Encoder

from edgekit.cli import main
from edgekit.errors import EdgekitError

ort = pytest.importorskip("onnxruntime")
onnxruntime_qnn = pytest.importorskip("onnxruntime_qnn")

TEXTS = ["A cat sits on the mat.", "Stock markets fell sharply today.", "Hi",
         "Where is the nearest train station, please?"]


@pytest.fixture(scope="module")
def qnn_plugin() -> None:
    """QNN's plugin registered once per process (a second registration fails)."""
    if not any(d.ep_name == "QNN" for d in ort.get_ep_devices()):
        ort.register_execution_provider_library("QNN", onnxruntime_qnn.get_library_path())


def htp_session(path: Path, settings: Any = None) -> Any:
    """An onnxruntime session on QNN's HTP simulator that fails rather than fall back to the CPU for any node."""
    devices = [d for d in ort.get_ep_devices() if d.ep_name == "QNN"]
    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    options.add_provider_for_devices(devices, {"backend_path": onnxruntime_qnn.get_qnn_htp_path()})
    return ort.InferenceSession(str(path), options)


def htp_encoder(pkg: Path, monkeypatch: pytest.MonkeyPatch) -> Encoder:
    """The package's qnn graph in an Encoder whose session is on the HTP simulator."""
    monkeypatch.setattr("edgekit.runtime.encoder.make_session", htp_session)
    return Encoder(pkg, target="qnn")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def qnn_pkg(tmp_path_factory: pytest.TempPathFactory, tiny_encoder_src: Path) -> Path:
    out = tmp_path_factory.mktemp("qnn") / "pkg"
    result = CliRunner().invoke(main, ["export", str(tiny_encoder_src), "-o", str(out), "--target", "cpu",
                                       "--target", "qnn", "--static-length", "32"])
    assert result.exit_code == 0, result.output
    return out


def test_manifest_records_the_qnn_target(qnn_pkg: Path) -> None:
    manifest = json.loads((qnn_pkg / "manifest.json").read_text())
    entry = manifest["graph"]["targets"]["qnn"]
    assert entry == {"provider": "QNNExecutionProvider", "file": "model.qnn.onnx",
                     "static": {"batch": 1, "sequence": 32},
                     "quantization": {"format": "QDQ (QNN's own, not edgekit's block formats)",
                                      "activations": "uint16", "weights": "uint8 per channel (embedding tables uint16)"},
                     "calibration": "held-out text, 256 sentences"}
    assert "model.qnn.onnx" in manifest["files"]
    session = ort.InferenceSession(str(qnn_pkg / "model.qnn.onnx"), providers=["CPUExecutionProvider"])
    assert [(i.name, i.shape) for i in session.get_inputs()] == [(name, [1, 32]) for name in manifest["graph"]["inputs"]]


def test_calib_alone_calibrates_the_qnn_graph(qnn_pkg: Path, tiny_encoder_src: Path, tmp_path: Path) -> None:
    """--calib without a quantization method sets the QDQ graph's ranges: its sentences, not the held-out text."""
    from onnx import load, numpy_helper

    calib = tmp_path / "calib.txt"
    calib.write_text("\n".join(f"Sentence number {i} talks about {w} and other things, at length." for i, w in
                               enumerate(["rivers", "trains", "music", "bread", "stars", "chess"] * 10)))
    out = tmp_path / "pkg"
    result = CliRunner().invoke(main, ["export", str(tiny_encoder_src), "-o", str(out), "--target", "cpu", "--target",
                                       "qnn", "--static-length", "32", "--calib", str(calib)])
    assert result.exit_code == 0, result.output
    entry = json.loads((out / "manifest.json").read_text())["graph"]["targets"]["qnn"]
    assert entry["calibration"] == "calib.txt, 60 sentences"

    def activation_scales(pkg: Path) -> dict[str, np.ndarray]:
        """Each quantized activation's scale, by tensor name."""
        graph = load(str(pkg / "model.qnn.onnx")).graph
        values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        return {n.input[0]: values[n.input[1]] for n in graph.node if n.op_type == "QuantizeLinear"}

    mine, held_out = activation_scales(out), activation_scales(qnn_pkg)
    assert mine.keys() == held_out.keys()
    assert any(not np.array_equal(mine[k], held_out[k]) for k in mine)
    on_cpu = Encoder(out, target="qnn").embed(TEXTS)
    assert cosines(on_cpu, Encoder(out).embed(TEXTS)).min() >= 0.99


def test_runs_wholly_on_the_htp_simulator_close_to_float(qnn_pkg: Path, qnn_plugin: None,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    float_cpu = Encoder(qnn_pkg).embed(TEXTS)
    encoder = htp_encoder(qnn_pkg, monkeypatch)
    assert encoder.max_length == 32
    on_npu = encoder.embed(TEXTS)
    assert cosines(on_npu, float_cpu).min() >= 0.99, cosines(on_npu, float_cpu)
    np.testing.assert_allclose(encoder.embed(TEXTS[0]), on_npu[:1], atol=1e-6)  # alone or among others: the same
    # Texts are cut at the static length, not refused: 120 and 33 words both come down to their first 32 tokens.
    np.testing.assert_allclose(encoder.embed("a long text " * 40), encoder.embed("a long text " * 11), atol=1e-6)


@pytest.mark.parametrize("arch", ["Roberta", "MPNet"])
def test_other_encoder_architectures_run_wholly_on_the_simulator(arch: str, tmp_path: Path, qnn_plugin: None,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """RoBERTa's positions (a cumulative sum over the ids) and MPNet's relative position buckets fold or map to
    the HTP too."""
    from factories import tiny_sentence_encoder

    src = tiny_sentence_encoder(tmp_path / "src", arch=arch)
    result = CliRunner().invoke(main, ["export", str(src), "-o", str(tmp_path / "pkg"), "--target", "qnn"])
    assert result.exit_code == 0, result.output
    float_cpu = Encoder(tmp_path / "pkg").embed(TEXTS)
    assert cosines(htp_encoder(tmp_path / "pkg", monkeypatch).embed(TEXTS), float_cpu).min() >= 0.99


def test_forced_qnn_graph_runs_on_the_cpu_too(qnn_pkg: Path) -> None:
    """The QDQ graph is standard ONNX: the CPU runs it (to check a package without an NPU)."""
    on_cpu = Encoder(qnn_pkg, target="qnn").embed(TEXTS[:3])
    assert cosines(on_cpu, Encoder(qnn_pkg).embed(TEXTS[:3])).min() >= 0.99


def test_a_damaged_static_shape_is_one_line(qnn_pkg: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "pkg"
    shutil.copytree(qnn_pkg, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["graph"]["targets"]["qnn"]["static"] = {"batch": 4, "sequence": 32}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EdgekitError, match="graph.targets.qnn.static is not {batch: 1, sequence: N}"):
        Encoder(copy, target="qnn")


def test_forcing_a_graph_the_package_lacks_is_one_line(tiny_encoder_pkg: Path, qnn_pkg: Path) -> None:
    with pytest.raises(EdgekitError, match="this package has no qnn graph \\(export with --target qnn\\)"):
        Encoder(tiny_encoder_pkg, target="qnn")
    with pytest.raises(EdgekitError, match="this package has no qnn fast graph"):  # static graphs have no fast mode
        Encoder(qnn_pkg, target="qnn", fast=True)
    np.testing.assert_allclose(Encoder(qnn_pkg, target="portable").embed(TEXTS), Encoder(qnn_pkg).embed(TEXTS),
                               atol=1e-5)


@pytest.mark.parametrize("case", ["static length for a decoder", "static chunk for an encoder", "static length too long",
                                  "static length without qnn"])
def test_bad_input_is_one_line_and_writes_nothing(case: str, tiny_hf: Path, tiny_encoder_src: Path,
                                                  tmp_path: Path) -> None:
    src, options, expected = {
        "static length for a decoder": (tiny_hf, ["--target", "qnn", "--static-length", "16"],
                                        ("--static-length is for encoders (a decoder's static graph takes "
                                         "--static-chunk and --static-context)")),
        "static chunk for an encoder": (tiny_encoder_src, ["--target", "qnn", "--static-chunk", "8"],
                                        "--static-chunk and --static-context shape a native decoder's static graph"),
        "static length too long": (tiny_encoder_src, ["--target", "qnn", "--static-length", "49"],
                                   ("--static-length 49 is out of range: this encoder reads 2 to 48 tokens "
                                   "(max_seq_length 48, positions 64)")),
        "static length without qnn": (tiny_encoder_src, ["--static-length", "16"],
                                      ("--static-length, --static-chunk and --static-context are for static-shape "
                                       "targets (--target qnn)")),
    }[case]
    out = tmp_path / "pkg"
    result = CliRunner().invoke(main, ["export", str(src), "-o", str(out), *options])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and expected in result.output, result.output
    assert list(tmp_path.iterdir()) == []


def test_optimum_decoder_is_refused(tmp_path: Path) -> None:
    from factories import tiny_optimum_decoder

    src = tiny_optimum_decoder(tmp_path / "src", "gpt2")
    result = CliRunner().invoke(main, ["export", str(src), "-o", str(tmp_path / "pkg"), "--target", "qnn"])
    assert result.exit_code == 2 and "--target qnn needs a sentence-embedding encoder" in result.output
    assert not (tmp_path / "pkg").exists()


@pytest.mark.slow
def test_minilm_on_the_htp_simulator_matches_pytorch(tmp_path: Path, qnn_plugin: None,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Every node on the simulator, mean cosine to PyTorch >= 0.99 on the validation sentences. The simulator's
    speed (printed) emulates the HTP on the CPU: it says nothing of a device's."""
    from edgekit.exporters.encoder_reference import TorchEncoderReference
    from edgekit.exporters.sentences import VALIDATION_SENTENCES
    from factories import MINILM

    texts = list(VALIDATION_SENTENCES)
    start = time.perf_counter()
    result = CliRunner().invoke(main, ["export", str(MINILM), "-o", str(tmp_path / "pkg"), "--target", "qnn"])
    export_s = time.perf_counter() - start
    assert result.exit_code == 0, result.output
    encoder = htp_encoder(tmp_path / "pkg", monkeypatch)
    assert encoder.max_length == 128
    start = time.perf_counter()
    embedded = encoder.embed(texts)
    rate = len(texts) / (time.perf_counter() - start)
    c = cosines(embedded, TorchEncoderReference(str(MINILM), "cpu").embed(texts))
    print(f"all-MiniLM-L6-v2 qnn: {len(texts)} sentences, cosine to PyTorch mean {c.mean():.4f} min {c.min():.4f}; "
          f"simulator {rate:.2f} sentences/s; export {export_s:.0f} s")
    assert len(texts) >= 100 and c.mean() >= 0.99 and c.min() >= 0.95
