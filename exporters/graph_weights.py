"""The weight matrices of a float ONNX graph from another exporter, and that graph with them low-bit.

An optimum export multiplies by weights in three node shapes: MatMul(x, W[K, N]), Gemm(x, W, bias) (GPT-2's
Conv1D, with W [K, N] or, with transB, [N, K]) and Gather(table[V, H], ids) for the token embedding. Each
is a `WeightSite` holding the weight as [N, K] (out, in), the layout of edgekit's block formats. After
quantization (any method of exporters.quantize) `rewrite` replaces each site by edgekit's block-quantized
op, built by the same GraphBuilder primitives as native graphs, so lowering and the package apply unchanged.
A tied output layer (a MatMul whose weight is the embedding table transposed, which optimum stores as a
second copy) reads the embedding's own low-bit initializers: the table is stored once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from edgekit.exporters.graph_builder import MS_DOMAIN, GraphBuilder
from onnx import helper, numpy_helper

from edgekit.formats import BlockQuantWeight
from edgekit.model_config import ModelConfig
from edgekit.ops import OPSET_IMPORTS, function_protos

EMBED = "embed"  # the token embedding's name, as in native graphs (GraphBuilder.embedding names it so)


@dataclass
class WeightSite:
    """One weight-reading node: `node` (its index in the graph), `kind` (matmul, gemm, gather), `name` (the torch
    module path it came from, e.g. `encoder.layer.0.attention.self.query`) and `weight` float32 [N, K]."""

    node: int
    kind: str
    name: str
    weight: np.ndarray
    tied: bool = False  # an output layer equal to the embedding table (reads the embedding's initializers)


def _attr(node: onnx.NodeProto, name: str, default: float) -> float | int:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _module_name(node: onnx.NodeProto, initializer: str) -> str:
    """`/encoder/layer.0/attention/self/query/MatMul` -> `encoder.layer.0.attention.self.query` (the torch module
    optimum traced it from); the initializer's name when the node has no scoped name."""
    parts = node.name.strip("/").split("/")
    if node.name.startswith("/") and len(parts) > 1:
        return ".".join(parts[:-1])
    return initializer.removesuffix(".weight")


def weight_sites(model: onnx.ModelProto, vocab_size: int) -> list[WeightSite]:
    """Every float weight matrix that feeds a MatMul or Gemm, and the token-embedding Gather (the table of
    `vocab_size` rows), in graph order."""
    inits = {t.name: t for t in model.graph.initializer}

    def matrix(name: str) -> np.ndarray | None:
        t = inits.get(name)
        if t is None or len(t.dims) != 2 or t.data_type != onnx.TensorProto.FLOAT:
            return None
        return numpy_helper.to_array(t)

    sites: list[WeightSite] = []
    for i, node in enumerate(model.graph.node):
        w: np.ndarray | None = None
        if node.op_type == "MatMul" and node.input[0] not in inits and (b := matrix(node.input[1])) is not None:
            w, kind = b.T, "matmul"
        elif (node.op_type == "Gemm" and not _attr(node, "transA", 0) and node.input[0] not in inits
              and (b := matrix(node.input[1])) is not None):
            w, kind = (b if _attr(node, "transB", 0) else b.T) * np.float32(_attr(node, "alpha", 1.0)), "gemm"
        elif (node.op_type == "Gather" and _attr(node, "axis", 0) == 0 and (b := matrix(node.input[0])) is not None
              and b.shape[0] == vocab_size):
            w, kind = b, "gather"
        if w is not None:
            name = EMBED if kind == "gather" else _module_name(node, node.input[1])
            sites.append(WeightSite(i, kind, name, np.ascontiguousarray(w, dtype=np.float32)))
    _name_uniquely(sites)
    embed = next((s for s in sites if s.kind == "gather"), None)
    if embed is not None:
        for s in sites:
            if s.kind != "gather" and s.weight.shape == embed.weight.shape and np.array_equal(s.weight, embed.weight):
                s.tied = True
    return sites


def _name_uniquely(sites: list[WeightSite]) -> None:
    seen: dict[str, int] = {}
    for s in sites:
        n = seen.get(s.name, 0)
        seen[s.name] = n + 1
        if n:
            s.name = f"{s.name}.{n}"


def rewrite(model: onnx.ModelProto, sites: list[WeightSite], quantized: dict[str, BlockQuantWeight],
            config: ModelConfig) -> tuple[onnx.ModelProto, list[str]]:
    """`model` with each site named in `quantized` reading its low-bit weight through an edgekit op, and the
    edgekit ops used. Float initializers no node reads any more are dropped."""
    b = GraphBuilder(config)
    graph = model.graph
    replaced: dict[int, list[onnx.NodeProto]] = {}
    embed = quantized.get(EMBED)
    for s in sites:
        w = quantized.get(EMBED if s.tied and embed is not None else s.name)
        if w is None:
            continue
        node, start = graph.node[s.node], len(b.nodes)
        if s.kind == "gather":
            b.embedding(w, node.input[1], node.output[0])
        elif s.kind == "matmul":
            b.linear(node.input[0], EMBED if s.tied else s.name, w, node.output[0])
        else:
            _gemm(b, node, EMBED if s.tied else s.name, w)
        replaced[s.node] = b.nodes[start:]
    nodes = [n for i, old in enumerate(graph.node) for n in replaced.get(i, [old])]
    read = {x for n in nodes for x in n.input}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    kept = [t for t in graph.initializer if t.name in read] + b.initializers
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept)
    ops = sorted(b.edgekit_ops)
    _import_edgekit(out, ops)
    return out, ops


def _gemm(b: GraphBuilder, node: onnx.NodeProto, name: str, w: BlockQuantWeight) -> None:
    """Gemm(x, W, C) = alpha·x·W + beta·C: the product by the low-bit weight (alpha is folded into it before
    quantization), then the bias, scaled by beta when beta is not 1."""
    if len(node.input) < 3 or not node.input[2]:
        b.linear(node.input[0], name, w, node.output[0])
        return
    product = b.linear(node.input[0], name, w, f"{node.output[0]}.product")
    bias = node.input[2]
    beta = float(_attr(node, "beta", 1.0))
    if beta != 1.0:
        bias = b.scale(bias, beta, f"{node.output[0]}.bias")
    b.binary("Add", product, bias, node.output[0])


def _import_edgekit(model: onnx.ModelProto, ops: list[str]) -> None:
    """The opsets and function bodies edgekit's ops need (the graph's own ONNX opset is edgekit's, see
    exporters.optimum_export)."""
    have = {o.domain for o in model.opset_import}
    for o in [*OPSET_IMPORTS, helper.make_opsetid(MS_DOMAIN, 1)]:
        if o.domain not in have:
            model.opset_import.append(o)
    known = {(f.domain, f.name) for f in model.functions}
    model.functions.extend(f for f in function_protos(set(ops)) if (f.domain, f.name) not in known)
