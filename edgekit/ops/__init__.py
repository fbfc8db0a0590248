"""edgekit's custom ONNX operators (domain `edgekit`).

Each op has a schema, a numpy reference kernel (what tests hold fast kernels to) and a
standard-ONNX function body, so the weight ops need no edgekit code to run (the graph's attention
and normalization use ONNX Runtime's com.microsoft kernels); the exporter lowers them to native kernels
per target (edgekit.exporters.lowering).

The op classes import `onnx`, which the device side does not need: they load on first use (PEP 562), so
`edgekit.ops.names` (the op names a runtime knows) imports without it.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DOMAIN": "base", "OPS": "base", "OPSET_IMPORTS": "base", "EdgekitOp": "base", "function_protos": "base",
    "GatherBlockQ2": "gather_block_quant", "GatherBlockQ3": "gather_block_quant",
    "GatherBlockQ4": "gather_block_quant", "GatherBlockQ8": "gather_block_quant",
    "MatMulBlockQ2": "matmul_block_quant", "MatMulBlockQ3": "matmul_block_quant",
    "MatMulBlockQ4": "matmul_block_quant", "MatMulBlockQ8": "matmul_block_quant",
}
__all__ = ["DOMAIN", "OPS", "OPSET_IMPORTS", "EdgekitOp", "GatherBlockQ2", "GatherBlockQ3", "GatherBlockQ4",
           "GatherBlockQ8", "MatMulBlockQ2", "MatMulBlockQ3", "MatMulBlockQ4", "MatMulBlockQ8", "function_protos"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'edgekit.ops' has no attribute {name!r}")
    for module in ("gather_block_quant", "matmul_block_quant"):  # every op registered before OPS is read
        importlib.import_module(f"edgekit.ops.{module}")
    return getattr(importlib.import_module(f"edgekit.ops.{_EXPORTS[name]}"), name)
