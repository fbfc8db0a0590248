"""The edgekit op types this version knows, importable without `onnx` (the runtime checks a package's list)."""

OP_NAMES = frozenset({"GatherBlockQ4", "GatherBlockQ8", "MatMulBlockQ2", "MatMulBlockQ3", "MatMulBlockQ4",
                      "MatMulBlockQ8"})
