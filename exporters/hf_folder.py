"""Write a Hugging Face model folder that transformers and edgekit both read back: the model's own
save_pretrained plus edgekit's tokenizer as a fast tokenizer (tokenizer.json, tokenizer_config.json,
generation_config.json).

Why not transformers' tokenizer from a GGUF: its GGUF loader sets the wrong end token and adds a BOS
this model never had (shared/FACTS.md); edgekit reads those facts from the file itself, so its tokenizer
is the one written out.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

# Files of a Hugging Face folder that describe the tokenizer and generation (copied as they are).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                   "chat_template.jinja", "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json")


def copy_tokenizer_files(src: Path, dst: Path) -> None:
    """The tokenizer and generation files of the Hugging Face folder `src`, copied into `dst`."""
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy(src / name, dst / name)


def write_tokenizer_files(folder: Path, tokenizer: Tokenizer, info: dict[str, Any]) -> None:
    """edgekit's tokenizer and its facts (exporters.sources.source_tokenizer) as a fast tokenizer's files, so that
    exporters.hf_source.hf_tokenizer reads back the same ids, template and stop tokens."""
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": bool(info.get("add_bos_token")),
        "bos_token": info.get("bos_token"), "eos_token": info.get("eos_token"), "pad_token": info.get("eos_token"),
        "chat_template": info.get("chat_template")}, indent=1))
    (folder / "generation_config.json").write_text(json.dumps({
        "bos_token_id": info.get("bos_token_id"), "eos_token_id": info.get("stop_token_ids") or info.get("eos_token_id")},
        indent=1))


def stored_parameters(folder: Path) -> int:
    """Weights stored in the folder's safetensors files (read from their headers; a tied output layer is stored
    once, so counted once)."""
    from safetensors import safe_open

    total = 0
    for f in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(f), framework="np") as st:
            total += sum(math.prod(st.get_slice(k).get_shape()) for k in st.keys())  # noqa: SIM118 (no __iter__)
    return total
