"""Where a benchmark ran and what it measured: the `environment` block of `edgekit bench --format json`.

A number without its machine, library versions and package is not comparable to another one, so every
bench result carries them. Standard library and onnxruntime only: this runs on the device.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import onnxruntime as ort

from edgekit import __version__
from edgekit.package import MANIFEST, read_manifest, sha256_of


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else platform.processor(), else 'unknown'."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Hardware", "Processor")) and ":" in line:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def physical_cores() -> int | None:
    """Distinct (physical id, core id) pairs in /proc/cpuinfo: onnxruntime's default thread count."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    cores, phys = set(), "0"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "physical id":
            phys = value.strip()
        elif key.strip() == "core id":
            cores.add((phys, value.strip()))
    return len(cores) or None


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (None where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def edgekit_version() -> str:
    try:
        return metadata.version("edgekit")
    except metadata.PackageNotFoundError:
        return __version__


def package_identity(folder: str | Path) -> dict[str, Any]:
    """What package was measured: its absolute path, the sha256 of its manifest.json (which hashes every other
    file, so it names the package's exact contents), its source and a summary of its recipe. Reads only the
    manifest, so it also serves `validate --json` and `report` for matching results of the same package."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    recipe = manifest.data.get("recipe", {})
    source = manifest.data.get("source", {})
    return {
        "path": str(folder.resolve()),
        "manifest_sha256": sha256_of(folder / MANIFEST),
        "source": {"name": source.get("name"), "kind": source.get("kind"), "sha256": source.get("sha256")},
        "recipe": {k: recipe.get(k) for k in ("method", "bits", "group_size", "symmetric", "plan", "calibration",
                                             "tune_steps", "bits_per_weight", "bits_per_weight_all", "summary")},
        "size_bytes": sum(int(e["size"]) for e in manifest.files.values()),
    }


def bench_environment(folder: str | Path, provider: str, threads: list[int]) -> dict[str, Any]:
    """The environment block, without the load averages (the caller takes them before and after measuring).
    `threads`: the thread counts requested (0: onnxruntime's default, one per physical core)."""
    physical = physical_cores()
    return {
        "edgekit_version": edgekit_version(),
        "onnxruntime_version": ort.__version__,
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": physical,
        "threads": threads,
        "threads_used": [t or physical or os.cpu_count() for t in threads],
        "execution_provider": provider,
        "package": package_identity(folder),
    }
