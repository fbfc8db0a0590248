"""edgekit: compressed language models on edge devices.

`edgekit/` holds what both sides share (package format, op schemas and reference kernels, CLI);
`edgekit.exporters` is the workstation side, `edgekit.runtime` the device side (numpy + onnxruntime).
"""

__version__ = "0.1.0"
