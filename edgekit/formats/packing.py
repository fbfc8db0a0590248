"""Bit packing of codes into bytes, in the layout of ONNX Runtime's MatMulNBits.

MatMulNBits takes B as uint8 [N, K / block, block * bits / 8] with codes packed low bits first
along K. edgekit's ops store codes in exactly this layout so that lowering to the native kernel
moves no weight bytes.
"""

from __future__ import annotations

import numpy as np

PACKABLE_BITS = (4, 8)


def pack_codes(codes: np.ndarray, bits: int, block_size: int) -> np.ndarray:
    """uint8 codes [N, K] -> packed uint8 [N, K // block_size, block_size * bits // 8]."""
    n, k = codes.shape
    if bits not in PACKABLE_BITS:
        raise ValueError(f"cannot pack {bits}-bit codes (supported: {PACKABLE_BITS})")
    if k % block_size:
        raise ValueError(f"row size ({k}) is not a multiple of the block size ({block_size})")
    if bits == 8:
        return np.ascontiguousarray(codes.reshape(n, k // block_size, block_size).astype(np.uint8))
    pairs = codes.astype(np.uint8).reshape(n, k // 2, 2)
    packed = pairs[:, :, 0] | (pairs[:, :, 1] << 4)
    return np.ascontiguousarray(packed.reshape(n, k // block_size, block_size // 2))


def unpack_codes(packed: np.ndarray, bits: int) -> np.ndarray:
    """Packed uint8 [..., blocks, bytes] -> codes uint8 [..., blocks * block_size] (inverse of pack_codes)."""
    if bits == 8:
        return packed.reshape(*packed.shape[:-2], -1)
    if bits != 4:
        raise ValueError(f"cannot unpack {bits}-bit codes (supported: {PACKABLE_BITS})")
    lo = packed & 0x0F
    hi = packed >> 4
    codes = np.stack([lo, hi], axis=-1)
    return codes.reshape(*packed.shape[:-2], -1)
