"""Sentence-embedding pooling appended to an encoder graph, so the package outputs the embedding itself.

Pooling and normalization run in the graph, once, with the rest of the model: the runtime only tokenizes,
and an NPU can run the whole model. The semantics are sentence-transformers' `Pooling` and `Normalize`
modules (padding on the right, as edgekit's runtime pads):
- cls: the first token's vector; mean: the masked mean, the count clamped at 1e-9; max: the masked maximum
  (padding set to -1e9); lasttoken: the last unpadded token's vector.
- normalize: x / max(||x||_2, 1e-12).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgekit.package import EMBEDDING_OUTPUT as OUTPUT
from edgekit.package import POOLING_MODES

HIDDEN = "last_hidden_state"


def append_pooling(model: onnx.ModelProto, pooling: str, normalize: bool, lp_norm: bool = False) -> onnx.ModelProto:
    """`model` (inputs `attention_mask`, output `last_hidden_state` [batch, seq, dim]) with one output instead:
    `sentence_embedding` float32 [batch, dim]. `lp_norm`: normalize with ONNX's LpNormalization (x / ||x||, no
    floor: the same for every nonzero vector), for Qualcomm's HTP, which fails to finalize the floor's Max once
    quantized (QNN_COMMON_ERROR_MEM_ALLOC, measured)."""
    if pooling not in POOLING_MODES:
        raise ValueError(f"unknown pooling mode {pooling!r}")
    g = model.graph
    hidden = next(o for o in g.output if o.name == HIDDEN)
    dim = hidden.type.tensor_type.shape.dim[2]
    nodes: list[onnx.NodeProto] = []
    consts = {"axis1": np.array([1], np.int64), "axis_last": np.array([-1], np.int64),
              "one": np.array(1, np.int64), "tiny": np.array(1e-9, np.float32), "eps": np.array(1e-12, np.float32),
              "neg": np.array(-1e9, np.float32), "first": np.array(0, np.int64), "start": np.array([0], np.int64),
              "stop": np.array([1], np.int64)}

    def node(op: str, inputs: list[str], output: str, **attrs: object) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=f"pool/{output}", **attrs))
        return output

    c = {k: f"pool.{k}" for k in consts}
    pooled = "pool.pooled" if normalize else OUTPUT
    mask = "pool.mask"  # [b, s, 1]
    if pooling != "cls":
        node("Unsqueeze", ["attention_mask", c["axis_last"]], mask)
    if pooling == "cls":
        node("Gather", [HIDDEN, c["first"]], pooled, axis=1)
    elif pooling == "mean":
        fmask = node("Cast", [mask], "pool.fmask", to=TensorProto.FLOAT)
        total = node("ReduceSum", [node("Mul", [HIDDEN, fmask], "pool.masked"), c["axis1"]], "pool.sum", keepdims=0)
        count = node("Max", [node("ReduceSum", [fmask, c["axis1"]], "pool.count0", keepdims=0), c["tiny"]],
                     "pool.count")
        node("Div", [total, count], pooled)
    elif pooling == "max":
        keep = node("Cast", [mask], "pool.bmask", to=TensorProto.BOOL)
        node("ReduceMax", [node("Where", [keep, HIDDEN, c["neg"]], "pool.filled"), c["axis1"]], pooled, keepdims=0)
    else:  # lasttoken
        last = node("Sub", [node("ReduceSum", [mask, c["axis1"]], "pool.len", keepdims=1), c["one"]], "pool.last")
        index = node("Expand", [last, node("Shape", [HIDDEN], "pool.shape")], "pool.index")
        # [b, 1, 1] expanded to [b, s, dim], then cut to [b, 1, dim]: GatherElements' index along the sequence
        index = node("Slice", [index, c["start"], c["stop"], c["axis1"]], "pool.index1")
        node("Squeeze", [node("GatherElements", [HIDDEN, index], "pool.gathered", axis=1), c["axis1"]], pooled)
    if normalize and lp_norm:
        node("LpNormalization", [pooled], OUTPUT, axis=-1, p=2)
    elif normalize:
        norm = node("Max", [node("ReduceL2", [pooled, c["axis_last"]], "pool.norm0", keepdims=1), c["eps"]],
                    "pool.norm")
        node("Div", [pooled, norm], OUTPUT)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.node.extend(nodes)
    used = {x for n in nodes for x in n.input}
    out.graph.initializer.extend(numpy_helper.from_array(v, c[k]) for k, v in consts.items() if c[k] in used)
    del out.graph.output[:]
    embedding = helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch_size", None])
    embedding.type.tensor_type.shape.dim[1].CopyFrom(dim)
    out.graph.output.append(embedding)
    return out
