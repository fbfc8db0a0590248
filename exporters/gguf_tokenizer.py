"""Build a `tokenizers` tokenizer from a GGUF file's own metadata.

transformers' GGUF path gets SmolLM2's special tokens wrong (eos becomes <|im_start|>, a BOS is
added that the model never saw), and onnxruntime-genai cannot read the decoder it writes; so the
byte-level BPE tokenizer (tokenizer.ggml.model "gpt2") is assembled here from tokenizer.ggml.* with the
same pre-tokenizer llama.cpp uses. SentencePiece vocabularies ("llama") go through gguf_sentencepiece.
The metadata is checked first, so a bad id or merge fails with one line naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgekit.exporters.arch import Metadata
from edgekit.exporters.gguf_sentencepiece import sentencepiece_tokenizer
from edgekit.exporters.gguf_source import GGUFFile
from gguf import TokenType
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from edgekit.errors import EdgekitError

# tokenizer.ggml.model values this module reads.
TOKENIZER_MODELS = {"gpt2": "gpt2 byte-level BPE", "llama": "llama SentencePiece"}
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


@dataclass
class GGUFVocab:
    """tokenizer.ggml.* read from a GGUF and checked: ids within the vocabulary, arrays of one length."""

    tokens: list[str]
    types: list[int]
    scores: list[float] | None
    bos: int | None
    eos: int | None
    unk: int | None
    add_bos: bool
    add_eos: bool


def read_vocab(src: GGUFFile) -> GGUFVocab:
    m = src.metadata
    meta = Metadata(m, src.path)
    tokens: list[str] = src.field_array("tokenizer.ggml.tokens")
    if not tokens:
        raise EdgekitError("tokenizer.ggml.tokens is missing or empty", src.path)
    n = len(tokens)
    types: list[int] = src.field_array("tokenizer.ggml.token_type", int) or [TokenType.NORMAL] * n
    scores: list[float] | None = src.field_array("tokenizer.ggml.scores", float) or None
    for key, array in (("token_type", types), ("scores", scores)):
        if array is not None and len(array) != n:
            raise EdgekitError(f"tokenizer.ggml.{key} has {len(array)} entries, expected one per token ({n})",
                               src.path)

    def token_id(key: str) -> int | None:
        value = meta.get(f"tokenizer.ggml.{key}", int)
        if value is not None and not 0 <= value < n:
            raise EdgekitError(f"tokenizer.ggml.{key} is {value}, outside the vocabulary of {n} tokens", src.path)
        return value

    return GGUFVocab(tokens=tokens, types=types, scores=scores, bos=token_id("bos_token_id"),
                     eos=token_id("eos_token_id"), unk=token_id("unknown_token_id"),
                     add_bos=bool(m.get("tokenizer.ggml.add_bos_token", False)),
                     add_eos=bool(m.get("tokenizer.ggml.add_eos_token", False)))


def build_tokenizer(src: GGUFFile) -> tuple[Tokenizer, dict[str, Any]]:
    """The tokenizer, and the facts the runtime needs about it (bos/eos ids, add_bos, stop ids, chat template)."""
    m = src.metadata
    meta = Metadata(m, src.path)
    model_type = meta.get("tokenizer.ggml.model", str)
    if model_type not in TOKENIZER_MODELS:
        found = "no tokenizer.ggml.model" if model_type is None else f"unsupported tokenizer model {model_type!r}"
        raise EdgekitError(f"{found} (supported: {', '.join(TOKENIZER_MODELS.values())})", src.path)
    vocab = read_vocab(src)
    if model_type == "gpt2":
        tok = _byte_level_bpe(src, vocab)
    else:
        if vocab.scores is None:
            raise EdgekitError("SentencePiece tokenizer without tokenizer.ggml.scores", src.path)
        unk = vocab.unk if vocab.unk is not None else next(
            (i for i, ty in enumerate(vocab.types) if ty == TokenType.UNKNOWN), None)
        tok = sentencepiece_tokenizer(vocab.tokens, vocab.types, vocab.scores, unk,
                                      bool(m.get("tokenizer.ggml.add_space_prefix", True)))
    _add_bos_eos(tok, vocab)

    tokens, bos, eos = vocab.tokens, vocab.bos, vocab.eos
    ids = {t: i for i, t in enumerate(tokens)}
    stop_ids = sorted(({eos} if eos is not None else set()) | {ids[t] for t in END_TOKENS if t in ids})
    info = {
        "bos_token_id": bos,
        "eos_token_id": eos,
        "add_bos_token": vocab.add_bos,
        "stop_token_ids": stop_ids,
        "chat_template": meta.get("tokenizer.chat_template", str),
        "bos_token": tokens[bos] if bos is not None else None,
        "eos_token": tokens[eos] if eos is not None else None,
    }
    return tok, info


def _byte_level_bpe(src: GGUFFile, vocab: GGUFVocab) -> Tokenizer:
    pre = Metadata(src.metadata, src.path).get("tokenizer.ggml.pre", str) or "default"
    if pre not in PRE_TOKENIZERS:
        raise EdgekitError(f"unsupported pre-tokenizer {pre!r} (supported: {', '.join(PRE_TOKENIZERS)})", src.path)
    ids = {tok: i for i, tok in enumerate(vocab.tokens)}
    merges = [tuple(x.split(" ", 1)) for x in src.field_array("tokenizer.ggml.merges")]
    for i, merge in enumerate(merges):
        where = f"tokenizer.ggml.merges[{i}] {' '.join(merge)!r}"
        if len(merge) != 2:
            raise EdgekitError(f"{where} is not two tokens separated by a space", src.path)
        missing = next((t for t in (*merge, "".join(merge)) if t not in ids), None)
        if missing is not None:
            raise EdgekitError(f"{where}: {missing!r} is not in the vocabulary", src.path)
    try:
        tok = Tokenizer(models.BPE(vocab=ids, merges=merges, fuse_unk=False, byte_fallback=False))
    except Exception as exc:  # the checks above should leave nothing for the library to refuse
        raise EdgekitError(f"tokenizer.ggml.merges: {exc}", src.path) from exc
    tok.pre_tokenizer = PRE_TOKENIZERS[pre]()
    tok.decoder = decoders.ByteLevel()
    special = [AddedToken(t, special=True, normalized=False) for t, ty in zip(vocab.tokens, vocab.types)
               if ty in (TokenType.CONTROL, TokenType.USER_DEFINED)]
    tok.add_special_tokens(special)
    return tok


def _add_bos_eos(tok: Tokenizer, vocab: GGUFVocab) -> None:
    """tokenizer.ggml.add_bos_token / add_eos_token as a template around the encoded text."""
    bos = [vocab.tokens[vocab.bos]] if vocab.add_bos and vocab.bos is not None else []
    eos = [vocab.tokens[vocab.eos]] if vocab.add_eos and vocab.eos is not None else []
    if bos or eos:
        special = {vocab.tokens[i]: i for i in (vocab.bos, vocab.eos) if i is not None}
        tok.post_processor = processors.TemplateProcessing(
            single=" ".join([*bos, "$A", *eos]), pair=" ".join([*bos, "$A", "$B", *eos]),
            special_tokens=[(t, special[t]) for t in dict.fromkeys([*bos, *eos])])
