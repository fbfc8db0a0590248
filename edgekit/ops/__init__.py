"""edgekit's custom ONNX operators (domain `edgekit`).

Each op has a schema, a numpy reference kernel (what tests hold fast kernels to) and a
standard-ONNX function body, so the weight ops need no edgekit code to run (the graph's attention
and normalization use ONNX Runtime's com.microsoft kernels); edgekit's runtime replaces the nodes
with native kernels at load time (see edgekit.runtime.lowering).
"""

from edgekit.ops.base import DOMAIN, OPS, OPSET_IMPORTS, EdgekitOp, function_protos
from edgekit.ops.gather_block_quant import GatherBlockQ4, GatherBlockQ8
from edgekit.ops.matmul_block_quant import MatMulBlockQ2, MatMulBlockQ3, MatMulBlockQ4, MatMulBlockQ8

__all__ = [
    "DOMAIN",
    "OPS",
    "OPSET_IMPORTS",
    "EdgekitOp",
    "GatherBlockQ4",
    "GatherBlockQ8",
    "MatMulBlockQ2",
    "MatMulBlockQ3",
    "MatMulBlockQ4",
    "MatMulBlockQ8",
    "function_protos",
]
