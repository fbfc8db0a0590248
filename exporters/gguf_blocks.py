"""GGUF block types re-laid into BlockQuantWeight, bit for bit.

One class per GGUF type, registered by name (the shape of gguf-py's quants.py). Each turns the raw
bytes of a tensor, uint8 [N, row_bytes], into unsigned codes and float32 per-block scale and offset
such that scale * code + offset equals `gguf.quants.dequantize` exactly (tests check every tensor).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from edgekit.formats import BlockQuantWeight

GGUF_BLOCK_TYPES: dict[str, type["GGUFBlockType"]] = {}


class GGUFBlockType:
    name: ClassVar[str] = ""
    block_size: ClassVar[int] = 32
    type_size: ClassVar[int] = 0
    bits: ClassVar[int] = 0

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        GGUF_BLOCK_TYPES[cls.name] = cls

    @classmethod
    def to_block_weight(cls, raw: np.ndarray, n_cols: int) -> BlockQuantWeight:
        """raw uint8 [N, n_cols / block_size * type_size] -> BlockQuantWeight [N, n_cols]."""
        n = raw.shape[0]
        if n_cols % cls.block_size:
            raise ValueError(f"row size ({n_cols}) is not a multiple of {cls.name} block size ({cls.block_size})")
        nb = n_cols // cls.block_size
        if raw.shape[1] != nb * cls.type_size:
            raise ValueError(f"{cls.name} row has {raw.shape[1]} bytes, expected {nb * cls.type_size}")
        blocks = raw.reshape(n, nb, cls.type_size)
        codes, scales, offsets = cls.split_blocks(blocks)
        return BlockQuantWeight(codes.reshape(n, n_cols), scales, offsets, cls.bits, cls.block_size, cls.name)

    @classmethod
    def split_blocks(cls, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """blocks uint8 [N, nb, type_size] -> codes uint8 [N, nb, block], scales, offsets float32 [N, nb]."""
        raise NotImplementedError


def _f16(blocks: np.ndarray, start: int) -> np.ndarray:
    return blocks[:, :, start:start + 2].copy().view(np.float16)[:, :, 0].astype(np.float32)


def _nibbles_half_split(qs: np.ndarray) -> np.ndarray:
    """GGUF's 4-bit order: byte j holds element j (low nibble) and element j + 16 (high nibble)."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


class Q4_0(GGUFBlockType):
    """w = d * (q - 8): offset -8d is exact (a power-of-two multiple of a float16)."""

    name = "Q4_0"
    type_size = 18
    bits = 4

    @classmethod
    def split_blocks(cls, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        d = _f16(blocks, 0)
        return _nibbles_half_split(blocks[:, :, 2:]), d, -8.0 * d


class Q4_1(GGUFBlockType):
    """w = d * q + m."""

    name = "Q4_1"
    type_size = 20
    bits = 4

    @classmethod
    def split_blocks(cls, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return _nibbles_half_split(blocks[:, :, 4:]), _f16(blocks, 0), _f16(blocks, 2)


class Q8_0(GGUFBlockType):
    """w = d * q with q int8; stored as code q + 128 and offset -128d (both products exact in float32)."""

    name = "Q8_0"
    type_size = 34
    bits = 8

    @classmethod
    def split_blocks(cls, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        d = _f16(blocks, 0)
        q = blocks[:, :, 2:].view(np.int8).astype(np.int16) + 128
        return q.astype(np.uint8), d, -128.0 * d
