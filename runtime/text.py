"""Text in and out: encoding, the chat template, and incremental decoding for streaming."""

from __future__ import annotations

import functools
import json
import re
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any, ClassVar, NoReturn, TypeVar

import jinja2
import jinja2.compiler
import jinja2.ext
import jinja2.nodes
import jinja2.parser
import jinja2.sandbox
from tokenizers import Tokenizer

from edgekit.errors import EdgekitError, first_line


def read_tokenizer(path: Path) -> Tokenizer:
    """A package's tokenizer.json, or one line saying why it cannot be read."""
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # the tokenizers library raises a bare Exception on malformed files
        raise EdgekitError(f"corrupt package: cannot read the tokenizer ({first_line(exc)[:200]})", path) from exc


class TextCodec:
    def __init__(self, path: Path, info: dict[str, Any]):
        self.path = Path(path)
        self.tokenizer = read_tokenizer(self.path)
        self.info = info
        self._chat_template: ChatTemplate | None = None

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=True).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        """Render the package's chat template with a generation prompt, in a sandbox (see ChatTemplate)."""
        if self._chat_template is None:  # compiled on first use: a package run without --chat never needs it
            source = self.info.get("chat_template")
            if not source:
                raise EdgekitError("this package has no chat template", self.path)
            self._chat_template = ChatTemplate(source, self.path)
        return self._chat_template.render(
            messages=messages, add_generation_prompt=True,
            bos_token=self.info.get("bos_token") or "", eos_token=self.info.get("eos_token") or "",
        )


class ChatTemplate:
    """A chat template from a package (untrusted), compiled once and rendered in jinja2's immutable sandbox
    with the helpers transformers gives templates (`raise_exception`, `strftime_now`, `tojson` with its
    json.dumps arguments, loop controls, `{% generation %}`) and limits: `max_chars` of output and
    `max_seconds` of wall time per render. Every failure is an EdgekitError of one line, "chat template: ...",
    prefixed with `origin` (the package's tokenizer file) when given."""

    def __init__(self, source: str, origin: str | Path | None = None, max_chars: int = 1_000_000,
                 max_seconds: float = 2.0):
        self.origin = origin
        self.max_chars = max_chars
        self.max_seconds = max_seconds
        self.env = _template_sandbox(max_chars)
        # Compiling runs no template code (constant folding is off), but the time limit still covers it.
        self.template = self._limited(lambda: self.env.from_string(source))

    def render(self, **context: Any) -> str:
        """The rendered text; `context` holds the template's variables (messages, add_generation_prompt, ...)."""
        return self._limited(lambda: self._collect(self.template.generate(**context)))

    def _collect(self, chunks: Iterator[str]) -> str:
        out: list[str] = []
        size = 0
        for chunk in chunks:
            size += len(chunk)
            if size > self.max_chars:
                raise _TemplateLimit(f"output passes the limit of {self.max_chars:,} characters")
            out.append(chunk)
        return "".join(out)

    def _limited(self, work: Callable[[], _T]) -> _T:
        """work() under the time limit; any failure becomes a one-line EdgekitError.

        jinja2 compiles a template to Python code, and a loop that yields no output never returns control to
        the caller, so the time is checked from a trace function (sys.settrace, this thread only, while the
        template runs, the previous one restored after): it fires on every line the template executes,
        including each loop iteration, and costs only while a render runs (see the measured render time in
        tests/test_chat_template.py). Single operations that could run long or allocate without executing a
        line (huge repeats, powers, widths) are refused before they run by the sandbox (_template_sandbox).
        A thread with a deadline cannot be stopped from outside; a signal alarm works only in the main thread.
        """
        deadline = time.monotonic() + self.max_seconds

        def check_deadline(frame: FrameType, event: str, arg: Any) -> Callable[..., Any]:
            if time.monotonic() > deadline:
                raise _TemplateLimit(f"runs past the limit of {self.max_seconds:g} s")
            return check_deadline

        previous = sys.gettrace()
        sys.settrace(check_deadline)
        try:
            return work()
        except _TemplateRaised as e:
            raise EdgekitError(f"chat template: {_one_line(str(e))}", self.origin) from None
        except _TemplateLimit as e:
            raise EdgekitError(f"chat template: {e}", self.origin) from None
        except jinja2.TemplateSyntaxError as e:
            raise EdgekitError(f"chat template: line {e.lineno}: {_one_line(e.message or str(e))}",
                               self.origin) from None
        except Exception as e:  # noqa: BLE001 - whatever an untrusted template does, the user gets one line
            where = _template_line(e)
            raise EdgekitError(f"chat template: {where}{type(e).__name__}: {_one_line(str(e))}",
                               self.origin) from None
        finally:
            sys.settrace(previous)


_T = TypeVar("_T")


class _TemplateRaised(Exception):
    """raise_exception() called by the template: its message is the whole error."""


class _TemplateLimit(Exception):
    """A render went past a limit."""


def _one_line(message: str) -> str:
    return " ".join(message.split()) or "failed"


def _template_line(error: BaseException) -> str:
    """"line N: " of the template line that raised (jinja2 rewrites tracebacks onto template lines)."""
    tb, line = error.__traceback__, None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return f"line {line}: " if line else ""


def _raise_exception(message: str) -> None:
    raise _TemplateRaised(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    # As transformers: plain json.dumps (jinja2's own tojson escapes HTML characters and returns Markup).
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


class _GenerationBlock(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training masks in transformers;
    rendering only needs its body."""

    tags: ClassVar[set[str]] = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body).set_lineno(lineno)


def _template_sandbox(max_chars: int) -> jinja2.sandbox.ImmutableSandboxedEnvironment:
    """jinja2's immutable sandbox set up as transformers renders chat templates, plus size guards: one
    operation (a repeat, a power, a padding width, a concatenation) must not build more than `max_chars`
    characters (or a number of more than 64 kbit), since it runs in C, where the time limit cannot stop it."""

    def refuse(what: str) -> NoReturn:
        raise _TemplateLimit(f"{what} is over the size limit ({max_chars:,})")

    def check_arguments(args: tuple, kwargs: dict) -> None:
        for value in (*args, *kwargs.values()):
            if isinstance(value, int) and abs(value) > max_chars:
                refuse(f"argument {value}")
            if isinstance(value, str) and _BIG_FORMAT_WIDTH.search(value):
                refuse(f"format width in {value[:40]!r}")

    def guarded_filter(f: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(f)  # keeps jinja2's pass_context / pass_eval_context marks
        def checked(*args: Any, **kwargs: Any) -> Any:
            check_arguments(args, kwargs)
            return f(*args, **kwargs)
        return checked

    class Sandbox(jinja2.sandbox.ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"+", "*", "**", "%"})

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            if operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 0 \
                    and left.bit_length() * right > _MAX_INT_BITS:
                raise _TemplateLimit(f"{left} ** {right} would have more than {_MAX_INT_BITS:,} bits")
            if operator == "*" and isinstance(left, int) and isinstance(right, int) \
                    and left.bit_length() + right.bit_length() > _MAX_INT_BITS:
                raise _TemplateLimit(f"a product would have more than {_MAX_INT_BITS:,} bits")
            for seq, n in ((left, right), (right, left)):
                if operator == "*" and isinstance(seq, (str, list, tuple)) and isinstance(n, int) \
                        and len(seq) * n > max_chars:
                    refuse(f"a repeat of {n}")
            if operator == "+" and isinstance(left, (str, list, tuple)) and isinstance(right, type(left)) \
                    and len(left) + len(right) > max_chars:
                refuse("a concatenation")
            if operator == "%" and isinstance(left, str):
                check_arguments((left, *(right if isinstance(right, tuple) else (right,))), {})
            return super().call_binop(context, operator, left, right)

        def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
            check_arguments(args, kwargs)
            return super().call(context, obj, *args, **kwargs)

        def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
            if getattr(value, "__name__", "") in ("format", "format_map") and isinstance(
                    getattr(value, "__self__", None), str):  # "{:>99999999}".format(x)
                check_arguments((value.__self__,), {})
            return super().wrap_str_format(value)

        def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
            # jinja2 returns an Undefined that fails only when used, so `{{ f.__globals__ }}` prints nothing;
            # a template that reaches for such an attribute is refused at once instead.
            raise jinja2.sandbox.SecurityError(
                f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")

        def join_checked(self, parts: tuple) -> str:
            text = "".join(map(str, parts))
            if len(text) > max_chars:
                refuse("a concatenation")
            return text

    class Generator(jinja2.compiler.CodeGenerator):
        def visit_Concat(self, node: jinja2.nodes.Concat, frame: jinja2.compiler.Frame) -> None:
            # `a ~ b` compiles to a join that no sandbox hook sees; this one checks the size it builds.
            self.write("environment.join_checked((")
            for arg in node.nodes:
                self.visit(arg, frame)
                self.write(", ")
            self.write("))")

    env = Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols, _GenerationBlock],
                  optimized=False)  # no constant folding: it would run filters at compile time, unguarded
    env.code_generator_class = Generator
    env.filters["tojson"] = _tojson
    env.filters = {name: guarded_filter(f) for name, f in env.filters.items()}
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


_MAX_INT_BITS = 1 << 16
# A width or precision of 7 digits or more in a %- or {}-format string (the padding is built in C).
_BIG_FORMAT_WIDTH = re.compile(r"%[-+ #0]*\d{7}|%[-+ #0]*\d*\.\d{7}|\{[^{}]*:[^{}]*\d{7}[^{}]*\}")


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
