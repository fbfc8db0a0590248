"""The `qnn` target's graph: a sentence-embedding encoder for Qualcomm's HTP (NPU), made at export from the
model's float graph.

The HTP runs fixed-point QDQ graphs with static shapes and has no kernels for edgekit's block formats, so this
graph is not lowered from edgekit ops. optimum's float graph gets fixed input shapes [1, L] (the runtime pads
every text to L tokens and runs one text at a time), pooling and normalization, its shape arithmetic folded by
onnxruntime, and is then quantized by onnxruntime's QNN helpers: QDQ, uint16 activations, uint8 weights per
output channel (QNN's own formats, stored beside the portable graph's), ranges calibrated on sentences padded
as the runtime pads them.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from edgekit.exporters.optimum_build import OptimumBuild, calibration_sentences
from edgekit.exporters.pooling_graph import append_pooling
from edgekit.exporters.quantize.spec import CalibrationConfig
from edgekit.exporters.static_graph import StaticGraph
from edgekit.runtime.encoder import FED_INPUTS, pad_token_id
from onnx import numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize
from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config, qnn_preprocess_model
from tokenizers import Tokenizer

from edgekit.errors import EdgekitError
from edgekit.progress import progress
from edgekit.targets import Target

# Attention scores stay within tens of units in trained encoders; the mask's float32 minimum added to them stretches
# the uint16 range of that Add so far that the scores round to one value. all-MiniLM-L6-v2, QDQ graph on the CPU,
# mean cosine to PyTorch on the validation sentences: 0.41 with float32's minimum, 0.9987 with -1e4, 0.9988 with -100.
MASK_FLOOR = -100.0
# The HTP's attention cost grows with L²; sentence encoders are mostly trained at 128 tokens (all-MiniLM-L6-v2's
# tokenizer.json truncates there), and sentences are shorter.
DEFAULT_STATIC_LENGTH = 128
CALIBRATION_SENTENCES = 256  # ranges (min and max) only, one pass each; not tuned: docs/cli.md gives the cosines
# uint8 activations: mean cosine 0.83 (min 0.53) to PyTorch for all-MiniLM-L6-v2 (QDQ graph on the CPU, measured)
ACTIVATIONS = "uint16"
# QNN's helper quantizes a Gather's table as an activation (MiniLM: its 30522 x 384 token table is 23 MB of 34).
WEIGHTS = "uint8 per channel (embedding tables uint16)"


def static_length(build: OptimumBuild, length: int | None) -> int:
    """The static sequence length: `length` if given (checked), else min(max_seq_length, 128)."""
    assert build.sentence is not None
    longest = min(build.sentence.max_seq_length, build.config.max_position_embeddings)
    if length is None:
        return min(longest, DEFAULT_STATIC_LENGTH)
    if not 2 <= length <= longest:
        raise EdgekitError(f"--static-length {length} is out of range: this encoder reads 2 to {longest} tokens "
                           f"(max_seq_length {build.sentence.max_seq_length}, positions "
                           f"{build.config.max_position_embeddings})", build.path)
    return length


def qnn_encoder_graph(build: OptimumBuild, target: Target, tokenizer: Tokenizer, calib: Path | None,
                      length: int) -> StaticGraph:
    """The encoder's float graph, inputs [1, `length`] int64, output `sentence_embedding` [1, dim], QDQ-quantized
    with ranges from CALIBRATION_SENTENCES sentences (of `calib`, --calib's file, else held-out text)."""
    assert build.sentence is not None
    rows, said = calibration_sentences(CalibrationConfig(file=calib), tokenizer, build.path, length)
    rows = rows[:CALIBRATION_SENTENCES]
    model = _static_float(build, length)
    inputs = [i.name for i in model.graph.input]
    feeds = [_padded(r, length, pad_token_id(tokenizer), inputs) for r in rows]
    with tempfile.TemporaryDirectory() as tmp:
        folded, fused, out = (str(Path(tmp) / n) for n in ("folded.onnx", "fused.onnx", "qdq.onnx"))
        _fold_shapes(model, folded)
        float_model = fused if qnn_preprocess_model(folded, fused) else folded
        # onnxruntime's quantizer warns on the root logger about pre-processing done above by other means and
        # about rank-1 weights (LayerNorm's) taking one scale instead of one per channel: noise for a user.
        logging.disable(logging.WARNING)
        try:
            config = get_qnn_qdq_config(float_model, _Reader(progress(feeds, f"calibrating the {target.name} graph")),
                                        activation_type=QuantType.QUInt16, weight_type=QuantType.QUInt8,
                                        per_channel=True)
            quantize(float_model, out, config)
        finally:
            logging.disable(logging.NOTSET)
        qdq = onnx.load(out)
    _prefix_initializers(qdq, f"{target.name}/")
    return StaticGraph(qdq, {"static": {"batch": 1, "sequence": length},
                             "quantization": {"format": "QDQ (QNN's own, not edgekit's block formats)",
                                              "activations": ACTIVATIONS, "weights": WEIGHTS},
                             "calibration": f"{said.split(',')[0]}, {len(rows)} sentences"})


def _static_float(build: OptimumBuild, length: int) -> onnx.ModelProto:
    """The float graph with inputs fixed at batch 1 and `length` tokens (and so its output), the attention mask's float32
    minimum raised to MASK_FLOOR, and pooling (LpNormalization: the HTP's form) appended."""
    assert build.sentence is not None
    model = onnx.ModelProto()
    model.CopyFrom(build.float_graph)
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        dims[0].dim_value, dims[1].dim_value = 1, length
    for node in model.graph.node:
        for attr in node.attribute if node.op_type == "Constant" else []:
            if attr.name == "value" and attr.t.data_type == onnx.TensorProto.FLOAT:
                attr.t.CopyFrom(_floored(attr.t))
    floored = [_floored(t) if t.data_type == onnx.TensorProto.FLOAT else t for t in model.graph.initializer]
    del model.graph.initializer[:]
    model.graph.initializer.extend(floored)
    pooled = append_pooling(model, build.sentence.pooling, build.sentence.normalize, lp_norm=True)
    pooled.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 1
    return pooled


def _floored(t: onnx.TensorProto) -> onnx.TensorProto:
    """A float tensor with values below -1e30 (the mask's float32 minimum) raised to MASK_FLOOR; others as they are."""
    if np.prod(t.dims, dtype=np.int64) > 16:  # the mask constant is a scalar; weights are left alone
        return t
    a = numpy_helper.to_array(t)
    return numpy_helper.from_array(np.maximum(a, MASK_FLOOR).astype(np.float32), t.name) if (a < -1e30).any() else t


def _fold_shapes(model: onnx.ModelProto, path: str) -> None:
    """Save `model` with its shape arithmetic folded to constants (onnxruntime's basic optimizations, which depend
    on no execution provider): with static inputs every Shape, Gather and Concat over shapes becomes a constant."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = path
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _padded(row: np.ndarray, length: int, pad_id: int, inputs: list[str]) -> dict[str, np.ndarray]:
    """One calibration sentence as the runtime feeds it: right-padded to `length`, batch 1."""
    arrays = {name: np.zeros((1, length), np.int64) for name in FED_INPUTS}
    arrays["input_ids"][:] = pad_id
    arrays["input_ids"][0, : len(row)] = row
    arrays["attention_mask"][0, : len(row)] = 1
    return {name: arrays[name] for name in inputs}


class _Reader(CalibrationDataReader):
    """onnxruntime's CalibrationDataReader over prepared feeds."""

    def __init__(self, feeds: Any):
        super().__init__()
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def _prefix_initializers(model: onnx.ModelProto, prefix: str) -> None:
    """Rename every initializer (and its uses) with `prefix`: a package's graphs share one weights file by name
    (exporters.graph_files), and the names this graph keeps from the float graph may hold other bytes here."""
    names = {t.name for t in model.graph.initializer}
    for t in model.graph.initializer:
        t.name = prefix + t.name
    for node in model.graph.node:
        renamed = [prefix + x if x in names else x for x in node.input]
        del node.input[:]
        node.input.extend(renamed)
    for value in model.graph.value_info:
        if value.name in names:
            value.name = prefix + value.name
