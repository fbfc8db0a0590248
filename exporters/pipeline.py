"""`edgekit export` as named stages: open source -> build graph -> write package.

Each stage is a function with typed input and output, so a caller or a test can stop after any
of them and look. The package is written to a temporary folder beside the target and renamed at
the end: a failed export never leaves a half-written package.
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
from tokenizers import Tokenizer

import edgekit
from edgekit.errors import EdgekitError
from edgekit.package import (FORMAT_NAME, FORMAT_VERSION, GRAPH_FILE, TOKENIZER_FILE, WEIGHTS_FILE, Manifest,
                             file_entries, sha256_of)
from edgekit.progress import progress
from edgekit.recipe import Recipe
from edgekit.exporters.graph_builder import GraphBuilder
from edgekit.exporters.sources import Source, open_source, source_tokenizer
from edgekit.exporters.weights import LINEAR_NAMES, weight_format

DEFAULT_MAX_NEW_TOKENS = 256


@dataclass
class BuiltGraph:
    model: onnx.ModelProto
    recipe: Recipe
    custom_ops: list[str]


def build_graph(source: Source) -> BuiltGraph:
    """Stage 2: the ONNX decoder with the source's weights in their own formats."""
    c = source.config
    builder = GraphBuilder(c)
    model = builder.build(source, rope_len=c.max_position_embeddings,
                          layer_progress=progress(range(c.num_layers), "building layers"))
    formats = {"embed": weight_format(source.get("embed"))}
    for i in range(c.num_layers):
        for n in LINEAR_NAMES:
            formats[f"layers.{i}.{n}"] = weight_format(source.get(f"layers.{i}.{n}"))
    if source.has("lm_head"):
        formats["lm_head"] = weight_format(source.get("lm_head"))
    return BuiltGraph(model, Recipe(method="import", tensor_formats=formats), sorted(builder.edgekit_ops))


def write_package(source: Source, built: BuiltGraph, tokenizer: Tokenizer, tok_info: dict[str, Any],
                  out: Path, source_name: str) -> Manifest:
    """Stage 3: write graph, weights, tokenizer and manifest to a temporary folder, then rename it to `out`."""
    out = Path(out)
    if out.exists():
        raise EdgekitError("output already exists (remove it or choose another -o)", out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        onnx.save_model(built.model, str(tmp / GRAPH_FILE), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=WEIGHTS_FILE, size_threshold=1024)
        tokenizer.save(str(tmp / TOKENIZER_FILE))
        src_path = Path(source.path)
        manifest = Manifest({
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "edgekit_version": edgekit.__version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "source": {"name": source_name, "kind": source.kind, "file": src_path.name,
                       "sha256": sha256_of(src_path) if src_path.is_file() else None},
            "model": source.config.to_dict(),
            "recipe": built.recipe.to_dict(),
            "graph": {"file": GRAPH_FILE, "weights": WEIGHTS_FILE, "custom_ops": built.custom_ops,
                      "opsets": {o.domain or "ai.onnx": o.version for o in built.model.opset_import}},
            "tokenizer": {"file": TOKENIZER_FILE, **tok_info},
            "generation": {"stop_token_ids": tok_info["stop_token_ids"], "max_new_tokens": DEFAULT_MAX_NEW_TOKENS,
                           "temperature": 0.0, "top_k": 0, "top_p": 1.0},
            "files": {},
        })
        manifest.data["files"] = file_entries(tmp)
        manifest.write(tmp)
        for f in tmp.iterdir():  # onnx writes external data owner-only; a package is meant to be shared
            f.chmod(0o644)
        tmp.chmod(0o755)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def export(src: str, out: str | Path) -> Manifest:
    """SRC (GGUF file, HF folder or built-in name) -> edgekit package folder `out`."""
    if Path(out).exists():
        raise EdgekitError("output already exists (remove it or choose another -o)", out)
    source = open_source(src)
    tokenizer, tok_info = source_tokenizer(source)
    built = build_graph(source)
    return write_package(source, built, tokenizer, tok_info, Path(out), src)


def describe(manifest: Manifest) -> str:
    """One line for the CLI: what was written."""
    m = manifest.model
    size = sum(f["size"] for f in manifest.files.values()) / 1e6
    return (f"{m.architecture}, {m.num_layers} layers, weights {json.dumps(manifest.data['recipe']['summary'])}, "
            f"{size:.1f} MB")
