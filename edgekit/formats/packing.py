"""Bit packing of codes into bytes, in the layout of ONNX Runtime's MatMulNBits.

MatMulNBits takes B as uint8 [N, ceil(K / block), block * bits / 8] with codes packed low bits first
along K, a short last block zero-padded. edgekit's ops store codes in exactly this layout so that lowering to the native kernel
moves no weight bytes (2, 4 and 8 bits).

One rule packs every width: a group of lcm(bits, 8) bits holds `lcm / bits` codes, code i in bits
[i·bits, (i+1)·bits) of a little-endian word of `lcm / 8` bytes. For 2, 4 and 8 bits that word is one
byte (4, 2 or 1 codes per byte, low bits first: MatMulNBits' layout). For 3 bits it is 3 bytes
holding 8 codes: byte 0 = c0 | c1 << 3 | (c2 & 3) << 6, byte 1 = c2 >> 2 | c3 << 1 | c4 << 4 |
(c5 & 1) << 7, byte 2 = c5 >> 1 | c6 << 2 | c7 << 5. MatMulNBits has no 3-bit kernel; 3-bit codes stay
dense on disk; the CPU and CUDA graphs widen them to 4 bits in a subgraph folded at session creation
(edgekit.exporters.lowering).
"""

from __future__ import annotations

import math

import numpy as np

PACKABLE_BITS = (2, 3, 4, 8)


def code_group(bits: int) -> tuple[int, int]:
    """(codes, bytes) of one packing group: (4, 1) for 2 bits, (8, 3) for 3, (2, 1) for 4, (1, 1) for 8."""
    if bits not in PACKABLE_BITS:
        raise ValueError(f"cannot pack {bits}-bit codes (supported: {PACKABLE_BITS})")
    group_bits = math.lcm(bits, 8)
    return group_bits // bits, group_bits // 8


def _word_type(n_bytes: int) -> type[np.unsignedinteger]:
    return np.uint8 if n_bytes == 1 else np.uint32


def pad_to_blocks(codes: np.ndarray, block_size: int) -> np.ndarray:
    """[N, K] -> [N, ceil(K / block_size) * block_size], zeros appended (the codes of a short last block's padding)."""
    pad = -codes.shape[1] % block_size
    return np.pad(codes, ((0, 0), (0, pad))) if pad else codes


def pack_codes(codes: np.ndarray, bits: int, block_size: int) -> np.ndarray:
    """uint8 codes [N, K] (< 2**bits) -> packed uint8 [N, ceil(K / block_size), block_size * bits // 8]."""
    per, n_bytes = code_group(bits)
    codes = pad_to_blocks(codes, block_size)
    n, k = codes.shape
    if block_size % per:
        raise ValueError(f"{bits}-bit codes pack {per} to a group: block size {block_size} is not a multiple of {per}")
    word = _word_type(n_bytes)
    groups = codes.astype(word).reshape(n, k // per, per)
    words = np.bitwise_or.reduce(groups << (bits * np.arange(per, dtype=word)), axis=-1)
    packed = (words[..., None] >> (8 * np.arange(n_bytes, dtype=word))) & word(0xFF)
    return np.ascontiguousarray(packed.astype(np.uint8).reshape(n, k // block_size, block_size * bits // 8))


def unpack_codes(packed: np.ndarray, bits: int) -> np.ndarray:
    """Packed uint8 [..., blocks, bytes] -> codes uint8 [..., blocks * block_size] (inverse of pack_codes; a short
    last block's zero padding included: slice to K)."""
    per, n_bytes = code_group(bits)
    word = _word_type(n_bytes)
    groups = packed.reshape(*packed.shape[:-1], -1, n_bytes).astype(word)
    words = np.bitwise_or.reduce(groups << (8 * np.arange(n_bytes, dtype=word)), axis=-1)
    codes = (words[..., None] >> (bits * np.arange(per, dtype=word))) & word(2**bits - 1)
    return codes.astype(np.uint8).reshape(*packed.shape[:-2], -1)
