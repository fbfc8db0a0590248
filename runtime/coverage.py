"""How much of a graph an execution provider runs, read from onnxruntime's own partitioning.

Method: one session is created over the graph with the provider (and the CPU as fallback, as the runtime
does) while onnxruntime's verbose log is captured: its C++ logger writes to the process's stderr file
descriptor, pointed at a temporary file meanwhile. Two reports in that log are read:

- QNN validates each node unit ("Validation PASSED for 4 nodes in OrtNodeUnit (MatMul) :", then one line per
  node: "Operator type: DequantizeLinear Node name: w_DequantizeLinear Node index: 1"), once per capability
  pass; the last pass is what it takes. PASSED nodes run on the NPU, FAILED ones fall back to the CPU.
- For other providers, onnxruntime's "Node placements" report: each node of the optimized graph and the
  provider it is placed on. An EP that compiles what it takes (OpenVINO) shows there as one node per fused
  partition. When one provider takes every node, onnxruntime gives only their number, so the per-op counts
  are then empty.

Counts are of the graph as onnxruntime prepares it (ORT_ENABLE_ALL: functions inlined, constants folded,
fusions), which is what runs, not of the file's nodes.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import tempfile
import threading
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import onnxruntime as ort
from edgekit.runtime.coverage_cache import cached_line
from edgekit.runtime.loader import graph_path, load_manifest
from edgekit.runtime.providers import (
    PLUGINS,
    PROVIDER_NAMES,
    create_session,
    is_available,
    missing_provider,
    provider_label,
    session_name,
)

from edgekit.errors import EdgekitError, first_line
from edgekit.package import package_file
from edgekit.targets import target_for_provider

SUMMARY_OPS = 5  # fallback op types named in the one-line summary
_VERDICT = re.compile(r"Validation (PASSED|FAILED) for \d+ nodes in OrtNodeUnit")
_VALIDATED_NODE = re.compile(r"^\tOperator type: (\S+) Node name: (.*) Node index: (\d+)")
_PLACED_ON = re.compile(r"VerifyEachNodeIsAssignedToAnEp\] +(?:All nodes|Node\(s\)) placed on \[([^\]]+)\]\. "
                        r"Number of nodes: (\d+)")
_PLACED_NODE = re.compile(r"VerifyEachNodeIsAssignedToAnEp\]   (\S+) \((.*)\)$")
_log_capture = threading.Lock()  # one process-wide stderr descriptor


@dataclass(frozen=True)
class Node:
    op_type: str
    name: str


@dataclass(frozen=True)
class Coverage:
    """Nodes of a graph on `provider` and on the CPU fallback. by_op: op type -> [on provider, fallback], for the
    nodes onnxruntime names (see the module docstring); fallback: the nodes that fall back, where named."""

    provider: str
    total: int
    on_provider: int
    by_op: dict[str, list[int]] = field(default_factory=dict)
    fallback: list[Node] = field(default_factory=list)

    @property
    def full(self) -> bool:
        return self.on_provider == self.total

    def summary(self) -> str:
        """`QNN (HTP): 38 of 40 nodes on the NPU; 2 fall back to the CPU (Erf 1, Mul 1)`: the most frequent
        fallback op types, up to SUMMARY_OPS."""
        label, where = provider_label(self.provider)
        line = f"{label}: {self.on_provider} of {self.total} nodes on {where}"
        if self.full:
            return line
        off = sorted(((n, op) for op, (_, n) in self.by_op.items() if n), key=lambda x: (-x[0], x[1]))
        ops = ", ".join(f"{op} {n}" for n, op in off[:SUMMARY_OPS]) + (", ..." if len(off) > SUMMARY_OPS else "")
        moved = self.total - self.on_provider
        return f"{line}; {moved} {'falls' if moved == 1 else 'fall'} back to the CPU" + (f" ({ops})" if ops else "")

    def table(self) -> str:
        """One row per op type: nodes on the provider, nodes that fall back; then the summary."""
        width = max([len("op type"), *map(len, self.by_op)])
        rows = [f"{'op type':<{width}}  {'on EP':>6}  {'fallback':>8}"]
        rows += [f"{op:<{width}}  {on:>6}  {off:>8}" for op, (on, off) in sorted(self.by_op.items())]
        if not self.by_op:
            rows.append("(onnxruntime names no nodes when one provider takes them all)")
        return "\n".join([*rows, "", self.summary()])

    def to_dict(self) -> dict[str, Any]:
        return {"provider": self.provider, "nodes": self.total, "on_provider": self.on_provider,
                "fallback": self.total - self.on_provider, "full": self.full,
                "by_op": {op: {"on_provider": on, "fallback": off} for op, (on, off) in sorted(self.by_op.items())},
                "fallback_nodes": [{"op_type": n.op_type, "name": n.name} for n in self.fallback]}


def coverage(graph: str | Path, provider: str) -> Coverage:
    """The coverage of `graph` (an ONNX file, external data beside it) on `provider` (a full EP name; one that is
    not installed is a one-line EdgekitError); creates one session (for QNN: compiles the graph for the HTP)."""
    return from_log(provider, session_log(Path(graph), provider))


def from_log(provider: str, log: str) -> Coverage:
    """The coverage that onnxruntime's verbose session log (`session_log`) reports for `provider`."""
    plugin = PLUGINS.get(provider)
    if plugin is not None and plugin.reports_coverage:
        return _from_validation(provider, log)
    return _from_placements(provider, log)


def package_coverage(folder: str | Path, device: str) -> list[tuple[Path, Coverage]]:
    """The coverage on `device` (cpu, cuda, qnn, openvino) of the package's graphs for it: the graph lowered for
    its provider when the package has one (and a static target's step graph), else the portable graph. Returns
    each graph file with its coverage, the main graph first."""
    if device not in PROVIDER_NAMES:
        raise EdgekitError(f"unknown execution provider {device!r} (choose from {', '.join(PROVIDER_NAMES)})")
    provider = PROVIDER_NAMES[device]
    _require(provider)  # before graph_path, which may say on stderr that the portable graph stands in
    manifest = load_manifest(folder, verify=False)
    graphs = [graph_path(folder, manifest, provider)]
    step = manifest.data["graph"].get("targets", {}).get(target_for_provider(provider).name, {}).get("step_file")
    if step:
        graphs.append(package_file(folder, manifest, step))
    return [(graph, coverage(graph, provider)) for graph in graphs]


def session_log(graph: Path, provider: str) -> str:
    """onnxruntime's verbose log while it creates a session over `graph` on `provider`. Whatever other threads
    write to stderr meanwhile lands in it too."""
    _require(provider)
    options = ort.SessionOptions()
    options.log_severity_level = 0
    options.log_verbosity_level = 1
    with _log_capture, tempfile.TemporaryFile() as log:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(log.fileno(), 2)
        try:
            create_session(graph, options, provider)
        except Exception as exc:  # onnxruntime raises its own exception types, with multi-line messages
            raise EdgekitError(f"onnxruntime cannot load this graph on {provider} ({first_line(exc)})",
                               graph) from exc
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        log.seek(0)
        return log.read().decode("utf-8", errors="replace")


def _require(provider: str) -> None:
    if not is_available(provider):
        raise EdgekitError(f"cannot measure coverage: {missing_provider(provider)}")


def _from_validation(provider: str, log: str) -> Coverage:
    """QNN's verdict per node in its last capability pass; none on the EP if onnxruntime placed none there."""
    last_pass = log.rsplit("GetCapability pass", 1)[-1]
    verdicts: dict[str, tuple[Node, bool]] = {}  # by node index: inlined function nodes have no name
    passed = False
    for line in last_pass.splitlines():
        if verdict := _VERDICT.search(line):
            passed = verdict.group(1) == "PASSED"
        elif node := _VALIDATED_NODE.match(line):
            op_type, name, index = node.groups()
            verdicts[index] = Node(op_type, name), passed
    placed = bool(_placement_counts(log).get(session_name(provider)))  # else the EP kept nothing it passed
    return _tally(provider, [n for n, ok in verdicts.values() if ok and placed],
                  [n for n, ok in verdicts.values() if not (ok and placed)])


def _from_placements(provider: str, log: str) -> Coverage:
    """onnxruntime's node placements: the requested provider's nodes against everyone else's."""
    counts, name = _placement_counts(log), session_name(provider)
    on: list[Node] = []
    off: list[Node] = []
    current = ""
    for line in log.splitlines():
        if placed := _PLACED_ON.search(line):
            current = placed.group(1)
        elif node := _PLACED_NODE.search(line):
            (on if current == name else off).append(Node(*node.groups()))
    # the counts hold every node, the lists only those onnxruntime names
    return replace(_tally(provider, on, off), total=sum(counts.values()), on_provider=counts.get(name, 0))


def _placement_counts(log: str) -> dict[str, int]:
    """Nodes per provider in onnxruntime's placement report (summed over graphs and subgraphs)."""
    counts: Counter[str] = Counter()
    for ep, n in re.findall(_PLACED_ON, log):
        counts[ep] += int(n)
    return dict(counts)


def _tally(provider: str, on: list[Node], off: list[Node]) -> Coverage:
    by_op: dict[str, list[int]] = {}
    for side, nodes in enumerate((on, off)):
        for node in nodes:
            by_op.setdefault(node.op_type, [0, 0])[side] += 1
    return Coverage(provider, len(on) + len(off), len(on), by_op, off)


def report_coverage(graph: str | Path, provider: str) -> None:
    """After loading a graph on an NPU provider, say on stderr how much of it runs there. Measuring it costs a
    second session over the graph, once per graph and installation (runtime.coverage_cache)."""
    plugin = PLUGINS.get(provider)
    if plugin is not None and plugin.reports_coverage:
        options = plugin.options(importlib.import_module(plugin.module))
        line = cached_line(Path(graph), provider, options, plugin.extra, lambda: coverage(graph, provider).summary())
        print(f"edgekit: {line}", file=sys.stderr)
