"""Giving memory the allocator keeps back to the system, where the C library can.

onnxruntime folds the portable graph's dequantization bodies into float32 weights when it creates the
float-passes session (`Model(float_passes=True)`); the intermediate tensors it frees on the way stay in
glibc's heap, so the process keeps them. Measured on SmolLM2-135M: 2941 MiB resident after the session was
made, 585 MiB after `malloc_trim(0)` (benchmarks/multirow.py). No library exposes malloc_trim, hence ctypes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys


def release_freed_memory() -> bool:
    """Return the heap's free pages to the system (glibc's malloc_trim); False where there is no such call
    (macOS, Windows, musl), which is not an error: those allocators return memory their own way."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return False
    if trim is None:
        return False
    trim(0)
    return True
