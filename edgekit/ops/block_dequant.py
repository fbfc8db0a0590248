"""Dequantization shared by the block-quantized ops: numpy for the reference, ONNX nodes for the body.

Semantics (docs/ops.md): W[r, b * B + j] = float(scales[r, b]) * code[r, b, j] + float(offsets[r, b]),
computed in float32, for k < K. B holds codes packed as in edgekit.formats.packing; when K is not a
multiple of B the last block is short and its padding codes are dropped.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgekit.formats.packing import code_group, unpack_codes


def dequantize_blocks(packed: np.ndarray, scales: np.ndarray, offsets: np.ndarray, bits: int, k: int) -> np.ndarray:
    """packed uint8 [R, nb, bytes], scales/offsets [R, nb] -> float32 [R, k] (k <= nb * block)."""
    codes = unpack_codes(packed, bits).reshape(*scales.shape, -1).astype(np.float32)
    w = codes * scales.astype(np.float32)[..., None] + offsets.astype(np.float32)[..., None]
    return w.reshape(scales.shape[0], -1)[:, :k]


def const_node(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value))


def attribute_constant(name: str, attribute: str) -> onnx.NodeProto:
    """A Constant node whose int64 scalar value is the calling node's attribute `attribute` (a function body's
    attribute reference)."""
    ref = onnx.AttributeProto(name="value_int", type=onnx.AttributeProto.INT, ref_attr_name=attribute)
    node = helper.make_node("Constant", [], [name])
    node.attribute.append(ref)
    return node


def dequant_nodes(bits: int, packed: str, scales: str, offsets: str, out: str) -> list[onnx.NodeProto]:
    """Nodes turning packed [R, nb, bytes] + scales/offsets [R, nb] into float32 W [R, K] named `out` (K: the
    calling node's attribute; a short last block's padding is sliced off)."""
    nodes = [
        const_node("axis_last", np.array([-1], dtype=np.int64)),
        const_node("zero_1d", np.array([0], dtype=np.int64)),
        const_node("one_1d", np.array([1], dtype=np.int64)),
        attribute_constant("k_scalar", "K"),
        const_node("shape_rows_blocks", np.array([0, 0, -1], dtype=np.int64)),
        const_node("shape_rows", np.array([0, -1], dtype=np.int64)),
    ]
    nodes += unpack_nodes(bits, packed, "codes")
    nodes += [
        helper.make_node("Cast", ["codes"], ["codes_f"], to=TensorProto.FLOAT),
        helper.make_node("Cast", [scales], ["scales_f"], to=TensorProto.FLOAT),
        helper.make_node("Cast", [offsets], ["offsets_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["scales_f", "axis_last"], ["scales_u"]),
        helper.make_node("Unsqueeze", ["offsets_f", "axis_last"], ["offsets_u"]),
        helper.make_node("Mul", ["codes_f", "scales_u"], ["scaled"]),
        helper.make_node("Add", ["scaled", "offsets_u"], ["w_blocks"]),
        helper.make_node("Reshape", ["w_blocks", "shape_rows"], ["w_padded"]),
        helper.make_node("Reshape", ["k_scalar", "axis_last"], ["k_1d"]),
        helper.make_node("Slice", ["w_padded", "zero_1d", "k_1d", "one_1d"], [out]),
    ]
    return nodes


def unpack_nodes(bits: int, packed: str, out: str) -> list[onnx.NodeProto]:
    """Nodes unpacking B [R, nb, bytes] into codes [R, nb, block] named `out` (edgekit.formats.packing's rule).

    Bytes are grouped into little-endian words (1 byte for 2/4/8 bits, 3 bytes for 3 bits, assembled in
    uint32: BitShift has no signed types and ReduceSum no unsigned ones, hence the int32 detour), then each
    word is shifted right by i·bits for its codes and masked. Written for correctness, not speed.
    Part of dequant_nodes: reads its constants `axis_last` and `shape_rows_blocks`.
    """
    per, n_bytes = code_group(bits)
    if per == 1:
        return [helper.make_node("Identity", [packed], [out])]
    word = np.uint8 if n_bytes == 1 else np.uint32
    nodes = [
        const_node("group_shape", np.array([0, 0, -1, n_bytes], dtype=np.int64)),
        const_node("code_shifts", (bits * np.arange(per)).astype(word)),
        const_node("code_mask", np.array(2**bits - 1, dtype=word)),
        helper.make_node("Reshape", [packed, "group_shape"], ["byte_groups"]),
    ]
    if n_bytes == 1:
        nodes.append(helper.make_node("Identity", ["byte_groups"], ["words"]))
    else:
        nodes += [
            const_node("byte_shifts", (8 * np.arange(n_bytes)).astype(np.uint32)),
            helper.make_node("Cast", ["byte_groups"], ["byte_groups_u32"], to=TensorProto.UINT32),
            helper.make_node("BitShift", ["byte_groups_u32", "byte_shifts"], ["byte_parts"], direction="LEFT"),
            helper.make_node("Cast", ["byte_parts"], ["byte_parts_i32"], to=TensorProto.INT32),
            helper.make_node("ReduceSum", ["byte_parts_i32", "axis_last"], ["words_i32"], keepdims=1),
            helper.make_node("Cast", ["words_i32"], ["words"], to=TensorProto.UINT32),
        ]
    return nodes + [
        helper.make_node("BitShift", ["words", "code_shifts"], ["shifted"], direction="RIGHT"),
        helper.make_node("BitwiseAnd", ["shifted", "code_mask"], ["group_codes"]),
        helper.make_node("Reshape", ["group_codes", "shape_rows_blocks"], [out]),
    ]
