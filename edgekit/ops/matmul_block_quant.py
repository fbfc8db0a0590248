"""MatMulBlockQ2 / Q3 / Q4 / Q8: Y = A · Wᵀ with W block-quantized (see docs/ops.md).

Inputs: A float32 [..., K]; B uint8 [N, ceil(K/block), block*bits/8]; scales, offsets float16|float32 [N, ceil(K/block)].
Attributes: K, N, block_size. Output: Y float32 [..., N].
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from edgekit.ops.base import EdgekitOp
from edgekit.ops.block_dequant import dequant_nodes, dequantize_blocks


class _MatMulBlockQuant(EdgekitOp):
    bits: int = 0
    inputs = ("A", "B", "scales", "offsets")
    attributes = ("K", "N", "block_size")

    @classmethod
    def reference(cls, *inputs: np.ndarray, **attrs: int) -> np.ndarray:
        a, packed, scales, offsets = inputs
        w = dequantize_blocks(packed, scales, offsets, cls.bits, attrs["K"])
        if w.shape != (attrs["N"], attrs["K"]):
            raise ValueError(f"{cls.op_type}: weight is {w.shape}, attributes say {(attrs['N'], attrs['K'])}")
        return (a.astype(np.float32) @ w.T).astype(np.float32)

    @classmethod
    def body(cls) -> list[onnx.NodeProto]:
        return dequant_nodes(cls.bits, "B", "scales", "offsets", "W") + [
            helper.make_node("Transpose", ["W"], ["W_t"], perm=[1, 0]),
            helper.make_node("MatMul", ["A", "W_t"], ["Y"]),
        ]


class MatMulBlockQ4(_MatMulBlockQuant):
    op_type = "MatMulBlockQ4"
    bits = 4


class MatMulBlockQ8(_MatMulBlockQuant):
    op_type = "MatMulBlockQ8"
    bits = 8


class MatMulBlockQ2(_MatMulBlockQuant):
    """2-bit codes, four per byte (MatMulNBits' 2-bit layout)."""

    op_type = "MatMulBlockQ2"
    bits = 2


class MatMulBlockQ3(_MatMulBlockQuant):
    """3-bit codes, eight in three bytes (no native kernel: lowered through 4-bit codes repacked at load)."""

    op_type = "MatMulBlockQ3"
    bits = 3
