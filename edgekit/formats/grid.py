"""edgekit's own group-wise integer formats (`int4g128`, `int3g64sym`): what the quantizers write.

A grid format is `bits`-bit unsigned codes with one scale and offset per `group_size` weights along K.
Asymmetric: offset = -z·scale with an integer zero point z per group, stored as a float16 offset (exact).
Symmetric: z = 2^(bits-1) for every group, a uniform zero point, so no offset is stored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from edgekit.errors import EdgekitError
from edgekit.formats.base import BlockFormat, register_parser

SUPPORTED_BITS = (2, 3, 4, 8)
DEFAULT_GROUP_SIZE = 64
GROUP_SIZES = (16, 32, 64, 128, 256)  # MatMulNBits' block sizes
_NAME = re.compile(r"^int(\d+)(?:g(\d+))?(sym)?$")


@dataclass(frozen=True)
class GridFormat(BlockFormat):
    """Group-wise integer weights (module docstring)."""

    bits: int
    group_size: int = DEFAULT_GROUP_SIZE
    symmetric: bool = False

    def __post_init__(self) -> None:
        if self.bits not in SUPPORTED_BITS:
            raise EdgekitError(f"unsupported bit width {self.bits} (supported: {', '.join(map(str, SUPPORTED_BITS))})")
        if self.group_size not in GROUP_SIZES:
            raise EdgekitError(f"unsupported group size {self.group_size} (supported: "
                               f"{', '.join(map(str, GROUP_SIZES))}: MatMulNBits' block sizes)")

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"int{self.bits}g{self.group_size}{'sym' if self.symmetric else ''}"

    @property
    def block_size(self) -> int:  # type: ignore[override]
        return self.group_size

    @property
    def zero_point(self) -> int | None:  # type: ignore[override]
        return 2 ** (self.bits - 1) if self.symmetric else None

    @classmethod
    def parse(cls, name: str, group_size: int | None = None, symmetric: bool = False) -> GridFormat:
        """`int4`, `int4g128` or `int4g128sym`; `group_size`/`symmetric` fill in what the name leaves out."""
        m = _NAME.match(name.strip().lower())
        if m is None or int(m.group(1)) not in SUPPORTED_BITS:
            bits = ", ".join(f"int{b}" for b in SUPPORTED_BITS)
            raise EdgekitError(f"unknown weight format {name!r} (supported: {bits}, optionally with a group size "
                               "and 'sym', e.g. int4g128sym)")
        if m.group(2) and group_size is not None and int(m.group(2)) != group_size:
            raise EdgekitError(f"weight format {name!r} and --group-size {group_size} disagree")
        group = int(m.group(2)) if m.group(2) else (group_size or DEFAULT_GROUP_SIZE)
        return cls(int(m.group(1)), group, symmetric or bool(m.group(3)))

    def check_width(self, tensor: str, k: int) -> None:
        """A one-line error naming the tensor when its rows are narrower than one group. (A width that is not a
        multiple of the group size is fine: its last group is short, as MatMulNBits allows.)"""
        if k < self.group_size:
            raise EdgekitError(f"tensor {tensor}: row size {k} is smaller than the group size {self.group_size} "
                               f"(choose a --group-size of at most {k})")


def _parse_registered(name: str) -> GridFormat | None:
    """Registry lookup: only full names as the manifest records them (`int4g64`, `int4g64sym`)."""
    return GridFormat.parse(name) if _NAME.match(name) and "g" in name else None


register_parser(_parse_registered)
