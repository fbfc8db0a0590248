"""The op registry and what every edgekit op provides."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import onnx
from onnx import helper

DOMAIN = "edgekit"
DOMAIN_VERSION = 1
ONNX_OPSET = 21
OPSET_IMPORTS = [helper.make_opsetid("", ONNX_OPSET), helper.make_opsetid(DOMAIN, DOMAIN_VERSION)]

OPS: dict[str, type[EdgekitOp]] = {}


class EdgekitOp:
    """Base of every op: subclasses set the schema fields and implement reference() and body()."""

    op_type: ClassVar[str] = ""
    inputs: ClassVar[tuple[str, ...]] = ()
    outputs: ClassVar[tuple[str, ...]] = ("Y",)
    attributes: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if cls.op_type:
            OPS[cls.op_type] = cls

    @classmethod
    def reference(cls, *inputs: np.ndarray, **attrs: int) -> np.ndarray:
        """The numpy reference kernel: the op's meaning, written for clarity, not speed."""
        raise NotImplementedError

    @classmethod
    def body(cls) -> list[onnx.NodeProto]:
        """Standard-ONNX nodes computing the op from the function's formal inputs to its outputs."""
        raise NotImplementedError

    @classmethod
    def function(cls) -> onnx.FunctionProto:
        return helper.make_function(
            DOMAIN,
            cls.op_type,
            list(cls.inputs),
            list(cls.outputs),
            cls.body(),
            [helper.make_opsetid("", ONNX_OPSET)],
            attributes=list(cls.attributes),
        )

    @classmethod
    def make_node(cls, inputs: list[str], outputs: list[str], name: str, **attrs: int) -> onnx.NodeProto:
        missing = set(cls.attributes) - set(attrs)
        if missing or len(inputs) != len(cls.inputs):
            raise ValueError(f"{cls.op_type} node {name}: needs inputs {cls.inputs} and attributes {cls.attributes}")
        return helper.make_node(cls.op_type, inputs, outputs, name=name, domain=DOMAIN, **attrs)


def function_protos(op_types: set[str]) -> list[onnx.FunctionProto]:
    """The function bodies a model using these op types must carry."""
    unknown = op_types - set(OPS)
    if unknown:
        raise ValueError(f"unknown edgekit op(s): {sorted(unknown)}")
    return [OPS[t].function() for t in sorted(op_types)]
