"""Open a package: read and verify the manifest, load the graph with its weights."""

from __future__ import annotations

from pathlib import Path

import onnx

from edgekit.errors import EdgekitError
from edgekit.ops import OPS
from edgekit.package import Manifest, read_manifest, verify_files


def load_package(folder: str | Path, verify: bool = True) -> tuple[Manifest, onnx.ModelProto]:
    """The manifest and the ONNX model (external weights loaded). `verify` checks every file's sha256."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if verify:
        verify_files(folder, manifest)
    unknown = [op for op in manifest.custom_ops if op not in OPS]
    if unknown:
        raise EdgekitError(f"unknown edgekit op(s) {unknown}: this package needs a newer edgekit", folder)
    graph_path = folder / manifest.data["graph"]["file"]
    try:
        model = onnx.load(str(graph_path), load_external_data=True)
    except Exception as exc:  # protobuf decode errors carry no file name
        raise EdgekitError(f"corrupt package: cannot read the ONNX graph ({exc})", graph_path) from exc
    return manifest, model
