"""Text in and out: encoding, the chat template, and incremental decoding for streaming."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from edgekit.errors import EdgekitError


class TextCodec:
    def __init__(self, path: Path, info: dict[str, Any]):
        self.tokenizer = Tokenizer.from_file(str(path))
        self.info = info

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=True).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        """Render the package's chat template with a generation prompt (jinja2, as transformers does)."""
        template = self.info.get("chat_template")
        if not template:
            raise EdgekitError("this package has no chat template")
        import jinja2

        env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        return env.from_string(template).render(
            messages=messages, add_generation_prompt=True,
            bos_token=self.info.get("bos_token") or "", eos_token=self.info.get("eos_token") or "",
        )


def _raise(message: str) -> None:
    raise EdgekitError(f"chat template: {message}")


class StreamDecoder:
    """Turns a growing token list into text pieces without re-decoding everything each step.

    A token can end inside a multi-byte character; text is released only once it no longer ends
    in a replacement character, and decoding restarts from a recent offset to stay O(1) per token.
    """

    def __init__(self, codec: TextCodec):
        self.codec = codec
        self.ids: list[int] = []
        self.prefix_start = 0
        self.read_start = 0

    def push(self, token: int) -> str:
        self.ids.append(token)
        prefix = self.codec.decode(self.ids[self.prefix_start:self.read_start])
        text = self.codec.decode(self.ids[self.prefix_start:])
        if len(text) > len(prefix) and not text.endswith("\ufffd"):
            piece = text[len(prefix):]
            self.prefix_start = self.read_start
            self.read_start = len(self.ids)
            return piece
        return ""
