"""The weight-format registry: every block format edgekit stores, keyed by name (`Q4_1`, `Q6_K`, `int4g128sym`).

A format says how a block-quantized weight is stored and what it means: `bits`-bit unsigned codes and, per
`block_size` weights along K, a scale (and an offset), W = scale·code + offset in float32. A format with a
uniform integer `zero_point` z has offset = -z·scale for every block (Q4_0: 8, Q8_0: 128, symmetric grids):
the package stores no offsets for it and the graph computes them. Scales keep the format's own dtype
(`scale_dtype`: float16 where the source stores float16). The codes are carried by the edgekit op of their
width (`MatMulBlockQ{bits}`), which each target lowers (edgekit.exporters.lowering).

Fixed-name formats (GGUF block types) register an instance when their class is defined; parametric ones
(edgekit's grids, `int{bits}g{group}[sym]`) register a parser. `weight_format(name)` finds either.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import numpy as np

from edgekit.errors import EdgekitError

FORMATS: dict[str, BlockFormat] = {}
_PARSERS: list[Callable[[str], BlockFormat | None]] = []


class BlockFormat:
    """What every format states; subclasses set these as class or instance attributes."""

    name: str = ""
    bits: int = 0  # width of a stored code: 2, 3, 4 or 8 (the op that carries it)
    block_size: int = 0  # weights per scale (and offset) along K
    zero_point: int | None = None  # uniform integer zero point, or None: offsets are stored per block
    scale_dtype: ClassVar[type[np.floating]] = np.float16
    offset_dtype: ClassVar[type[np.floating]] = np.float16

    @property
    def op_type(self) -> str:
        return f"MatMulBlockQ{self.bits}"

    def stored_bits(self, n: int, k: int) -> int:
        """Bits an [N, K] weight takes in a package: codes of whole (padded) blocks, scales, offsets if stored."""
        per_block = self.block_size * self.bits + 8 * np.dtype(self.scale_dtype).itemsize
        if self.zero_point is None:
            per_block += 8 * np.dtype(self.offset_dtype).itemsize
        return n * -(-k // self.block_size) * per_block

    def __repr__(self) -> str:
        return self.name


def register_parser(parse: Callable[[str], BlockFormat | None]) -> None:
    """A parser for a family of parametric names; it returns None for names that are not its own."""
    _PARSERS.append(parse)


def weight_format(name: str) -> BlockFormat:
    """The format named `name`, or one line naming what is known."""
    if name in FORMATS:
        return FORMATS[name]
    for parse in _PARSERS:
        fmt = parse(name)
        if fmt is not None:
            return fmt
    raise EdgekitError(f"unknown weight format {name!r} (known: {', '.join(FORMATS)}, int2..int8 grids such as "
                       "int4g128sym)")
