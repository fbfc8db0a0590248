"""Open a package: read and verify the manifest, and choose the graph file for an execution provider.

Graphs are lowered at export (edgekit.targets), so loading is reading: onnxruntime opens the chosen graph
file itself, and nothing here imports `onnx` or rewrites a graph.
"""

from __future__ import annotations

import sys
from pathlib import Path

from edgekit.errors import EdgekitError
from edgekit.ops.names import OP_NAMES
from edgekit.package import EMBEDDING_CONTRACT, Manifest, package_file, read_manifest, verify_files
from edgekit.targets import Target, target_for_provider


def load_manifest(folder: str | Path, verify: bool = True) -> Manifest:
    """The manifest; `verify` checks every listed file's size and sha256 first."""
    manifest = read_manifest(folder)
    if verify:
        verify_files(folder, manifest)
    unknown = sorted(set(manifest.custom_ops) - OP_NAMES)
    if unknown:
        raise EdgekitError(f"unknown edgekit op(s) {unknown}: this package needs a newer edgekit", folder)
    return manifest


def is_encoder(manifest: Manifest) -> bool:
    """A sentence-embedding encoder (runtime.encoder.Encoder), else a text decoder (runtime.generator.Model)."""
    return manifest.data["graph"]["contract"] == EMBEDDING_CONTRACT


def describe_kind(manifest: Manifest) -> str:
    """What a package is, for errors: `a sentence-embedding encoder (bert)`, `a text decoder (llama)`."""
    kind = "a sentence-embedding encoder" if is_encoder(manifest) else "a text decoder"
    return f"{kind} ({manifest.data['model'].get('architecture', 'unknown architecture')})"


def require_kind(folder: str | Path, manifest: Manifest, encoder: bool, instead: str) -> None:
    """Refuse a package of the other kind in one line: what it is, then `instead` (what to use for it)."""
    if is_encoder(manifest) != encoder:
        raise EdgekitError(f"this package is {describe_kind(manifest)}: {instead}", folder)


def graph_path(folder: str | Path, manifest: Manifest, provider: str, fast: bool = False) -> Path:
    """The graph lowered for `provider` (its fast variant if `fast`), else the portable graph, with a message."""
    graph = manifest.data["graph"]
    target = target_for_provider(provider)
    entry = graph.get("targets", {}).get(target.name)
    if entry is None:
        lowered = ", ".join(graph.get("targets", {})) or "none"
        if fast:
            raise EdgekitError(f"fast mode needs a graph lowered for {provider} (this package has: {lowered}); "
                               f"export with --target {target.name}", folder)
        if target.provider is not None:
            print(f"edgekit: this package has no graph lowered for {provider} (lowered for: {lowered}); running the "
                  f"portable graph (export with --target {target.name} for native kernels)", file=sys.stderr)
        return package_file(folder, manifest, graph["file"])
    if fast and "fast_file" not in entry:
        raise EdgekitError(f"the {target.name} target has no fast variant (int8 activations are a CPU kernel feature)",
                           folder)
    return package_file(folder, manifest, entry["fast_file" if fast else "file"])


def target_graph_path(folder: str | Path, manifest: Manifest, target: Target, fast: bool = False) -> Path:
    """The graph of a named target (its fast variant if `fast`), for a caller that chooses the graph itself rather
    than by provider; one line when the package has none."""
    if target.provider is None and not fast:
        return portable_graph_path(folder, manifest)
    entry = manifest.data["graph"].get("targets", {}).get(target.name)
    if entry is None or (fast and "fast_file" not in entry):
        kind = f"{target.name} fast" if fast else target.name
        raise EdgekitError(f"this package has no {kind} graph (export with --target {target.name})", folder)
    return package_file(folder, manifest, entry["fast_file" if fast else "file"])


def portable_graph_path(folder: str | Path, manifest: Manifest) -> Path:
    """The graph with edgekit ops as function bodies: onnxruntime folds their dequantization into float32 weights."""
    return package_file(folder, manifest, manifest.data["graph"]["file"])
