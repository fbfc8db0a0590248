"""SentencePiece tokenizers (GGUF tokenizer.ggml.model "llama": Llama 2, Mistral v0.x, Gemma, TinyLlama).

transformers' GGUFLlamaConverter assembles the `tokenizers` pipeline (BPE with byte fallback, unk, the
decoder); what it gets wrong is fixed here so encodings match SentencePiece itself:
- it derives merges with a list scan per split (quadratic: hours for Gemma's 256k vocabulary) and from every
  token, control and byte tokens included; they are derived here from normal pieces only, ranked by score;
- its legacy normalizer prepends the dummy prefix "▁" to every stretch of text after an added token, where
  SentencePiece prepends it once, to the whole text;
- it drops user-defined tokens (type 4), which SentencePiece matches as whole pieces.
"""

from __future__ import annotations

from gguf import TokenType
from tokenizers import AddedToken, Regex, Tokenizer, normalizers

SPACE = "▁"  # SentencePiece's escaped space (U+2581)


def sentencepiece_tokenizer(tokens: list[str], types: list[int], scores: list[float], unk_id: int | None,
                            add_space_prefix: bool) -> Tokenizer:
    """The tokenizer of a SentencePiece BPE vocabulary as GGUF stores it (pieces, scores and token types)."""
    from transformers.integrations.ggml import convert_gguf_tokenizer  # workstation-side dependency

    user_defined = [t for t, ty in zip(tokens, types) if ty == TokenType.USER_DEFINED]
    tok, _ = convert_gguf_tokenizer("llama", {
        "tokens": tokens, "scores": scores, "token_type": types, "unk_token_id": unk_id,
        "merges": [f"{left} {right}" for left, right in score_ranked_merges(tokens, types, scores)],
        "add_prefix_space": add_space_prefix,
    })
    tok.normalizer = sentencepiece_normalizer(add_space_prefix, user_defined)
    tok.pre_tokenizer = None
    # Matched in normalized text, as SentencePiece matches user-defined pieces; decoded as text, not skipped.
    tok.add_tokens([AddedToken(t, special=False, normalized=True) for t in user_defined])
    return tok


def score_ranked_merges(tokens: list[str], types: list[int], scores: list[float]) -> list[tuple[str, str]]:
    """BPE merges [(left, right)] in rank order: every split of a normal piece into two normal pieces.

    SentencePiece BPE repeatedly joins the adjacent pair whose joined piece has the highest score; `tokenizers`
    BPE joins the pair of lowest merge rank. Ranking merges by the joined piece's score makes the two agree.
    Pieces holding a plain space are left out: the converter reads merges as "left right" strings."""
    normal = {t: i for i, (t, ty) in enumerate(zip(tokens, types)) if ty == TokenType.NORMAL and " " not in t}
    merges: list[tuple[float, str, str]] = []
    for piece, i in normal.items():
        splits = [(piece[:k], piece[k:]) for k in range(1, len(piece)) if piece[:k] in normal and piece[k:] in normal]
        # Several splits of one piece: the converter's order (by the parts' scores).
        splits.sort(key=lambda lr: (scores[normal[lr[0]]], scores[normal[lr[1]]]), reverse=True)
        merges.extend((scores[i], left, right) for left, right in splits)
    merges.sort(key=lambda m: -m[0])  # stable: ties keep vocabulary order
    return [(left, right) for _, left, right in merges]


def sentencepiece_normalizer(add_space_prefix: bool, user_defined: list[str]) -> normalizers.Normalizer:
    """Spaces escaped to "▁", and (add_space_prefix) one "▁" before the text, as SentencePiece's add_dummy_prefix.

    `tokenizers` also runs the normalizer over each user-defined token to match it in normalized text, so the
    prefix must leave a text that is exactly one such token unchanged (and an empty text)."""
    escape = normalizers.Replace(" ", SPACE)
    if not add_space_prefix:
        return escape
    alternatives = "|".join(_onig_literal(t) for t in user_defined)
    prefix = normalizers.Replace(Regex(rf"\A(?!(?:{alternatives})?\z)"), SPACE)
    return normalizers.Sequence([prefix, escape])


def _onig_literal(text: str) -> str:
    """`text` as an Oniguruma regex matching itself (every non-word character as \\x{...})."""
    return "".join(c if c.isalnum() or c == "_" else f"\\x{{{ord(c):x}}}" for c in text)
