"""The edgekit package: a folder with the ONNX graph, its external weights, the tokenizer and manifest.json.

The manifest lists every file with its size and sha256, so a loader can refuse a tampered or
truncated package before running it. See docs/package-format.md.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError
from edgekit.jsonfile import read_json
from edgekit.model_config import ModelConfig

FORMAT_NAME = "edgekit-package"
FORMAT_VERSION = 2  # 2: graphs lowered at export (graph.targets); 1 lowered at load time
# A graph's inputs and outputs (docs/package-format.md): edgekit's decoder (KV cache buffers updated in place),
# a decoder from optimum (its cache grows by concatenation), a sentence-embedding encoder.
CONTRACT = "causal-lm-kv"
CONCAT_KV_CONTRACT = "causal-lm-concat-kv"
EMBEDDING_CONTRACT = "sentence-embedding"
CONTRACTS = (CONTRACT, CONCAT_KV_CONTRACT, EMBEDDING_CONTRACT)
EMBEDDING_OUTPUT = "sentence_embedding"  # an encoder graph's one output: float32 [batch, dimension]
POOLING_MODES = ("cls", "mean", "max", "lasttoken")  # an encoder's sentence embedding (exporters.pooling_graph)
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
        except (KeyError, TypeError, ValueError) as exc:
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
    """The package's manifest, checked whole before anything reads it: sections and types, and every path it
    names inside the package and listed with its hash."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        if folder.is_file() and folder.read_bytes()[:4] == b"GGUF":
            raise EdgekitError(f"this is a GGUF file: export it first (edgekit export {folder} -o PKG)", folder)
        raise EdgekitError("no such package folder", folder)
    if not path.is_file():
        raise EdgekitError(f"corrupt package: {MANIFEST} is missing", folder)
    data = read_json(path, "corrupt package: manifest is ")
    if not isinstance(data, dict):
        raise EdgekitError(f"corrupt package: manifest is not a JSON object (found {type(data).__name__})", path)
    if data.get("format") != FORMAT_NAME:
        raise EdgekitError(f"not an edgekit package manifest (format {data.get('format')!r})", path)
    if data.get("format_version") != FORMAT_VERSION:
        raise EdgekitError(f"unsupported package format version {data.get('format_version')} "
                           f"(this edgekit reads {FORMAT_VERSION})", path)
    manifest = Manifest(data)
    _check_manifest(folder, manifest, path)
    return manifest


def _check_manifest(folder: Path, manifest: Manifest, path: Path) -> None:
    """Every section the runtime reads has the type it expects, so later reads cannot fail half-way."""
    data = manifest.data

    def expect(ok: bool, what: str) -> None:
        if not ok:
            raise EdgekitError(f"corrupt package: manifest {what}", path)

    for section in ("model", "tokenizer", "graph", "files"):
        expect(isinstance(data.get(section), dict), f"section {section!r} is missing or not an object")
    contract = data["graph"].get("contract")
    if contract not in CONTRACTS:
        raise EdgekitError(f"unknown graph contract {contract!r}: this package needs a newer edgekit", path)
    for section in ("encoder",) if contract == EMBEDDING_CONTRACT else ("generation",):
        expect(isinstance(data.get(section), dict), f"section {section!r} is missing or not an object")
    for rel, entry in manifest.files.items():
        expect(isinstance(entry, dict) and _is_int(entry.get("size")) and entry["size"] >= 0
               and isinstance(entry.get("sha256"), str), f"files[{rel!r}] is not {{size, sha256}}")
    graph, tok = data["graph"], data["tokenizer"]
    expect(isinstance(graph.get("custom_ops"), list) and all(isinstance(o, str) for o in graph["custom_ops"]),
           "graph.custom_ops is not a list of op names")
    targets = graph.get("targets", {})
    expect(isinstance(targets, dict) and all(isinstance(t, dict) for t in targets.values()),
           "graph.targets is not an object of targets")
    for name, t in targets.items():  # a static-shape target's fixed shapes (runtime.encoder pads to them,
        # runtime.static_decoder runs chunks of them)
        static = t.get("static")
        if static is None:
            continue
        if contract == EMBEDDING_CONTRACT:
            expect(isinstance(static, dict) and static.get("batch") == 1 and _is_int(static.get("sequence"))
                   and 0 < static["sequence"] < 1 << 31, f"graph.targets.{name}.static is not {{batch: 1, sequence: N}}")
        else:
            expect(isinstance(static, dict) and _is_int(static.get("chunk")) and _is_int(static.get("context"))
                   and 0 < static["chunk"] <= static["context"] < 1 << 31,
                   f"graph.targets.{name}.static is not {{chunk, context}} with 0 < chunk <= context")
    named = [graph.get("file"), tok.get("file"), *(t.get("file") for t in targets.values()),
             *(t[key] for t in targets.values() for key in ("fast_file", "step_file") if key in t)]
    for rel in named:
        package_file(folder, manifest, rel)
    if contract == EMBEDDING_CONTRACT:
        enc = data["encoder"]
        expect(enc.get("pooling") in POOLING_MODES, "encoder.pooling is not a pooling mode")
        expect(isinstance(enc.get("normalize"), bool), "encoder.normalize is not true or false")
        for key in ("max_seq_length", "dimension"):
            expect(_is_int(enc.get(key)) and 0 < enc[key] < 1 << 31, f"encoder.{key} is not a positive integer")
        expect(graph.get("outputs") == [EMBEDDING_OUTPUT], f"graph.outputs is not [{EMBEDDING_OUTPUT!r}]")
        expect(isinstance(graph.get("inputs"), list) and all(isinstance(i, str) for i in graph["inputs"]),
               "graph.inputs is not a list of input names")
    else:
        stops = data["generation"].get("stop_token_ids")
        expect(isinstance(stops, list) and all(_is_int(i) for i in stops), "generation.stop_token_ids is not a "
               "list of token ids")
    for key in ("chat_template", "bos_token", "eos_token"):
        expect(tok.get(key) is None or isinstance(tok[key], str), f"tokenizer.{key} is not text")
    draft = data.get("draft")
    if draft is not None:
        expect(isinstance(draft, dict) and isinstance(draft.get("folder"), str), "draft.folder is not a folder name")
        package_path(folder, draft["folder"])
    model = manifest.model
    for f in fields(ModelConfig):
        value = getattr(model, f.name)
        kind = str(f.type)
        if value is None and "None" in kind:
            continue
        if kind.startswith("int"):
            expect(_is_int(value) and 0 < value < 1 << 31, f"model.{f.name} is {value!r}, expected a positive integer")
        elif kind.startswith("float"):
            expect(isinstance(value, (int, float)) and not isinstance(value, bool),
                   f"model.{f.name} is {value!r}, expected a number")
        elif kind.startswith("bool"):
            expect(isinstance(value, bool), f"model.{f.name} is {value!r}, expected true or false")
        elif kind.startswith("str"):
            expect(isinstance(value, str), f"model.{f.name} is {value!r}, expected text")
        elif kind.startswith("dict"):
            expect(isinstance(value, dict), f"model.{f.name} is {value!r}, expected an object")
        elif kind.startswith("tuple"):
            expect(all(_is_int(v) and v > 0 for v in value), f"model.{f.name} is {value!r}, expected widths")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def package_path(folder: str | Path, rel: object) -> Path:
    """A path the manifest names, which must stay inside the package folder: relative, no `..`, no symlink out."""
    folder = Path(folder)
    if not isinstance(rel, str) or not rel or "\x00" in rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise EdgekitError(f"corrupt package: manifest names a path outside the package ({rel!r})", folder)
    path = folder / rel
    if not path.resolve().is_relative_to(folder.resolve()):
        raise EdgekitError(f"corrupt package: {rel} leads outside the package folder", folder)
    return path


def package_file(folder: str | Path, manifest: Manifest, rel: object) -> Path:
    """The path of a file the manifest names (package_path), which must also be listed, with its hash, in the
    manifest's `files`."""
    path = package_path(folder, rel)
    if rel not in manifest.files:
        raise EdgekitError(f"corrupt package: {rel} is not listed (with its hash) in the manifest", Path(folder))
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
