"""Write several ONNX graphs that share one external weights file, each weight's bytes stored once.

onnx's own external-data writer gives every model its own copy of every tensor; a package holding a
portable graph and lowered graphs over the same weights would store them several times. Here each large
initializer is written once (keyed by name; the same name must mean the same bytes in every graph) and
every graph points into the file by offset, as the ONNX external-data format allows.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import onnx

INLINE_BYTES = 1024  # smaller tensors stay inside the graph file
PAGE = 4096  # large tensors start on a page boundary, so a runtime can map them directly
LARGE = 1 << 16


def save_graphs(folder: Path, graphs: dict[str, onnx.ModelProto], data_file: str) -> None:
    """Save `graphs` (file name -> model, tensors holding raw_data) into `folder` with their large initializers in
    `folder/data_file`. The models are changed in place to refer to the file."""
    written: dict[str, tuple[int, int, bytes]] = {}
    with open(folder / data_file, "wb") as f:
        for model in graphs.values():
            for t in model.graph.initializer:
                if not t.HasField("raw_data") or len(t.raw_data) < INLINE_BYTES:
                    continue
                digest = hashlib.blake2b(t.raw_data, digest_size=16).digest()
                if t.name not in written:
                    align = PAGE if len(t.raw_data) >= LARGE else 64
                    offset = -(-f.tell() // align) * align
                    f.seek(offset)
                    f.write(t.raw_data)
                    written[t.name] = (offset, len(t.raw_data), digest)
                offset, length, known = written[t.name]
                if known != digest:
                    raise ValueError(f"initializer {t.name} differs between graphs: cannot share its bytes")
                t.ClearField("raw_data")
                t.data_location = onnx.TensorProto.EXTERNAL
                del t.external_data[:]
                for key, value in (("location", data_file), ("offset", str(offset)), ("length", str(length))):
                    entry = t.external_data.add()
                    entry.key, entry.value = key, value
    for name, model in graphs.items():
        onnx.save_model(model, str(folder / name))
