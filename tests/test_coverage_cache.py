"""The load-time coverage line is measured once per graph and installation, then read from the user's cache; a
changed graph, provider option or unreadable cache measures again."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from edgekit.runtime.coverage_cache import cache_folder, cached_line


class Measure:
    def __init__(self, line: str = "QNN (HTP): 3 of 3 nodes on the NPU"):
        self.line, self.calls = line, 0

    def __call__(self) -> str:
        self.calls += 1
        return self.line


@pytest.fixture
def graph(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = tmp_path / "model.onnx"
    path.write_bytes(b"graph bytes")
    return path


def line(graph: Path, measure: Measure, options: dict[str, str] | None = None) -> str:
    return cached_line(graph, "QNNExecutionProvider", options or {"backend_path": "htp"}, "onnxruntime-qnn", measure)


def test_measured_once_then_read(graph: Path) -> None:
    measure = Measure()
    assert line(graph, measure) == line(graph, measure) == measure.line
    assert measure.calls == 1
    assert cache_folder() == graph.parent / "cache" / "edgekit" / "coverage"
    assert [re.fullmatch(r"[0-9a-f]{64}\.txt", p.name) is not None for p in cache_folder().iterdir()] == [True]


def test_another_graph_or_option_is_measured_again(graph: Path) -> None:
    measure = Measure()
    line(graph, measure)
    line(graph, measure, {"backend_path": "htp", "enable_htp_fp16_precision": "1"})
    graph.write_bytes(b"another graph")
    line(graph, measure)
    assert measure.calls == 3


@pytest.mark.parametrize("stored", ["", "x" * 2000, "two\nlines", b"\xff\xfe"])
def test_a_damaged_entry_is_measured_again(graph: Path, stored: str | bytes) -> None:
    measure = Measure()
    line(graph, measure)
    (entry,) = cache_folder().iterdir()
    entry.write_bytes(stored.encode() if isinstance(stored, str) else stored)
    assert line(graph, measure) == measure.line and measure.calls == 2
    assert entry.read_text() == measure.line  # and repaired


def test_an_unwritable_cache_still_gives_the_line(graph: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = graph.parent / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    measure = Measure()
    assert line(graph, measure) == line(graph, measure) == measure.line
    assert measure.calls == 2
