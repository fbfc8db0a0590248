"""Dequantization shared by the block-quantized ops: numpy for the reference, ONNX nodes for the body.

Semantics (docs/ops.md): W[r, b * B + j] = float(scales[r, b]) * code[r, b, j] + float(offsets[r, b]),
computed in float32. B holds codes packed as in edgekit.formats.packing.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgekit.formats.packing import unpack_codes


def dequantize_blocks(packed: np.ndarray, scales: np.ndarray, offsets: np.ndarray, bits: int) -> np.ndarray:
    """packed uint8 [R, nb, bytes], scales/offsets [R, nb] -> float32 [R, nb * block]."""
    codes = unpack_codes(packed, bits).reshape(*scales.shape, -1).astype(np.float32)
    w = codes * scales.astype(np.float32)[..., None] + offsets.astype(np.float32)[..., None]
    return w.reshape(scales.shape[0], -1)


def const_node(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value))


def dequant_nodes(bits: int, packed: str, scales: str, offsets: str, out: str) -> list[onnx.NodeProto]:
    """Nodes turning packed [R, nb, bytes] + scales/offsets [R, nb] into float32 W [R, K] named `out`."""
    nodes = [
        const_node("axis_last", np.array([-1], dtype=np.int64)),
        const_node("shape_rows_blocks", np.array([0, 0, -1], dtype=np.int64)),
        const_node("shape_rows", np.array([0, -1], dtype=np.int64)),
    ]
    if bits == 4:
        nodes += [
            const_node("low_mask", np.array(15, dtype=np.uint8)),
            const_node("four", np.array(4, dtype=np.uint8)),
            helper.make_node("BitwiseAnd", [packed, "low_mask"], ["low"]),
            helper.make_node("BitShift", [packed, "four"], ["high"], direction="RIGHT"),
            helper.make_node("Unsqueeze", ["low", "axis_last"], ["low_u"]),
            helper.make_node("Unsqueeze", ["high", "axis_last"], ["high_u"]),
            helper.make_node("Concat", ["low_u", "high_u"], ["pairs"], axis=-1),
            helper.make_node("Reshape", ["pairs", "shape_rows_blocks"], ["codes"]),
        ]
    elif bits == 8:
        nodes.append(helper.make_node("Identity", [packed], ["codes"]))
    else:
        raise ValueError(f"no function body for {bits}-bit codes")
    nodes += [
        helper.make_node("Cast", ["codes"], ["codes_f"], to=TensorProto.FLOAT),
        helper.make_node("Cast", [scales], ["scales_f"], to=TensorProto.FLOAT),
        helper.make_node("Cast", [offsets], ["offsets_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["scales_f", "axis_last"], ["scales_u"]),
        helper.make_node("Unsqueeze", ["offsets_f", "axis_last"], ["offsets_u"]),
        helper.make_node("Mul", ["codes_f", "scales_u"], ["scaled"]),
        helper.make_node("Add", ["scaled", "offsets_u"], ["w_blocks"]),
        helper.make_node("Reshape", ["w_blocks", "shape_rows"], [out]),
    ]
    return nodes
