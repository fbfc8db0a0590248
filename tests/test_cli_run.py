"""`edgekit run`: prompt sources, system prompt, stop strings, threads, the interactive chat, the timing line, and
one-line refusals of bad values."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from edgekit.cli import main

TIMING = "prompt: "


def run(pkg: Path, *args: str, stdin: str | bytes | None = None) -> object:
    return CliRunner().invoke(main, ["run", str(pkg), *args], input=stdin)


def test_prompt_from_argument_stdin_and_file_agree(tiny_gguf_pkg: Path, tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text("the cat sat", encoding="utf-8")
    results = [run(tiny_gguf_pkg, "--prompt", "the cat sat", "--max-new-tokens", "6", "--threads", "1"),
               run(tiny_gguf_pkg, "--prompt", "-", "--max-new-tokens", "6", stdin="the cat sat"),
               run(tiny_gguf_pkg, "-f", str(tmp_path / "p.txt"), "--max-new-tokens", "6")]
    assert all(r.exit_code == 0 for r in results), [r.output for r in results]
    assert len({r.stdout for r in results}) == 1 and results[0].stdout.strip()
    timing = results[0].stderr.strip().splitlines()[-1]
    assert timing.startswith("prompt: 3 tokens, ") and "; generation: " in timing and timing.endswith(" tok/s")


def test_stop_strings_and_system_prompt(tiny_gguf_pkg: Path) -> None:
    full = run(tiny_gguf_pkg, "--prompt", "the cat sat", "--max-new-tokens", "30").stdout.rstrip("\n")
    stop = full[len(full) // 2:len(full) // 2 + 2]
    cut = run(tiny_gguf_pkg, "--prompt", "the cat sat", "--max-new-tokens", "30", "--stop", stop, "--stop", "zzzq")
    assert cut.exit_code == 0 and cut.stdout.rstrip("\n") == full[:full.index(stop)]
    chat = run(tiny_gguf_pkg, "--prompt", "Hi", "--system", "Be brief.", "--max-new-tokens", "4")
    assert chat.exit_code == 0, chat.output
    assert int(chat.stderr.split("prompt: ")[1].split()[0]) > 10  # the rendered template, not just "Hi"


def test_interactive_chat_keeps_the_conversation(tiny_gguf_pkg: Path) -> None:
    result = run(tiny_gguf_pkg, "--chat", "--system", "Be brief.", "--max-new-tokens", "5",
                 stdin="Hello\nAnd then?\n\nnot read\n")
    assert result.exit_code == 0, result.output
    timings = [line for line in result.stderr.splitlines() if line.startswith(TIMING)]
    assert len(timings) == 2  # two turns; the empty line ended the chat


@pytest.mark.parametrize(("args", "stdin", "message"), [
    (["--prompt", "x", "--temperature", "nan"], None, "temperature must be a finite number >= 0"),
    (["--prompt", "x", "--top-p", "nan"], None, "top_p must be in (0, 1], got nan"),
    (["--prompt", "x", "--seed", "-1"], None, "seed must be an integer >= 0, got -1"),
    (["--prompt", "x", "--max-new-tokens", "0"], None, "max_new_tokens must be an integer >= 1, got 0"),
    (["--prompt", "a\udcff"], None, "--prompt is not valid UTF-8 text"),
    (["--prompt", "-"], b"a\xffb", "stdin: the prompt is not valid UTF-8 text (byte 1)"),
    ([], None, "give --prompt TEXT"),
])
def test_bad_values_are_one_line_and_exit_2(tiny_gguf_pkg: Path, args: list[str], stdin: bytes | None,
                                            message: str) -> None:
    result = run(tiny_gguf_pkg, *args, stdin=stdin)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgekit: error: ") and message in lines[0], result.output
