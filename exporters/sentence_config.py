"""What a sentence-embedding folder says about its head: pooling, normalization, input length, dimension.

sentence-transformers saves that beside the Hugging Face files: modules.json lists the modules, the
Pooling module's config.json its mode, sentence_bert_config.json the Transformer's max_seq_length.
Read here without importing sentence-transformers (the exporter must not need it). A folder with no
modules.json is a plain Hugging Face encoder: mean pooling, no normalization, and the length limit
sentence-transformers itself would use (config.json max_position_embeddings, capped by
tokenizer_config.json model_max_length).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError
from edgekit.jsonfile import read_json, read_json_object
from edgekit.package import POOLING_MODES  # what the product implements (the manifest checks it too)

# sentence-transformers' older Pooling config: one boolean per mode, in its own order.
LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}

MODULE_ORDERS = (("Transformer", "Pooling"), ("Transformer", "Pooling", "Normalize"))


@dataclass(frozen=True)
class SentenceConfig:
    pooling: str  # one of POOLING_MODES
    normalize: bool  # L2-normalize the pooled vector
    max_seq_length: int  # tokens, special tokens included; longer input is truncated
    dimension: int  # length of one embedding


def read_sentence_config(folder: Path) -> SentenceConfig:
    """The folder's sentence-embedding head; an unsupported or malformed config is one EdgekitError naming
    the file."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise EdgekitError("not a Hugging Face model folder: config.json is missing", folder)
    hf_config = read_json_object(folder / "config.json")
    hidden = _positive_int(hf_config, "hidden_size", folder / "config.json", required=False)
    if not (folder / "modules.json").is_file():
        hidden = _positive_int(hf_config, "hidden_size", folder / "config.json", required=True)
        return SentenceConfig("mean", False, _default_max_length(folder, hf_config), hidden)
    modules = _read_modules(folder / "modules.json")
    pooling, dimension = _read_pooling(folder / modules[1][1] / "config.json", hidden)
    _refuse_default_prompt(folder / "config_sentence_transformers.json")
    return SentenceConfig(pooling, len(modules) == 3, _max_length(folder, hf_config), dimension)


def _read_modules(path: Path) -> list[tuple[str, str]]:
    """(class name, path) per module, in order; only Transformer, Pooling and an optional Normalize."""
    doc = read_json(path)
    if not isinstance(doc, list) or not all(isinstance(m, dict) and isinstance(m.get("type"), str) for m in doc):
        raise EdgekitError("expected a list of modules, each with a \"type\"", path)
    modules = [(m["type"].rsplit(".", 1)[-1], str(m.get("path", ""))) for m in doc]
    names = tuple(name for name, _ in modules)
    if names not in MODULE_ORDERS:
        raise EdgekitError(f"modules {', '.join(names) or '(none)'} are not supported "
                           "(Transformer, Pooling and an optional Normalize)", path)
    if modules[0][1] not in ("", "."):
        raise EdgekitError(f"the Transformer module is in {modules[0][1]!r}: edgekit reads it from the folder "
                           "itself", path)
    return modules


def _read_pooling(path: Path, hidden: int | None) -> tuple[str, int]:
    """(mode, dimension) from the Pooling module's config.json, old (one boolean per mode) or new format."""
    if not path.is_file():
        raise EdgekitError("the Pooling module's config.json is missing", path)
    cfg = read_json_object(path)
    if "pooling_mode" in cfg:
        mode = cfg["pooling_mode"]
        modes = list(mode) if isinstance(mode, list) else [mode]
    else:
        modes = [m for key, m in LEGACY_POOLING_KEYS.items() if cfg.get(key)] or ["mean"]  # as sentence-transformers
    if len(modes) != 1:
        raise EdgekitError(f"pooling modes {modes} are concatenated; edgekit supports one mode", path)
    if modes[0] not in POOLING_MODES:
        raise EdgekitError(f"pooling mode {modes[0]!r} is not supported ({', '.join(POOLING_MODES)})", path)
    key = "embedding_dimension" if "embedding_dimension" in cfg else "word_embedding_dimension"
    dimension = _positive_int(cfg, key, path, required=hidden is None) or hidden
    if hidden is not None and dimension != hidden:
        raise EdgekitError(f"{key} is {dimension}, but config.json hidden_size is {hidden}", path)
    return modes[0], dimension


def _max_length(folder: Path, hf_config: dict[str, Any]) -> int:
    """sentence_bert_config.json max_seq_length, else the plain-folder default."""
    path = folder / "sentence_bert_config.json"
    cfg = read_json_object(path) if path.is_file() else {}
    if cfg.get("do_lower_case"):
        raise EdgekitError("do_lower_case is true: lowercasing outside the tokenizer is not supported", path)
    if cfg.get("transformer_task", "feature-extraction") != "feature-extraction":
        raise EdgekitError(f"transformer_task {cfg['transformer_task']!r} is not supported (feature-extraction)",
                           path)
    length = _positive_int(cfg, "max_seq_length", path, required=False)
    if length is None:
        return _default_max_length(folder, hf_config)
    positions = _positive_int(hf_config, "max_position_embeddings", folder / "config.json", required=False)
    if positions is not None and length > positions:
        raise EdgekitError(f"max_seq_length is {length}, more than config.json max_position_embeddings "
                           f"({positions})", path)
    return length


def _default_max_length(folder: Path, hf_config: dict[str, Any]) -> int:
    """max_position_embeddings capped by the tokenizer's model_max_length, as sentence-transformers does
    (RoBERTa-style models have 2 more positions than usable tokens)."""
    positions = _positive_int(hf_config, "max_position_embeddings", folder / "config.json", required=True)
    tok_path = folder / "tokenizer_config.json"
    tok_max = read_json_object(tok_path).get("model_max_length") if tok_path.is_file() else None
    # Tokenizers without a limit say so with a huge number, sometimes a float: only a limit counts.
    return min(positions, tok_max) if isinstance(tok_max, int) and tok_max > 0 else positions


def _refuse_default_prompt(path: Path) -> None:
    """A default prompt is prepended to every text by sentence-transformers; the product does not prepend."""
    name = read_json_object(path).get("default_prompt_name") if path.is_file() else None
    if name:
        raise EdgekitError(f"default_prompt_name is {name!r}: prompts are not supported", path)


def _positive_int(cfg: dict[str, Any], key: str, path: Path, required: bool) -> int | None:
    value = cfg.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        found = "missing" if value is None else repr(value)
        raise EdgekitError(f"{key} is {found}, expected a positive integer", path)
    return value


__all__ = ["POOLING_MODES", "SentenceConfig", "read_sentence_config"]
