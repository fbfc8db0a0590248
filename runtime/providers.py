"""Choose onnxruntime execution providers, falling back to the CPU with a clear message."""

from __future__ import annotations

import sys

import onnxruntime as ort

from edgekit.errors import EdgekitError

PROVIDER_NAMES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
}


def select_provider(requested: str = "cpu") -> str:
    """The provider to use for `requested` (cpu, cuda, qnn, openvino, auto): the full EP name."""
    available = ort.get_available_providers()
    if requested == "auto":
        for key in ("cuda", "qnn", "openvino"):
            if PROVIDER_NAMES[key] in available:
                return PROVIDER_NAMES[key]
        return PROVIDER_NAMES["cpu"]
    if requested not in PROVIDER_NAMES:
        raise EdgekitError(f"unknown device {requested!r} (choose from {', '.join([*PROVIDER_NAMES, 'auto'])})")
    name = PROVIDER_NAMES[requested]
    if name not in available:
        print(f"edgekit: {name} is not available in this onnxruntime build (available: {', '.join(available)}); "
              "falling back to CPUExecutionProvider", file=sys.stderr)
        return PROVIDER_NAMES["cpu"]
    return name
