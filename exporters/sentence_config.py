"""How a sentence-transformers folder turns token vectors into a sentence embedding (modules.json and friends).

Read here, on the workstation, and written into the package (manifest `encoder`), so the runtime never needs
sentence-transformers. A folder without its configuration is pooled as sentence-transformers pools a plain
transformers model: the mean over tokens, not normalized, at the model's full length.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgekit.exporters.pooling_graph import POOLING_MODES

from edgekit.errors import EdgekitError
from edgekit.jsonfile import read_json, read_json_object

# sentence-transformers' Pooling config keys -> edgekit's mode names.
_MODE_KEYS = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean", "pooling_mode_max_tokens": "max",
              "pooling_mode_lasttoken": "lasttoken"}
_UNSUPPORTED_KEYS = ("pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens")


@dataclass(frozen=True)
class SentenceConfig:
    pooling: str
    normalize: bool
    max_seq_length: int
    dimension: int


def read_sentence_config(folder: Path) -> SentenceConfig:
    """The folder's pooling mode, normalization, maximum sequence length and embedding width."""
    model = read_json_object(folder / "config.json")
    hidden = model.get("hidden_size")
    max_len = model.get("max_position_embeddings")
    if not (isinstance(hidden, int) and hidden > 0 and isinstance(max_len, int) and max_len > 0):
        raise EdgekitError("hidden_size and max_position_embeddings must be positive integers", folder / "config.json")
    modules_path = folder / "modules.json"
    if not modules_path.is_file():
        return SentenceConfig("mean", False, max_len, hidden)
    modules = read_json(modules_path, "sentence-transformers modules.json is ")
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise EdgekitError("expected a list of modules", modules_path)
    kinds = {str(m.get("type", "")).rsplit(".", 1)[-1]: str(m.get("path", "")) for m in modules}
    pooling, dimension = "mean", hidden
    if "Pooling" in kinds:
        pooling, dimension = _pooling(folder / kinds["Pooling"] / "config.json", hidden)
    unknown = sorted(set(kinds) - {"Transformer", "Pooling", "Normalize"})
    if unknown:
        raise EdgekitError(f"unsupported sentence-transformers module(s) {unknown} (edgekit runs Transformer, "
                           "Pooling and Normalize)", modules_path)
    bert_path = folder / "sentence_bert_config.json"
    if bert_path.is_file():
        length = read_json_object(bert_path).get("max_seq_length", max_len)
        if not (isinstance(length, int) and 0 < length <= max_len):
            raise EdgekitError(f"max_seq_length is {length!r}, expected 1 to {max_len}", bert_path)
        max_len = length
    return SentenceConfig(pooling, "Normalize" in kinds, max_len, dimension)


def _pooling(path: Path, hidden: int) -> tuple[str, int]:
    cfg = read_json_object(path)
    for key in _UNSUPPORTED_KEYS:
        if cfg.get(key):
            raise EdgekitError(f"unsupported pooling mode {key} (edgekit pools by: {', '.join(POOLING_MODES)})", path)
    modes = [mode for key, mode in _MODE_KEYS.items() if cfg.get(key)]
    if len(modes) != 1:
        raise EdgekitError(f"expected exactly one pooling mode, found {modes or 'none'}", path)
    dim = cfg.get("word_embedding_dimension", hidden)
    if dim != hidden:
        raise EdgekitError(f"word_embedding_dimension {dim!r} differs from the model's hidden size {hidden}", path)
    return modes[0], hidden
