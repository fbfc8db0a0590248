"""GatherBlockQ4 / GatherBlockQ8: rows of a block-quantized table (the token embedding), dequantized.

Inputs: B uint8 [V, K/block, block*bits/8]; scales, offsets float16|float32 [V, K/block]; indices int64 [...].
Attributes: K, block_size. Output: Y float32 [..., K]. Only the gathered rows are dequantized.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from edgekit.ops.base import EdgekitOp
from edgekit.ops.block_dequant import const_node, dequant_nodes, dequantize_blocks


class _GatherBlockQuant(EdgekitOp):
    bits: int = 0
    inputs = ("B", "scales", "offsets", "indices")
    attributes = ("K", "block_size")

    @classmethod
    def reference(cls, *inputs: np.ndarray, **attrs: int) -> np.ndarray:
        packed, scales, offsets, indices = inputs
        flat = indices.reshape(-1)
        rows = dequantize_blocks(packed[flat], scales[flat], offsets[flat], cls.bits, attrs["K"])
        return rows.reshape(*indices.shape, attrs["K"])

    @classmethod
    def body(cls) -> list[onnx.NodeProto]:
        return [
            const_node("flat_shape", np.array([-1], dtype=np.int64)),
            helper.make_node("Reshape", ["indices", "flat_shape"], ["flat"]),
            helper.make_node("Gather", ["B", "flat"], ["B_rows"], axis=0),
            helper.make_node("Gather", ["scales", "flat"], ["scales_rows"], axis=0),
            helper.make_node("Gather", ["offsets", "flat"], ["offsets_rows"], axis=0),
            *dequant_nodes(cls.bits, "B_rows", "scales_rows", "offsets_rows", "rows"),
            helper.make_node("Shape", ["indices"], ["index_shape"]),
            helper.make_node("Concat", ["index_shape", "flat_shape"], ["out_shape"], axis=0),
            helper.make_node("Reshape", ["rows", "out_shape"], ["Y"]),
        ]


class GatherBlockQ4(_GatherBlockQuant):
    op_type = "GatherBlockQ4"
    bits = 4


class GatherBlockQ8(_GatherBlockQuant):
    op_type = "GatherBlockQ8"
    bits = 8


class GatherBlockQ2(_GatherBlockQuant):
    """2-bit tables (a Q2_K embedding, an int2 grid by plan)."""

    op_type = "GatherBlockQ2"
    bits = 2


class GatherBlockQ3(_GatherBlockQuant):
    """3-bit tables (an int3 grid by plan)."""

    op_type = "GatherBlockQ3"
    bits = 3
