"""The Python examples users copy: README.md's code blocks that use edgekit.runtime and the example in
edgekit.runtime's docstring run as written, on the tiny package (only the package path is substituted)."""

from __future__ import annotations

import re
from pathlib import Path

import edgekit.runtime
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
LOAD_PATH = re.compile(r"""load\((["'])[^"']*\1""")  # load("pkg") -> load("<tiny package>")


def readme_examples() -> list[str]:
    blocks = re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), re.MULTILINE | re.DOTALL)
    return [b for b in blocks if "edgekit.runtime" in b]


def docstring_example() -> str:
    """The docstring's indented block that starts at its first `from edgekit.runtime` line."""
    lines = edgekit.runtime.__doc__.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("from edgekit.runtime"))
    end = next((i for i in range(start, len(lines)) if lines[i].strip() and not lines[i].startswith("    ")),
               len(lines))
    return "\n".join(line[4:] for line in lines[start:end])


EXAMPLES = {f"README.md block {i}": code for i, code in enumerate(readme_examples())}
EXAMPLES["edgekit.runtime docstring"] = docstring_example()


def test_the_examples_were_found() -> None:
    assert len(EXAMPLES) >= 2 and all("load(" in code for code in EXAMPLES.values())


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_runs(name: str, tiny_gguf_pkg: Path, tiny_encoder_pkg: Path, capsys: pytest.CaptureFixture) -> None:
    """Examples that embed run on the tiny encoder package, the others on the tiny decoder package."""
    pkg = tiny_encoder_pkg if ".embed(" in EXAMPLES[name] else tiny_gguf_pkg
    code = LOAD_PATH.sub(lambda m: f"load({str(pkg)!r}", EXAMPLES[name])
    exec(compile(code, name, "exec"), {"__name__": "__example__"})  # noqa: S102 - our own documentation
    capsys.readouterr()
