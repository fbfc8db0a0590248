"""`edgekit report`: bench and validate JSON results into one offline HTML page, checked in a headless browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import zlib
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgekit.cli import main

pytest.importorskip("plotly", reason="edgekit report needs plotly (pip install 'edgekit[report]')")

BENCH = ["--rounds", "2", "--prompt-lengths", "8,16", "--new-tokens", "6", "--format", "json"]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory, tiny_gguf_pkg: Path, tiny_hf_pkg: Path,
            tiny_gguf_file: Path) -> dict[str, Path]:
    """Bench JSON of both tiny packages (the HF one as a 1,2 thread sweep) and validate JSON of the GGUF one."""
    root = tmp_path_factory.mktemp("report")
    out: dict[str, Path] = {}
    for name, args in (("gguf", [str(tiny_gguf_pkg), *BENCH]), ("hf", [str(tiny_hf_pkg), *BENCH, "--threads", "1,2"])):
        result = CliRunner().invoke(main, ["bench", *args])
        assert result.exit_code == 0, result.output
        out[name] = root / f"bench-{name}.json"
        out[name].write_text(result.stdout)
    text = root / "eval.txt"
    text.write_text("The cat sat on the mat. " * 60)
    result = CliRunner().invoke(main, ["validate", str(tiny_gguf_pkg), "--reference", str(tiny_gguf_file),
                                       "--device", "cpu", "--tokens", "8", "--text", str(text), "--json"])
    assert result.exit_code == 0, result.output
    out["validate"] = root / "validate-gguf.json"
    out["validate"].write_text(result.stdout)
    return out


def _report(results: dict[str, Path], out: Path, *names: str) -> str:
    result = CliRunner().invoke(main, ["report", *(str(results[n]) for n in names), "-o", str(out)])
    assert result.exit_code == 0, result.output
    return result.output


def test_validate_json_names_its_package(results: dict[str, Path], tiny_gguf_pkg: Path) -> None:
    package = json.loads(results["validate"].read_text())["package"]
    bench_package = json.loads(results["gguf"].read_text())["environment"]["package"]
    assert package == bench_package and package["path"] == str(tiny_gguf_pkg.resolve())


def test_report_is_one_offline_page_with_three_charts(results: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    said = _report(results, out, "gguf", "hf", "validate")
    assert "3 bench rows, 1 validate results" in said
    page = out.read_text()
    assert page.count("Plotly.newPlot(") == 3
    assert "plotly.js v" in page  # the library itself is inside the page
    assert not re.search(r'<script[^>]+src="https?:', page), "the page must not load scripts from the network"
    assert "tiny_hf_pkg, 1 threads" in page and "tiny_hf_pkg, 2 threads" in page
    # The validated package's perplexity change is in the table and colours its marker.
    row = next(line for line in page.split("<tr>") if line.startswith("<td>tiny_gguf_pkg"))
    assert re.search(r"<td>[+-]\d+\.\d{3}%</td>", row), row
    assert '"colorscale"' in page and "perplexity" in page


def test_report_inputs_are_told_apart_and_checked(results: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    said = _report(results, out, "hf", "validate")  # the validate result is of another package
    assert "no bench result of the same package" in said and "0 validate results" in said
    other = tmp_path / "other.json"
    other.write_text('{"hello": 1}')
    result = CliRunner().invoke(main, ["report", str(other), "-o", str(out)])
    assert result.exit_code == 2 and "neither a `bench --format json` nor" in result.output
    assert len(result.output.strip().splitlines()) == 1
    result = CliRunner().invoke(main, ["report", str(results["validate"]), "-o", str(out)])
    assert result.exit_code == 2 and "no bench result among the files" in result.output


def _chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def _headless(browser: str, *args: str) -> str:
    """Chromium's stdout for a page after its scripts ran (virtual time lets plotly finish drawing)."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=10000",
             "--window-size=1200,900"]
    return subprocess.run([browser, *flags, *args], check=True, capture_output=True, text=True, timeout=120).stdout


def _png_pixel_bytes(png: bytes) -> bytes:
    """The decompressed image data of a PNG (filtered scanlines: enough to tell a blank image from a drawing)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, data = 8, b""
    while pos < len(png):
        length = int.from_bytes(png[pos:pos + 4], "big")
        kind = png[pos + 4:pos + 8]
        if kind == b"IDAT":
            data += png[pos + 8:pos + 8 + length]
        pos += 12 + length
    return zlib.decompress(data)


@pytest.mark.skipif(_chromium() is None, reason="no chromium binary (Debian: apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(results: dict[str, Path], tmp_path: Path) -> None:
    browser = _chromium()
    assert browser is not None
    out = tmp_path / "report.html"
    _report(results, out, "gguf", "hf", "validate")
    dom = _headless(browser, "--dump-dom", out.as_uri())
    charts = dom.split('class="plotly-graph-div')[1:]
    assert len(charts) == 3, dom[:2000]
    assert all('class="main-svg"' in chart for chart in charts), "a chart did not render"
    assert dom.count('class="point"') + dom.count('class="box') > 0
    shot = tmp_path / "report.png"
    _headless(browser, f"--screenshot={shot}", out.as_uri())
    png = shot.read_bytes()
    assert len(png) > 10_000
    assert len(set(_png_pixel_bytes(png))) > 32, "the screenshot is blank"
