"""The edgekit package: a folder with the ONNX graph, its external weights, the tokenizer and manifest.json.

The manifest lists every file with its size and sha256, so a loader can refuse a tampered or
truncated package before running it. See docs/package-format.md.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError
from edgekit.model_config import ModelConfig

FORMAT_NAME = "edgekit-package"
FORMAT_VERSION = 2  # 2: graphs lowered at export (graph.targets); 1 lowered at load time
CONTRACT = "causal-lm-kv"  # the decoder's inputs and outputs (docs/package-format.md)
MANIFEST = "manifest.json"
GRAPH_FILE = "model.onnx"
WEIGHTS_FILE = "model.onnx.data"
TOKENIZER_FILE = "tokenizer.json"


def sha256_of(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_entries(folder: Path) -> dict[str, dict[str, Any]]:
    """{relative path: {size, sha256}} for every file of the folder except the manifest."""
    return {
        str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": sha256_of(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


@dataclass
class Manifest:
    """What a package contains, readable without loading the graph."""

    data: dict[str, Any]

    @property
    def model(self) -> ModelConfig:
        try:
            return ModelConfig.from_dict(self.data["model"])
        except (KeyError, TypeError) as exc:
            raise EdgekitError(f"corrupt package: manifest 'model' section does not fit this edgekit ({exc})",
                               MANIFEST) from exc

    @property
    def tokenizer(self) -> dict[str, Any]:
        return self.data["tokenizer"]

    @property
    def generation(self) -> dict[str, Any]:
        return self.data["generation"]

    @property
    def custom_ops(self) -> list[str]:
        return self.data["graph"]["custom_ops"]

    @property
    def files(self) -> dict[str, dict[str, Any]]:
        return self.data["files"]

    def write(self, folder: Path) -> None:
        (folder / MANIFEST).write_text(json.dumps(self.data, indent=2) + "\n")


def read_manifest(folder: str | Path) -> Manifest:
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise EdgekitError("no such package folder", folder)
    if not path.is_file():
        raise EdgekitError(f"corrupt package: {MANIFEST} is missing", folder)
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EdgekitError(f"corrupt package: manifest is not valid JSON ({exc})", path) from exc
    if data.get("format") != FORMAT_NAME:
        raise EdgekitError(f"not an edgekit package manifest (format {data.get('format')!r})", path)
    if data.get("format_version") != FORMAT_VERSION:
        raise EdgekitError(f"unsupported package format version {data.get('format_version')} "
                           f"(this edgekit reads {FORMAT_VERSION})", path)
    return Manifest(data)


def package_file(folder: str | Path, manifest: Manifest, rel: object) -> Path:
    """The path of a file the manifest names: it must be a relative path inside the package folder (no `..`, no
    absolute path, no symlink out) and be listed, with its hash, in the manifest's `files`."""
    folder = Path(folder)
    if not isinstance(rel, str) or not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise EdgekitError(f"corrupt package: manifest names a path outside the package ({rel!r})", folder)
    path = folder / rel
    if not path.resolve().is_relative_to(folder.resolve()):
        raise EdgekitError(f"corrupt package: {rel} leads outside the package folder", folder)
    if rel not in manifest.files:
        raise EdgekitError(f"corrupt package: {rel} is not listed (with its hash) in the manifest", folder)
    return path


def verify_files(folder: str | Path, manifest: Manifest) -> None:
    """Check every listed file's size and sha256; raise on the first mismatch."""
    folder = Path(folder)
    for rel, entry in manifest.files.items():
        p = package_file(folder, manifest, rel)
        if not p.is_file():
            raise EdgekitError("corrupt package: file listed in the manifest is missing", p)
        if p.stat().st_size != entry["size"]:
            raise EdgekitError(f"corrupt package: size {p.stat().st_size} bytes, manifest says {entry['size']}", p)
        if sha256_of(p) != entry["sha256"]:
            raise EdgekitError("hash mismatch: file differs from the manifest (tampered or damaged)", p)
