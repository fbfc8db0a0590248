"""GGUF block types as members of the format registry, re-laid into BlockQuantWeight bit for bit.

One class per GGUF type, registered by name (the shape of gguf-py's quants.py). Each turns the raw
bytes of a tensor, uint8 [N, row_bytes], into unsigned codes and float32 per-sub-block scale and
offset such that scale * code + offset equals `gguf.quants.dequantize` exactly (tests check every
type). Scales and offsets are the very float32 values gguf-py computes (e.g. `d * sc` of a K-quant),
so the one rounding left, of the final sum, is the one gguf-py does too. docs/ops.md says why each
mapping is exact.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from edgekit.formats.base import FORMATS, BlockFormat
from edgekit.formats.block_weight import BlockQuantWeight

QK_K = 256  # elements in a K-quant super-block


class GGUFBlockType(BlockFormat):
    """A GGUF block codec: `super_block` elements in `type_size` bytes, one scale/offset per `block_size`.

    Defining a subclass registers it in the format registry under its GGUF type name."""

    super_block: ClassVar[int] = 32
    type_size: ClassVar[int] = 0
    block_size = 32

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        FORMATS[cls.name] = cls()

    @classmethod
    def to_block_weight(cls, raw: np.ndarray, n_cols: int) -> BlockQuantWeight:
        """raw uint8 [N, n_cols / super_block * type_size] -> BlockQuantWeight [N, n_cols]."""
        n = raw.shape[0]
        if n_cols % cls.super_block:
            raise ValueError(f"row size ({n_cols}) is not a multiple of {cls.name} block size ({cls.super_block})")
        nb = n_cols // cls.super_block
        if raw.shape[1] != nb * cls.type_size:
            raise ValueError(f"{cls.name} row has {raw.shape[1]} bytes, expected {nb * cls.type_size}")
        codes, scales, offsets = cls.split_blocks(raw.reshape(n, nb, cls.type_size))
        return BlockQuantWeight(codes.reshape(n, n_cols), scales.reshape(n, -1), offsets.reshape(n, -1), cls.bits,
                                cls.block_size, cls.name)

    @classmethod
    def split_blocks(cls, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """blocks uint8 [N, nb, type_size] -> codes uint8 [N, nb, super_block] and float32 scales, offsets
        [N, nb, super_block // block_size]."""
        raise NotImplementedError


# -- byte-level helpers shared by the types ------------------------------------------------------------
def _split_bytes(blocks: np.ndarray, *sizes: int) -> list[np.ndarray]:
    """Cut [..., type_size] into consecutive fields of the given byte sizes (the C struct's members)."""
    return np.split(blocks, np.cumsum(sizes)[:-1], axis=-1)


def _f16(field: np.ndarray) -> np.ndarray:
    """A 2-byte float16 field [..., 2] -> float32 [..., 1] (exact: float32 holds every float16)."""
    return field.copy().view(np.float16).astype(np.float32)


def _bit_fields(packed: np.ndarray, width: int) -> np.ndarray:
    """Split bytes [..., n] into width-bit fields, [..., n * 8 / width]; field f of byte j is element f * n + j.

    This is GGUF's layout throughout: low bits first, each bit position a run of n consecutive elements
    (Q4_0's nibbles, K-quants' 2-bit crumbs and their high-bit masks)."""
    shifts = np.arange(0, 8, width, dtype=np.uint8)[:, None]
    fields = (packed[..., None, :] >> shifts) & np.uint8((1 << width) - 1)
    return fields.reshape(*packed.shape[:-1], -1)


def _chunked_bit_fields(packed: np.ndarray, chunk: int, width: int) -> np.ndarray:
    """_bit_fields over consecutive chunks of `chunk` bytes: K-quants pack one run of elements per chunk."""
    lead = packed.shape[:-1]
    return _bit_fields(packed.reshape(*lead, -1, chunk), width).reshape(*lead, -1)


def _sub_scales(d: np.ndarray, small_ints: np.ndarray) -> np.ndarray:
    """float16 super-scale [..., 1] times integer sub-scales [..., S] -> float32 [..., S], as gguf-py does.

    The product of a float16 and an integer below 2^8 needs at most 19 significant bits: exact in float32."""
    return d * small_ints.astype(np.float32)


# -- 32-element types ----------------------------------------------------------------------------------
class Q4_0(GGUFBlockType):
    """w = d * (q - 8): offset -8d is exact (a power-of-two multiple of a float16)."""

    name = "Q4_0"
    type_size = 18
    bits = 4
    zero_point = 8

    @classmethod
    def split_blocks(cls, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        d, qs = _split_bytes(blocks, 2, 16)
        d = _f16(d)
        return _bit_fields(qs, 4), d, -8.0 * d


class Q4_1(GGUFBlockType):
    """w = d * q + m."""

    name = "Q4_1"
    type_size = 20
    bits = 4

    @classmethod
    def split_blocks(cls, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        d, m, qs = _split_bytes(blocks, 2, 2, 16)
        return _bit_fields(qs, 4), _f16(d), _f16(m)


def _five_bit_codes(qh: np.ndarray, qs: np.ndarray) -> np.ndarray:
    """Q5_0/Q5_1 codes: low nibbles as in Q4_0, bit 4 of element i is bit i of the little-endian uint32 qh."""
    high = np.unpackbits(qh, axis=-1, bitorder="little")
    return _bit_fields(qs, 4) | (high << np.uint8(4))


class Q5_0(GGUFBlockType):
    """w = d * (q - 16), q 5-bit: stored as 8-bit codes (no 5-bit kernel) with offset -16d, exact like Q4_0."""

    name = "Q5_0"
    type_size = 22
    bits = 8
    zero_point = 16

    @classmethod
    def split_blocks(cls, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        d, qh, qs = _split_bytes(blocks, 2, 4, 16)
        d = _f16(d)
        return _five_bit_codes(qh, qs), d, -16.0 * d


class Q5_1(GGUFBlockType):
    """w = d * q + m, q 5-bit: stored as 8-bit codes; the same arithmetic as Q4_1."""

    name = "Q5_1"
    type_size = 24
    bits = 8

    @classmethod
    def split_blocks(cls, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        d, m, qh, qs = _split_bytes(blocks, 2, 2, 4, 16)
        return _five_bit_codes(qh, qs), _f16(d), _f16(m)


class Q8_0(GGUFBlockType):
    """w = d * q with q int8; stored as code q + 128 and offset -128d (both products exact in float32)."""

    name = "Q8_0"
    type_size = 34
    bits = 8
    zero_point = 128

    @classmethod
    def split_blocks(cls, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        d, qs = _split_bytes(blocks, 2, 32)
        d = _f16(d)
        q = qs.view(np.int8).astype(np.int16) + 128
        return q.astype(np.uint8), d, -128.0 * d


# -- K-quants: 256-element super-blocks of 16 or 32-element sub-blocks ---------------------------------
class Q2_K(GGUFBlockType):
    """w = (d * sc) * q - (dmin * m) per 16 elements, q 2-bit, sc/m 4-bit: scale d*sc, offset -(dmin*m)."""

    name = "Q2_K"
    super_block = QK_K
    block_size = 16
    type_size = 84
    bits = 4
    scale_dtype = offset_dtype = np.float32  # d * sc and dmin * m

    @classmethod
    def split_blocks(cls, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        sc_m, qs, d, dmin = _split_bytes(blocks, 16, 64, 2, 2)
        codes = _chunked_bit_fields(qs, 32, 2)
        return codes, _sub_scales(_f16(d), sc_m & 0x0F), -_sub_scales(_f16(dmin), sc_m >> 4)


class Q3_K(GGUFBlockType):
    """w = (d * sc) * q per 16 elements, q in [-4, 3], sc 6-bit signed: code q + 4, offset -4 * (d*sc)."""

    name = "Q3_K"
    super_block = QK_K
    block_size = 16
    type_size = 110
    bits = 4
    zero_point = 4
    scale_dtype = np.float32  # d * sc: up to 17 significant bits

    @classmethod
    def split_blocks(cls, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        hmask, qs, packed_scales, d = _split_bytes(blocks, 32, 64, 12, 2)
        # gguf: q = low - 4 * (1 - hbit), so q + 4 = low | hbit << 2.
        codes = _chunked_bit_fields(qs, 32, 2) | (_bit_fields(hmask, 1) << np.uint8(2))
        low, high = _bit_fields(packed_scales[..., :8], 4), _bit_fields(packed_scales[..., 8:], 2)
        sc = (low | (high << np.uint8(4))).astype(np.int8) - np.int8(32)
        scale = _sub_scales(_f16(d), sc)
        return codes, scale, -4.0 * scale


def _k_scales_mins(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K's 12 bytes -> 6-bit scales and mins [..., 8] (gguf-py's Q4_K.get_scale_min)."""
    d, m, m_d = _split_bytes(packed, 4, 4, 4)
    sc = np.concatenate([d & 0x3F, (m_d & 0x0F) | ((d >> 2) & 0x30)], axis=-1)
    mins = np.concatenate([m & 0x3F, (m_d >> 4) | ((m >> 2) & 0x30)], axis=-1)
    return sc, mins


def _k_scale_offset(d: np.ndarray, dmin: np.ndarray, packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K: scale d * sc and offset -(dmin * m) per 32 elements; gguf-py computes d*sc*q - dmin*m."""
    sc, mins = _k_scales_mins(packed)
    return _sub_scales(_f16(d), sc), -_sub_scales(_f16(dmin), mins)


class Q4_K(GGUFBlockType):
    """w = (d * sc) * q - (dmin * m) per 32 elements, q 4-bit, sc/m 6-bit."""

    name = "Q4_K"
    super_block = QK_K
    type_size = 144
    bits = 4
    scale_dtype = offset_dtype = np.float32  # d * sc and dmin * m

    @classmethod
    def split_blocks(cls, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        d, dmin, packed_scales, qs = _split_bytes(blocks, 2, 2, 12, 128)
        return _chunked_bit_fields(qs, 32, 4), *_k_scale_offset(d, dmin, packed_scales)


class Q5_K(GGUFBlockType):
    """Q4_K with a fifth code bit from qh: 5-bit codes stored as 8-bit."""

    name = "Q5_K"
    super_block = QK_K
    type_size = 176
    bits = 8
    scale_dtype = offset_dtype = np.float32  # d * sc and dmin * m

    @classmethod
    def split_blocks(cls, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        d, dmin, packed_scales, qh, qs = _split_bytes(blocks, 2, 2, 12, 32, 128)
        codes = _chunked_bit_fields(qs, 32, 4) | (_bit_fields(qh, 1) << np.uint8(4))
        return codes, *_k_scale_offset(d, dmin, packed_scales)


class Q6_K(GGUFBlockType):
    """w = (d * sc) * (q - 32) per 16 elements, q 6-bit, sc int8: 8-bit code q, offset -32 * (d*sc)."""

    name = "Q6_K"
    super_block = QK_K
    block_size = 16
    type_size = 210
    bits = 8
    zero_point = 32
    scale_dtype = np.float32  # d * sc

    @classmethod
    def split_blocks(cls, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ql, qh, sc, d = _split_bytes(blocks, 128, 64, 16, 2)
        codes = _chunked_bit_fields(ql, 64, 4) | (_chunked_bit_fields(qh, 32, 2) << np.uint8(4))
        scale = _sub_scales(_f16(d), sc.view(np.int8))
        return codes, scale, -32.0 * scale


# The GGUF members of the registry, by GGUF type name (what a GGUF file's tensor table names).
GGUF_TYPES: dict[str, GGUFBlockType] = {n: f for n, f in FORMATS.items() if isinstance(f, GGUFBlockType)}
