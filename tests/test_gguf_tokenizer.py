"""GGUF tokenizers: SentencePiece vocabularies encode as SentencePiece does; bad metadata fails in one line.

A tiny SentencePiece BPE model is trained here and written to a GGUF the way llama.cpp's
convert_hf_to_gguf.py (`_create_vocab_sentencepiece`) writes one; the tokenizer built from the GGUF must
give sentencepiece's own ids and text back.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import sentencepiece as spm
from edgekit.exporters.gguf_source import GGUFSource
from edgekit.exporters.gguf_tokenizer import build_tokenizer
from factories import vocab_only_gguf
from gguf import TokenType
from tokenizers import Tokenizer

from edgekit.errors import EdgekitError

USER_SYMBOLS = ["<start_of_turn>", "<end_of_turn>"]
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "token", "model", "edge", "kit",
         "hello", "world", "Über", "straße", "café", "naïve", "año", "niño", "garçon", "résumé", "Ελλάδα",
         "Москва", "東京", "日本語", "中文", "한국어", "2024", "3.14", "42", "(x)", "a-b", "don't", "e.g.",
         "<start_of_turn>", "<end_of_turn>"]
TEXTS = [
    "hello world", "Hello World", " hello", "  two leading", "trailing ", "trailing two  ", "many    spaces  here",
    "line one\nline two", "\n", "tab\tseparated", "\n\nblank lines\n", "digits 1234567890 and 3.14159", "x=42;y=7",
    "café naïve résumé garçon", "Über die Straße", "Ελλάδα Москва", "東京は日本語", "中文 한국어", "emoji 🙂👍🏽 end",
    "🙂", "ß", "a", " ", "  ", "unseen chars: ☃ ∑ ǅ Ω", "<start_of_turn>user\nhi<end_of_turn>",
    "hello<start_of_turn>world", "hello <start_of_turn> world", " <start_of_turn>",
    "<start_of_turn><end_of_turn>", "the quick brown fox jumps over the lazy dog", "don't e.g. (x) a-b",
    "literal ▁ space mark", "mixed 東京 café 🙂 42",
]


def _train(folder: Path, add_dummy_prefix: bool) -> spm.SentencePieceProcessor:
    """A ~500-piece SentencePiece BPE model with byte fallback, normalization off as in Llama 2 and Gemma."""
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 12))) for _ in range(600)]
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(lines), encoding="utf-8")
    prefix = folder / f"sp_{add_dummy_prefix}"
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(prefix), model_type="bpe", vocab_size=500, byte_fallback=True,
        character_coverage=0.995, user_defined_symbols=USER_SYMBOLS, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=add_dummy_prefix, minloglevel=2)
    return spm.SentencePieceProcessor(model_file=f"{prefix}.model")


def _llama_cpp_vocab(sp: spm.SentencePieceProcessor) -> dict[str, list]:
    """Pieces, scores and token types as convert_hf_to_gguf.py writes them: the tokenizer.model loop, then the
    user-defined symbols that tokenizer_config.json's added_tokens_decoder lists (not special: USER_DEFINED)."""
    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        types.append(TokenType.UNKNOWN if sp.is_unknown(i) else TokenType.CONTROL if sp.is_control(i)
                     else TokenType.UNUSED if sp.is_unused(i) else TokenType.BYTE if sp.is_byte(i)
                     else TokenType.NORMAL)
    for symbol in USER_SYMBOLS:
        i = sp.piece_to_id(symbol)
        scores[i], types[i] = -1000.0, TokenType.USER_DEFINED
    return {"tokens": tokens, "scores": scores, "token_type": types}


def _sp_gguf(path: Path, sp: spm.SentencePieceProcessor, add_dummy_prefix: bool, **overrides: object) -> Path:
    fields = {"model": "llama", "pre": "default", **_llama_cpp_vocab(sp), "bos_token_id": sp.bos_id(),
              "eos_token_id": sp.eos_id(), "unknown_token_id": sp.unk_id(), "add_bos_token": True,
              "add_space_prefix": add_dummy_prefix}
    return vocab_only_gguf(path, **{**fields, **overrides})


@pytest.fixture(scope="module", params=[True, False], ids=["dummy_prefix", "no_dummy_prefix"])
def trained(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    folder = tmp_path_factory.mktemp("spm")
    sp = _train(folder, request.param)
    return sp, _sp_gguf(folder / "sp.gguf", sp, request.param), request.param


def test_sentencepiece_encodes_like_sentencepiece(trained: tuple) -> None:
    sp, path, _ = trained
    built, _ = build_tokenizer(GGUFSource(path))
    tok = Tokenizer.from_str(built.to_str())  # as the runtime reads it back from tokenizer.json
    bos = sp.bos_id()
    for text in TEXTS:
        assert tok.encode(text).ids == [bos, *sp.encode(text)], text
        assert tok.encode(text, add_special_tokens=False).ids == sp.encode(text), text


def test_sentencepiece_random_texts(trained: tuple) -> None:
    """Random mixes of words, letters, spaces, newlines, CJK, emoji and user-defined tokens."""
    sp, path, _ = trained
    tok, _ = build_tokenizer(GGUFSource(path))
    rng = random.Random(1)
    alphabet = [*"abcxyz   \n.,'-0129éüßñ東京語🙂☃", *USER_SYMBOLS, *WORDS]
    for _ in range(500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 20)))
        if text not in USER_SYMBOLS:  # see test_text_that_is_one_user_defined_token
            assert tok.encode(text, add_special_tokens=False).ids == sp.encode(text), text


def test_text_that_is_one_user_defined_token(trained: tuple) -> None:
    """The one known difference: with the dummy prefix, SentencePiece puts a lone "▁" before a text that is
    exactly one user-defined token. `tokenizers` normalizes added tokens with the text's own normalizer, so
    that text cannot be told from the token; it encodes as the token alone, as llama.cpp does."""
    sp, path, prefix = trained
    tok, _ = build_tokenizer(GGUFSource(path))
    token = sp.piece_to_id("<start_of_turn>")
    assert tok.encode("<start_of_turn>", add_special_tokens=False).ids == [token]
    assert sp.encode("<start_of_turn>") == ([sp.piece_to_id("▁")] if prefix else []) + [token]


def test_sentencepiece_decodes_like_sentencepiece(trained: tuple) -> None:
    sp, path, _ = trained
    tok, _ = build_tokenizer(GGUFSource(path))
    for text in TEXTS:
        ids = tok.encode(text).ids
        assert tok.decode(ids, skip_special_tokens=True) == sp.decode(ids), text
        if "▁" not in text:  # SentencePiece decodes a literal "▁" as a space too
            assert sp.decode(ids) == text, text


def test_sentencepiece_uses_bytes_for_unseen_characters(trained: tuple) -> None:
    sp, path, _ = trained
    tok, _ = build_tokenizer(GGUFSource(path))
    pieces = tok.encode("☃", add_special_tokens=False).tokens
    assert pieces[-3:] == ["<0xE2>", "<0x98>", "<0x83>"] == sp.encode("☃", out_type=str)[-3:]


def test_sentencepiece_info(trained: tuple) -> None:
    sp, path, _ = trained
    _, info = build_tokenizer(GGUFSource(path))
    assert info == {"bos_token_id": sp.bos_id(), "eos_token_id": sp.eos_id(), "add_bos_token": True,
                    "stop_token_ids": [sp.eos_id()], "chat_template": None, "bos_token": "<s>", "eos_token": "</s>"}


def test_sentencepiece_without_bos(tmp_path: Path, trained: tuple) -> None:
    sp, _, prefix = trained
    tok, info = build_tokenizer(GGUFSource(_sp_gguf(tmp_path / "nobos.gguf", sp, prefix, add_bos_token=False)))
    assert tok.encode("hello world").ids == sp.encode("hello world")
    assert info["add_bos_token"] is False


# -- bad metadata: one line naming the file and what was expected ------------------------------------------
def _fails(path: Path, *needles: str) -> None:
    with pytest.raises(EdgekitError) as err:
        build_tokenizer(GGUFSource(path))
    message = str(err.value)
    assert "\n" not in message and path.name in message, message
    for needle in needles:
        assert needle in message, message


@pytest.mark.parametrize("model", ["rwkv", "bert", None])
def test_unsupported_tokenizer_model(tmp_path: Path, model: str | None) -> None:
    path = vocab_only_gguf(tmp_path / "m.gguf", model=model, tokens=["a", "b"])
    found = f"unsupported tokenizer model {model!r}" if model else "no tokenizer.ggml.model"
    _fails(path, found, "(supported: gpt2 byte-level BPE, llama SentencePiece)")


@pytest.fixture(scope="module")
def sp_small(tmp_path_factory: pytest.TempPathFactory) -> spm.SentencePieceProcessor:
    return _train(tmp_path_factory.mktemp("spm_small"), True)


@pytest.mark.parametrize("key", ["bos_token_id", "eos_token_id", "unknown_token_id"])
def test_token_id_outside_vocabulary(tmp_path: Path, sp_small: spm.SentencePieceProcessor, key: str) -> None:
    path = _sp_gguf(tmp_path / "id.gguf", sp_small, True, **{key: 2**32 - 1})
    _fails(path, f"tokenizer.ggml.{key} is 4294967295", f"vocabulary of {sp_small.get_piece_size()} tokens")


def test_no_tokens(tmp_path: Path) -> None:
    _fails(vocab_only_gguf(tmp_path / "empty.gguf", model="llama", tokens=[]), "tokenizer.ggml.tokens", "empty")


def test_scores_length_mismatch(tmp_path: Path, sp_small: spm.SentencePieceProcessor) -> None:
    path = _sp_gguf(tmp_path / "scores.gguf", sp_small, True, scores=[0.0] * 7)
    _fails(path, "tokenizer.ggml.scores has 7 entries", f"({sp_small.get_piece_size()})")


def test_sentencepiece_without_scores(tmp_path: Path, sp_small: spm.SentencePieceProcessor) -> None:
    _fails(_sp_gguf(tmp_path / "noscores.gguf", sp_small, True, scores=None), "tokenizer.ggml.scores")


@pytest.mark.parametrize(("merge", "reason"), [("a z", "'z' is not in the vocabulary"),
                                               ("b b", "'bb' is not in the vocabulary"),
                                               ("a", "not two tokens")])
def test_bpe_merge_outside_vocabulary(tmp_path: Path, merge: str, reason: str) -> None:
    path = vocab_only_gguf(tmp_path / "merge.gguf", model="gpt2", tokens=["a", "b", "ab"], merges=["a b", merge])
    _fails(path, f"tokenizer.ggml.merges[1] {merge!r}", reason)


def test_bpe_valid_merges_still_build(tmp_path: Path) -> None:
    path = vocab_only_gguf(tmp_path / "ok.gguf", model="gpt2", tokens=["a", "b", "ab"], merges=["a b"])
    tok, info = build_tokenizer(GGUFSource(path))
    assert tok.encode("ab").ids == [2] and info["bos_token_id"] is None
