"""An interrupted export leaves nothing behind: SIGTERM and SIGINT during the write remove the temporary folder
(exit 143 / 130), and a later export sweeps the folder a killed one left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from edgekit.exporters.pipeline import export, sweep_stale_partials
from factories import tiny_hf_model


@pytest.fixture(scope="module")
def float_hf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A float32 model whose package takes about a second to write (a 50 MB embedding to save and hash)."""
    return tiny_hf_model(tmp_path_factory.mktemp("float_hf") / "model", hidden_size=256, intermediate_size=512)


# `edgekit` with Python's own SIGINT handler and the default SIGTERM: a background job of a non-interactive shell
# starts with SIGINT ignored (and Python keeps it so), where a command run from a terminal gets Ctrl-C.
CHILD = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
         "signal.signal(signal.SIGTERM, signal.SIG_DFL); sys.argv[0] = 'edgekit'; "
         "runpy.run_module('edgekit.cli', run_name='__main__')")


def _export_and_interrupt(src: Path, out: Path, signum: int) -> subprocess.CompletedProcess:
    """A real `edgekit export`, frozen (SIGSTOP) as soon as its temporary folder appears, then sent `signum` and
    resumed: the signal lands while the package is being written, whatever the machine's load."""
    proc = subprocess.Popen([sys.executable, "-c", CHILD, "export", str(src), "-o", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(out.parent.glob(f".{out.name}.partial-*")):
        assert proc.poll() is None, "export finished before it was interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.002)
    proc.send_signal(signal.SIGSTOP)
    assert not out.exists(), "the write finished before the export could be frozen"
    proc.send_signal(signum)
    proc.send_signal(signal.SIGCONT)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.mark.parametrize("signum,status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_during_export_leaves_nothing(tmp_path: Path, float_hf: Path, signum: int, status: int) -> None:
    out = tmp_path / "pkg"
    result = _export_and_interrupt(float_hf, out, signum)
    assert result.returncode == status, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("edgekit: interrupted")
    assert list(tmp_path.iterdir()) == []


def test_stale_partial_of_a_dead_process_is_swept(tmp_path: Path, tiny_gguf_file: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=False)
    stale = tmp_path / f".pkg.partial-{dead.stdout.strip()}-abc123"
    live = tmp_path / f".pkg.partial-{os.getpid()}-def456"  # an export running now is left alone
    for folder in (stale, live):
        folder.mkdir()
        (folder / "model.onnx.data").write_bytes(b"x" * 1000)
    sweep_stale_partials(tmp_path / "pkg")
    assert not stale.exists() and live.exists()
    live.rename(tmp_path / "kept")
    export(str(tiny_gguf_file), tmp_path / "pkg")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept", "pkg"]
