"""Chat templates come from packages, so from anyone: they render in a sandbox, within time and size limits,
and every failure is one EdgekitError line. Real templates of popular families render as their models expect."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from edgekit.runtime import text
from edgekit.runtime.text import ChatTemplate, TextCodec
from tokenizers import Tokenizer
from tokenizers.models import WordLevel

from edgekit.cli import main
from edgekit.errors import EdgekitError

FIXTURES = Path(__file__).parent / "chat_templates"
CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi!"},
    {"role": "assistant", "content": "Hello. How can I help?"},
    {"role": "user", "content": "Name a prime."},
]


def render(source: str, messages: list[dict[str, str]] = CONVERSATION, **limits: float) -> str:
    return ChatTemplate(source, **limits).render(messages=messages, add_generation_prompt=True,
                                                 bos_token="<s>", eos_token="</s>")


def fixture(name: str) -> str:
    return (FIXTURES / f"{name}.jinja").read_text()


# Each payload tries to run `touch MARKER` through a path out of the sandbox.
ESCAPES = [
    "{{ lipsum.__globals__['os'].system('touch MARKER') }}",
    "{{ lipsum.__globals__.os.popen('touch MARKER').read() }}",
    "{{ cycler.__init__.__globals__.os.system('touch MARKER') }}",
    "{{ joiner.__init__.__globals__.os.system('touch MARKER') }}",
    "{{ namespace.__init__.__globals__.os.system('touch MARKER') }}",
    "{{ raise_exception.__globals__['__builtins__']['__import__']('os').system('touch MARKER') }}",
    "{{ strftime_now.__globals__.sys.modules.os.system('touch MARKER') }}",
    "{{ self._TemplateReference__context.cycler.__init__.__globals__.os.system('touch MARKER') }}",
    "{{ self.__init__.__globals__.__builtins__.__import__('os').system('touch MARKER') }}",
    ("{% for c in ''.__class__.__mro__[1].__subclasses__() %}{% if c.__name__ == 'Popen' %}"
     "{{ c(['touch', 'MARKER']) }}{% endif %}{% endfor %}"),
    "{% for c in ().__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
    "{{ (lipsum|attr('__globals__'))['os'].system('touch MARKER') }}",
    "{{ '{0.__init__.__globals__[os]}'.format(cycler) }}",
    "{{ messages.__class__.__mro__ }}",
    "{% set _ = messages.append({'role': 'user', 'content': 'injected'}) %}",
]


@pytest.mark.parametrize("payload", ESCAPES)
def test_template_cannot_leave_the_sandbox(payload: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with pytest.raises(EdgekitError, match=r"^chat template: ") as err:
        render(payload.replace("MARKER", str(marker)))
    assert "\n" not in str(err.value)
    assert not marker.exists()


def test_endless_loops_stop_at_the_time_limit() -> None:
    nested = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    recursive = "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}"
    for source in (nested, "{% for i in range(10**9) %}{% endfor %}", recursive):
        start = time.perf_counter()
        with pytest.raises(EdgekitError, match=r"^chat template: "):
            render(source, max_seconds=0.2)
        assert time.perf_counter() - start < 1.0
    with pytest.raises(EdgekitError, match=r"chat template: runs past the limit of 0.2 s"):
        render(nested, max_seconds=0.2)


@pytest.mark.parametrize("source", [
    "{% for i in range(100000) %}{{ 'x' * 100 }}{% endfor %}",  # many small pieces
    "{{ 'x' * 10**10 }}",  # one repeat
    "{{ 'x'|center(10**10) }}", "{{ 'x'.ljust(10**10) }}",  # widths
    "{{ '%9999999999s' % 'x' }}", "{{ '{:>9999999999}'.format('x') }}",
    "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "{% set ns = namespace(s=[1]) %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
    "{% set ns = namespace(n=3) %}{% for i in range(64) %}{% set ns.n = ns.n * ns.n %}{% endfor %}",
    "{{ 7 ** 1000000000 }}",
])
def test_huge_output_stops_at_the_size_limit(source: str) -> None:
    with pytest.raises(EdgekitError, match=r"^chat template: .*(limit|bits)"):
        render(source)


@pytest.mark.parametrize(("source", "message"), [
    ("{{ 1/0 }}", "chat template: line 1: ZeroDivisionError: division by zero"),
    ("Hi\n{{ messages[0].content.missing.deeper }}", "chat template: line 2: UndefinedError: .*'missing'"),
    ("{{ 1 + 'a' }}", "chat template: line 1: TypeError: "),
    ("{% for m in messages %}{{ m.role }", "chat template: line 1: unexpected '}'"),
    ("{% if %}", "chat template: line 1: Expected an expression"),
    ("{% endfor %}", "chat template: line 1: Encountered unknown tag 'endfor'"),
])
def test_template_errors_are_one_line(source: str, message: str) -> None:
    with pytest.raises(EdgekitError, match=f"^{message}") as err:
        render(source)
    assert "\n" not in str(err.value) and err.value.__cause__ is None and err.value.__suppress_context__


def test_helpers_as_transformers_provides_them() -> None:
    tojson = "{{ {'b': 'é', 'a': [1, 2]}|tojson }}|{{ {'b': 1, 'a': 2}|tojson(indent=2, sort_keys=true) }}"
    assert render(tojson) == '{"b": "é", "a": [1, 2]}|' + json.dumps({"a": 2, "b": 1}, indent=2)
    assert render("{{ {'a': '<'}|tojson(ensure_ascii=true, separators=(',', ':')) }}") == '{"a":"<"}'
    assert render("{{ strftime_now('%Y') }}") == datetime.now().strftime("%Y")
    assert render("{% for i in range(5) %}{% if i == 1 %}{% continue %}{% endif %}{% if i == 3 %}{% break %}"
                  "{% endif %}{{ i }}{% endfor %}") == "02"
    assert render("a{% generation %}b{% endgeneration %}c") == "abc"
    assert render("  {% if true %}\n  x\n  {% endif %}\n") == "  x\n"  # trim_blocks, lstrip_blocks
    with pytest.raises(EdgekitError, match=r"^chat template: no tools here$"):
        render("{{ raise_exception('no tools here') }}")


# The expected prompts are written out from each family's documented prompt format.
EXPECTED = {
    "chatml_smollm2": "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n"
                      "<|im_start|>assistant\nHello. How can I help?<|im_end|>\n"
                      "<|im_start|>user\nName a prime.<|im_end|>\n<|im_start|>assistant\n",
    "llama3_1": "<s><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
                "Today Date: {date}\n\nYou are terse.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi!"
                "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello. How can I help?<|eot_id|>"
                "<|start_header_id|>user<|end_header_id|>\n\nName a prime.<|eot_id|>"
                "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "mistral_instruct": "<s>[INST] Hi![/INST] Hello. How can I help?</s>[INST] You are terse.\n\nName a prime.[/INST]",
    "gemma": "<s><start_of_turn>user\nYou are terse.\n\nHi!<end_of_turn>\n<start_of_turn>model\n"
             "Hello. How can I help?<end_of_turn>\n<start_of_turn>user\nName a prime.<end_of_turn>\n"
             "<start_of_turn>model\n",
    "phi3": "<|system|>\nYou are terse.<|end|>\n<|user|>\nHi!<|end|>\n<|assistant|>\nHello. How can I help?<|end|>\n"
            "<|user|>\nName a prime.<|end|>\n<|assistant|>\n",
}


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_real_templates_render_the_documented_prompt(family: str) -> None:
    before = datetime.now().strftime("%d %b %Y")
    prompt = render(fixture(family))
    after = datetime.now().strftime("%d %b %Y")
    assert prompt in {EXPECTED[family].format(date=before), EXPECTED[family].format(date=after)}


def test_chatml_supplies_its_default_system_prompt() -> None:
    assert render(fixture("chatml_smollm2"), CONVERSATION[1:2]) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize(("family", "messages", "message"), [
    ("mistral_instruct", [CONVERSATION[1], CONVERSATION[1]],
     "After the optional system message, conversation roles must alternate user/assistant/user/assistant/..."),
    ("mistral_instruct", [CONVERSATION[1], {"role": "tool", "content": "42"}],
     "Only user and assistant roles are supported"),
    ("gemma", [CONVERSATION[2]], "Conversation roles must alternate"),
    ("llama3_1", CONVERSATION[:1], "A conversation needs at least one user message."),
])
def test_template_raise_exception_is_the_error_message(family: str, messages: list, message: str) -> None:
    with pytest.raises(EdgekitError, match=r"^chat template: " + message.replace(".", r"\.")):
        render(fixture(family), messages)


def test_normal_render_is_fast() -> None:
    template = ChatTemplate(fixture("llama3_1"))
    times = []
    for _ in range(50):
        start = time.perf_counter()
        template.render(messages=CONVERSATION, add_generation_prompt=True, bos_token="<s>")
        times.append(time.perf_counter() - start)
    assert sorted(times)[len(times) // 2] < 0.005


def test_render_leaves_the_trace_hook_as_it_was() -> None:
    import sys

    def tracer(*args: object) -> None:
        return None

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        render(fixture("phi3"))
        with pytest.raises(EdgekitError):
            render("{{ 1/0 }}")
        assert sys.gettrace() is tracer
    finally:
        sys.settrace(previous)


def _codec(tmp_path: Path, template: str) -> TextCodec:
    path = tmp_path / "tokenizer.json"
    Tokenizer(WordLevel({"[UNK]": 0, "hi": 1}, unk_token="[UNK]")).save(str(path))
    return TextCodec(path, {"chat_template": template, "bos_token": "<s>", "eos_token": "</s>"})


def test_codec_names_the_tokenizer_file_and_compiles_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    compiled = []

    class Counting(ChatTemplate):
        def __init__(self, *args: object, **kwargs: object) -> None:
            compiled.append(1)
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(text, "ChatTemplate", Counting)
    codec = _codec(tmp_path, fixture("phi3"))
    for _ in range(3):
        assert codec.chat_prompt(CONVERSATION[1:2]) == "<|user|>\nHi!<|end|>\n<|assistant|>\n"
    assert len(compiled) == 1
    with pytest.raises(EdgekitError, match=rf"^{tmp_path / 'tokenizer.json'}: chat template: line 1: Security"):
        _codec(tmp_path, "{{ lipsum.__globals__ }}").chat_prompt(CONVERSATION[1:2])


def test_cli_chat_with_a_hostile_template_is_one_line(tiny_gguf_pkg: Path, tmp_path: Path) -> None:
    import shutil

    pkg = tmp_path / "pkg"
    shutil.copytree(tiny_gguf_pkg, pkg)
    marker = tmp_path / "pwned"
    manifest = json.loads((pkg / "manifest.json").read_text())
    manifest["tokenizer"]["chat_template"] = f"{{{{ cycler.__init__.__globals__.os.system('touch {marker}') }}}}"
    (pkg / "manifest.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(main, ["run", str(pkg), "--prompt", "Hi", "--chat", "--max-new-tokens", "2"])
    assert result.exit_code == 2
    assert result.output.strip().startswith("edgekit: error: ") and "chat template: " in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert not marker.exists()
