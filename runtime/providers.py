"""Choose onnxruntime execution providers, falling back to the CPU with a clear message.

CPU and CUDA are built into onnxruntime. QNN (Qualcomm's NPU; on x86 Linux a simulator of its HTP) and
OpenVINO ship as plugin libraries in their own wheels: a plugin is registered with onnxruntime once per
process and selected through `SessionOptions.add_provider_for_devices`. Naming it in `providers=[...]`
instead is silently ignored: everything then runs on the CPU (FACTS.md).
"""

from __future__ import annotations

import importlib
import os
import platform
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import Fail

from edgekit.errors import EdgekitError

PROVIDER_NAMES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
}


@dataclass(frozen=True)
class Plugin:
    """An execution provider shipped as a plugin wheel. module: what to import (it has `get_library_path()`);
    label, where: how messages name it and where it runs a graph; ep_name: the name onnxruntime gives its
    devices (from the module); options: provider options (from the module); device: which devices to use."""

    module: str
    extra: str  # the pip package that installs it
    label: str
    where: str
    ep_name: Callable[[ModuleType], str]
    options: Callable[[ModuleType], dict[str, str]] = lambda module: {}
    device: Callable[[Any], bool] = lambda device: True
    reports_coverage: bool = False  # say at load how many nodes run on it (edgekit.runtime.coverage)
    simulated: Callable[[], bool] = lambda: False  # a simulator here: `auto` passes it over


def _on_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def _qnn_options(module: ModuleType) -> dict[str, str]:
    """The HTP backend. The graph's input quantization and output dequantization run on the NPU too (onnxruntime's
    default hands them to the CPU), so a QDQ graph can run there whole, with CPU fallback disabled. Float ops run
    in float16: without it the HTP cannot finalize a float graph (a static decoder's: QNN_COMMON_ERROR_MEM_ALLOC).
    float16 needs a target SoC, which the x86 simulator lacks: it emulates Snapdragon 8 Gen 3's (soc 60, HTP v75)."""
    options = {"backend_path": module.get_qnn_htp_path(), "offload_graph_io_quantization": "0",
               "enable_htp_fp16_precision": "1"}
    return {**options, "soc_model": "60", "htp_arch": "75"} if _on_x86() else options


PLUGINS: dict[str, Plugin] = {
    "QNNExecutionProvider": Plugin(
        "onnxruntime_qnn", "onnxruntime-qnn", "QNN (HTP)", "the NPU", lambda module: "QNN",
        lambda module: _qnn_options(module), reports_coverage=True, simulated=lambda: _on_x86()),
    "OpenVINOExecutionProvider": Plugin(
        "onnxruntime_ep_openvino", "onnxruntime-ep-openvino", "OpenVINO (CPU)", "OpenVINO",
        lambda module: module.get_ep_name(),
        device=lambda device: device.ep_metadata.get("ov_device") == "CPU"),
}

_registered: dict[str, list[Any]] = {}  # provider name -> its onnxruntime devices, once registered
_registering = threading.Lock()
_redirecting = threading.Lock()  # one process-wide stdout descriptor


def plugin_devices(provider: str) -> list[Any]:
    """The onnxruntime devices of plugin `provider`, registering its library on first use (once per process);
    [] when its wheel is not installed or it finds no device."""
    with _registering:
        if provider not in _registered:
            _registered[provider] = _register(PLUGINS[provider])
        return _registered[provider]


def _register(plugin: Plugin) -> list[Any]:
    try:
        module = importlib.import_module(plugin.module)
        name = plugin.ep_name(module)
        if not any(d.ep_name == name for d in ort.get_ep_devices()):  # else the app registered it already
            ort.register_execution_provider_library(name, module.get_library_path())
    except (ImportError, Fail):  # not installed, or built for another onnxruntime or glibc: said in one line
        return []
    return [d for d in ort.get_ep_devices() if d.ep_name == name and plugin.device(d)]


def is_available(provider: str) -> bool:
    """Whether onnxruntime can run `provider` (a full EP name) here: built in, or a plugin that finds a device."""
    if provider in PLUGINS:
        return bool(plugin_devices(provider))
    return provider in ort.get_available_providers()


def select_provider(requested: str = "cpu") -> str:
    """The provider to use for `requested` (cpu, cuda, qnn, openvino, auto): the full EP name. `auto` takes
    the first of CUDA, QNN, OpenVINO that is here, but not QNN's HTP simulator (x86)."""
    if requested == "auto":
        for key in ("cuda", "qnn", "openvino"):
            name = PROVIDER_NAMES[key]
            if not (name in PLUGINS and PLUGINS[name].simulated()) and is_available(name):
                return name
        return PROVIDER_NAMES["cpu"]
    if requested not in PROVIDER_NAMES:
        raise EdgekitError(f"unknown device {requested!r} (choose from {', '.join([*PROVIDER_NAMES, 'auto'])})")
    name = PROVIDER_NAMES[requested]
    if not is_available(name):
        print(f"edgekit: {missing_provider(name)}; falling back to CPUExecutionProvider", file=sys.stderr)
        return PROVIDER_NAMES["cpu"]
    return name


def missing_provider(provider: str) -> str:
    """Why `provider` cannot run here, in a few words (what to install)."""
    if provider in PLUGINS:
        plugin = PLUGINS[provider]
        return (f"{provider} needs the {plugin.extra} plugin (pip install {plugin.extra}): not installed, not "
                "loadable here, or it finds no device")
    return (f"{provider} is not available in this onnxruntime build "
            f"(available: {', '.join(ort.get_available_providers())})")


def create_session(graph: Path, options: ort.SessionOptions, provider: str) -> ort.InferenceSession:
    """A session over `graph` on `provider` (a full EP name) with the CPU as fallback. onnxruntime's errors pass
    through; a plugin that is not installed is a one-line EdgekitError."""
    if provider not in PLUGINS:
        return ort.InferenceSession(str(graph), options, providers=[provider])
    devices = plugin_devices(provider)
    if not devices:
        raise EdgekitError(missing_provider(provider))
    plugin = PLUGINS[provider]
    options.add_provider_for_devices(devices, plugin.options(importlib.import_module(plugin.module)))
    with _stdout_to_stderr():
        return ort.InferenceSession(str(graph), options)


@contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Points the stdout descriptor at stderr meanwhile: a plugin's native library may print as it loads (the
    HTP simulator does, once per process), and stdout carries a command's output (`run`, `--json`)."""
    with _redirecting:
        sys.stdout.flush()
        saved = os.dup(1)
        os.dup2(2, 1)
        try:
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)


def session_name(provider: str) -> str:
    """The name a session gives `provider` (`get_providers()`, placement logs): a plugin's own EP name."""
    return plugin_devices(provider)[0].ep_name if provider in PLUGINS else provider


BUILT_IN_WHERE = {"CPUExecutionProvider": "the CPU", "CUDAExecutionProvider": "the GPU"}


def provider_label(provider: str) -> tuple[str, str]:
    """How messages name `provider` and where it runs a graph: (`QNN (HTP)`, `the NPU`)."""
    plugin = PLUGINS.get(provider)
    return (plugin.label, plugin.where) if plugin else (provider, BUILT_IN_WHERE.get(provider, provider))
