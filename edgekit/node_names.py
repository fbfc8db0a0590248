"""Graph node names that the exporter writes and the runtime reads back (fast mode's exact nodes)."""

from __future__ import annotations

# Projections the graph builder fuses into one node when they share a format (exporters/graph_builder.py).
FUSED = {"q": "qkv", "k": "qkv", "v": "qkv", "gate": "gate_up", "up": "gate_up"}
MATMUL_SUFFIX = ".matmul"  # a projection's node is named `{weight name}.matmul`


def projection_node(name: str) -> str:
    """`layers.3.k` (a projection, or its node `layers.3.k.matmul`) -> `layers.3.qkv`, the name that covers it
    whether or not q, k and v were fused."""
    prefix, _, proj = name.removesuffix(MATMUL_SUFFIX).rpartition(".")
    return f"{prefix}.{FUSED.get(proj, proj)}" if prefix else proj
