"""Targets: where a package's graph runs, and which graph of the package each one reads.

A package always holds the portable graph (edgekit ops with their standard-ONNX function bodies: any
ONNX runtime runs it). `edgekit export --target` adds graphs lowered once, at export, to the native
kernels of an execution provider, so the device loads a ready graph with onnxruntime alone. A target
may have a fast variant (int8 activations, opt-in at run time). A static-shape target (an NPU's) is not
lowered from edgekit ops: its graph is made at export from the model's float graph, fixed shapes and the
NPU's own fixed-point weights (edgekit.exporters.qnn_graph for the `qnn` target). The exporter's rules per
target live in edgekit.exporters.lowering; this module is what both sides share: names, providers, graph files.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgekit.errors import EdgekitError


@dataclass(frozen=True)
class Target:
    """name: the `--target` value; provider: the onnxruntime execution provider it is lowered for (None: any);
    native_ops: the com.microsoft kernels its graph may use; fast_variant: whether a second graph with int8
    activations is written beside the exact one; static_shapes: fixed sequence and cache lengths (NPUs)."""

    name: str
    provider: str | None
    native_ops: frozenset[str] = frozenset()
    lowers: frozenset[str] = frozenset()  # edgekit op types it has a rule for (edgekit.exporters.lowering)
    native_bits: frozenset[int] = frozenset()  # MatMulNBits code widths its kernels take as stored
    fast_variant: bool = False
    static_shapes: bool = False

    def graph_file(self, variant: str = "") -> str:
        """The file of its graph, or of a variant: `fast` (int8 activations), `step` (a static target's one-token
        graph beside its chunk graph)."""
        return "model.onnx" if self.provider is None else f"model.{self.name}{'-' + variant if variant else ''}.onnx"


_NBITS = frozenset({"MatMulNBits", "GroupQueryAttention", "SkipSimplifiedLayerNormalization"})
# MatMulBlock ops become MatMulNBits; gathers keep their function body (it touches only the gathered rows).
_NBITS_RULES = frozenset({"MatMulBlockQ2", "MatMulBlockQ3", "MatMulBlockQ4", "MatMulBlockQ8", "GatherBlockQ2",
                          "GatherBlockQ3", "GatherBlockQ4", "GatherBlockQ8"})
TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("portable", None),
    # The CPU kernels take 2-, 4- and 8-bit codes; int8 activations (accuracy_level 4) are a CPU feature.
    Target("cpu", "CPUExecutionProvider", _NBITS, _NBITS_RULES, frozenset({2, 4, 8}), fast_variant=True),
    Target("cuda", "CUDAExecutionProvider", _NBITS, _NBITS_RULES, frozenset({4})),
    # Qualcomm's HTP (NPU) runs static shapes and standard ops: QDQ encoders (exporters.qnn_graph) and native
    # decoders with float activations (exporters.static_graph: a chunk graph for prompts, a one-token step graph).
    Target("qnn", "QNNExecutionProvider", static_shapes=True),
)}
DEFAULT_TARGETS = ("cpu",)


def target(name: str) -> Target:
    if name not in TARGETS:
        raise EdgekitError(f"unknown target {name!r} (supported: {', '.join(TARGETS)})")
    return TARGETS[name]


def target_for_provider(provider: str) -> Target:
    """The lowered target an execution provider runs best, or the portable graph when none is lowered for it."""
    for t in TARGETS.values():
        if t.provider == provider:
            return t
    return TARGETS["portable"]
