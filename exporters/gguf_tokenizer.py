"""Build a `tokenizers` tokenizer from a GGUF file's own metadata.

transformers' GGUF path gets SmolLM2's special tokens wrong (eos becomes <|im_start|>, a BOS is
added that the model never saw), and onnxruntime-genai cannot read the decoder it writes; so the
tokenizer is assembled here from tokenizer.ggml.* with the same pre-tokenizer llama.cpp uses.
"""

from __future__ import annotations

from typing import Any

from edgekit.exporters.gguf_source import GGUFSource
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from edgekit.errors import EdgekitError

TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# End-of-turn markers that stop generation when present in the vocabulary, besides the declared eos.
END_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "</s>")


def _byte_level_after(split: str) -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])


# llama.cpp's tokenizer.ggml.pre names -> the pre-tokenizer that matches its regexes.
PRE_TOKENIZERS = {
    "default": lambda: pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    "gpt-2": lambda: pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    "smollm": lambda: pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ]),
    "llama-bpe": lambda: _byte_level_after(_LLAMA3_SPLIT),
    "llama3": lambda: _byte_level_after(_LLAMA3_SPLIT),
    "qwen2": lambda: _byte_level_after(_QWEN2_SPLIT),
}


def build_tokenizer(src: GGUFSource) -> tuple[Tokenizer, dict[str, Any]]:
    """The tokenizer, and the facts the runtime needs about it (bos/eos ids, add_bos, stop ids, chat template)."""
    m = src.metadata
    model_type = m.get("tokenizer.ggml.model")
    if model_type != "gpt2":
        raise EdgekitError(f"unsupported tokenizer model {model_type!r} (supported: gpt2 byte-level BPE)", src.path)
    pre = m.get("tokenizer.ggml.pre") or "default"
    if pre not in PRE_TOKENIZERS:
        raise EdgekitError(f"unsupported pre-tokenizer {pre!r} (supported: {', '.join(PRE_TOKENIZERS)})", src.path)
    tokens: list[str] = src.field_array("tokenizer.ggml.tokens")
    merges = [tuple(x.split(" ", 1)) for x in src.field_array("tokenizer.ggml.merges")]
    types: list[int] = src.field_array("tokenizer.ggml.token_type") or [1] * len(tokens)
    vocab = {tok: i for i, tok in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = PRE_TOKENIZERS[pre]()
    tok.decoder = decoders.ByteLevel()
    special = [AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types)
               if ty in (TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED)]
    tok.add_special_tokens(special)

    bos = m.get("tokenizer.ggml.bos_token_id")
    eos = m.get("tokenizer.ggml.eos_token_id")
    add_bos = bool(m.get("tokenizer.ggml.add_bos_token", False))
    if add_bos and bos is not None:
        tok.post_processor = processors.TemplateProcessing(single=f"{tokens[bos]} $A", pair=f"{tokens[bos]} $A $B",
                                                           special_tokens=[(tokens[bos], bos)])
    stop_ids = sorted(({int(eos)} if eos is not None else set()) | {vocab[t] for t in END_TOKENS if t in vocab})
    info = {
        "bos_token_id": None if bos is None else int(bos),
        "eos_token_id": None if eos is None else int(eos),
        "add_bos_token": add_bos,
        "stop_token_ids": stop_ids,
        "chat_template": m.get("tokenizer.chat_template"),
        "bos_token": tokens[bos] if bos is not None else None,
        "eos_token": tokens[eos] if eos is not None else None,
    }
    return tok, info
