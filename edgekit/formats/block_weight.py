"""Block-affine quantized weights, the one form every low-bit source is converted into.

Every supported block format (GGUF Q4_0/Q4_1/Q8_0, edgekit's own group-wise intN) is exactly
`W[n, k] = scales[n, k // B] * codes[n, k] + offsets[n, k // B]` in float32, with unsigned codes.
Keeping one form means one set of ops, one reference kernel and one lowering.

K need not be a multiple of B: the last block of a row is then short (K mod B weights), as in
MatMulNBits, whose block counts are ceil(K / B). A width like SmolLM2's 576 can so take 128-blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgekit.formats.base import BlockFormat, weight_format
from edgekit.formats.packing import pad_to_blocks


@dataclass
class BlockQuantWeight:
    """A [N, K] weight: `codes` uint8 [N, K] (< 2**bits), `scales`/`offsets` float32 [N, ceil(K / block_size)]."""

    codes: np.ndarray
    scales: np.ndarray
    offsets: np.ndarray
    bits: int
    block_size: int
    source_format: str

    def __post_init__(self) -> None:
        n, k = self.codes.shape
        expected = (n, -(-k // self.block_size))
        if self.scales.shape != expected or self.offsets.shape != expected:
            raise ValueError(
                f"scales {self.scales.shape} / offsets {self.offsets.shape} do not match {expected} for codes {(n, k)}"
            )

    ndim = 2

    @property
    def format(self) -> BlockFormat:
        """The registry's entry for `source_format` (edgekit.formats.base)."""
        return weight_format(self.source_format)

    @property
    def shape(self) -> tuple[int, int]:
        return self.codes.shape  # type: ignore[return-value]

    def dequantize(self) -> np.ndarray:
        """The exact float32 weight [N, K]: the product and the sum are each rounded once, in float32."""
        n, k = self.codes.shape
        blocks = pad_to_blocks(self.codes, self.block_size).reshape(n, -1, self.block_size).astype(np.float32)
        w = blocks * self.scales.astype(np.float32)[:, :, None] + self.offsets.astype(np.float32)[:, :, None]
        return np.ascontiguousarray(w.reshape(n, -1)[:, :k])

    def take_rows(self, rows: np.ndarray) -> BlockQuantWeight:
        """Rows reordered (an exact operation: blocks run along K, so a row is self-contained)."""
        return BlockQuantWeight(
            self.codes[rows], self.scales[rows], self.offsets[rows], self.bits, self.block_size, self.source_format
        )

    @staticmethod
    def concat_rows(parts: list[BlockQuantWeight]) -> BlockQuantWeight:
        """Stack weights along N (fused QKV or gate/up projections); all parts must share one format."""
        first = parts[0]
        if any((p.bits, p.block_size, p.shape[1]) != (first.bits, first.block_size, first.shape[1]) for p in parts):
            raise ValueError("cannot fuse weights of different formats or widths")
        return BlockQuantWeight(
            np.concatenate([p.codes for p in parts]),
            np.concatenate([p.scales for p in parts]),
            np.concatenate([p.offsets for p in parts]),
            first.bits,
            first.block_size,
            first.source_format,
        )
