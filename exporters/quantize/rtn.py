"""Round-to-nearest group-wise quantization, and the grid every method shares.

A group of `group_size` weights along K gets one scale s and one offset o, and each weight becomes the
code q = clip(rint((w - o) / s), 0, 2^bits - 1), so that w ≈ s·q + o (BlockQuantWeight's form).
Scales and offsets are rounded to float16 before the codes are chosen, so the package stores them in
2 bytes (graph_builder keeps float16 when it is exact) and the codes fit the stored values.
"""

from __future__ import annotations

import numpy as np

from edgekit.formats import BlockQuantWeight, GridFormat


def to_half_grid(x: np.ndarray) -> np.ndarray:
    """float32 values rounded to float16 where float16 holds them (not overflowing, not flushed to 0)."""
    with np.errstate(over="ignore"):
        h = x.astype(np.float16).astype(np.float32)
    return np.where(np.isfinite(h) & ((h != 0) | (x == 0)), h, x).astype(np.float32)


def round_to_bits(x: np.ndarray, significant: int | np.ndarray, up: bool = False) -> np.ndarray:
    """x rounded to `significant` significant bits (elementwise when an array): to nearest, or with `up` (for
    x > 0) upwards, for a scale that still spans its group's range."""
    mantissa, exponent = np.frexp(x.astype(np.float64))
    steps = 2.0 ** np.asarray(significant, np.float64)
    return np.ldexp((np.ceil if up else np.rint)(mantissa * steps) / steps, exponent).astype(np.float32)


def significant_bits(z: np.ndarray) -> np.ndarray:
    """Significant bits of integers |z| (0 for 0): 12 -> 2 (0b1100), 15 -> 4, 8 -> 1."""
    z = np.abs(z).astype(np.int64)
    odd = z // np.maximum(z & -z, 1)  # trailing zeros dropped
    return np.where(z > 0, np.floor(np.log2(np.maximum(odd, 1))) + 1, 0).astype(np.int64)


def group_params(groups: np.ndarray, fmt: GridFormat, zero_point: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """float32 groups [..., G] -> (scales, offsets) float32 [...].

    Asymmetric, 2-4 bits: the codes span [min(w, 0), max(w, 0)] and the offset is an integer zero point,
    o = -z·s, so that 0 is on the grid. On SmolLM2-135M, int4 g128 RTN of every projection: perplexity
    21.04 with an integer zero point vs 23.94 with a free float16 minimum (fp32 15.42; 20k characters of
    the evaluation text), though the free minimum has the lower weight error. The scale is rounded up to
    11 - bits significant bits so that z·s is exact in float16: the package stores it in 2 bytes and the
    runtime passes z to MatMulNBits as its native zero point (no extra offset term, measured faster).
    Asymmetric, 8 bits, or `zero_point=False`: offset = the group minimum (float16), scale = range / maxq
    (the grid of GGUF's Q4_1, which `quantize_rtn` keeps for weights already on it).
    Symmetric (llama.cpp's Q4_0 rule): the weight of largest magnitude maps exactly to code 0,
    s = w_max / -2^(bits-1) (so s may be negative), and the offset is the zero point's -2^(bits-1)·s.

    No clipping: choosing each group's range by least squared weight error (13 shrink factors down to
    0.7) made SmolLM2-135M worse (perplexity 24.6 vs 22.1 at int4g64, RTN; 19.4 vs 18.4 with GPTQ): the
    extreme weights it clips, in the output layer above all, matter more than their share of the error.
    """
    maxq = 2**fmt.bits - 1
    if fmt.symmetric:
        half = 2 ** (fmt.bits - 1)
        idx = np.abs(groups).argmax(axis=-1)[..., None]
        extreme = np.take_along_axis(groups, idx, axis=-1)[..., 0]
        scales = to_half_grid(extreme / -half)
        return scales, (-half * scales).astype(np.float32)
    if fmt.bits == 8 or not zero_point:
        offsets = to_half_grid(groups.min(axis=-1))
        scales = to_half_grid((groups.max(axis=-1) - offsets) / maxq)
        return scales, offsets
    lo, hi = np.minimum(groups.min(axis=-1), 0), np.maximum(groups.max(axis=-1), 0)
    span = np.where(hi > lo, hi - lo, 1.0)
    scales = to_half_grid(round_to_bits(span / maxq, 11 - fmt.bits, up=True))
    zero_points = np.clip(np.rint(-lo / scales), 0, maxq)
    return scales, (-zero_points * scales).astype(np.float32)


def encode(w: np.ndarray, scales: np.ndarray, offsets: np.ndarray, bits: int) -> np.ndarray:
    """Codes uint8 for weights w with broadcastable scales/offsets (0 where a scale is 0)."""
    q = np.divide(w - offsets, scales, out=np.zeros(np.broadcast_shapes(w.shape, scales.shape), np.float32),
                  where=scales != 0)
    return np.clip(np.rint(q), 0, 2**bits - 1).astype(np.uint8)


def decode(codes: np.ndarray, scales: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """float32 s·q + o, rounded as BlockQuantWeight.dequantize rounds it."""
    return (codes.astype(np.float32) * scales.astype(np.float32) + offsets.astype(np.float32)).astype(np.float32)


def grouped(w: np.ndarray, group_size: int) -> np.ndarray:
    """float32 [N, K] -> [N, ceil(K / G), G]. A short last group is padded with copies of its last weight, which
    change neither its minimum, maximum nor largest magnitude, so group_params sees only real weights."""
    pad = -w.shape[1] % group_size
    padded = np.pad(w.astype(np.float32), ((0, 0), (0, pad)), mode="edge") if pad else w.astype(np.float32)
    return padded.reshape(w.shape[0], -1, group_size)


def _rtn(w: np.ndarray, fmt: GridFormat, zero_point: bool) -> BlockQuantWeight:
    n, k = w.shape
    groups = grouped(w, fmt.group_size)
    scales, offsets = group_params(groups, fmt, zero_point)
    codes = encode(groups, scales[..., None], offsets[..., None], fmt.bits).reshape(n, -1)[:, :k]
    return BlockQuantWeight(np.ascontiguousarray(codes), scales, offsets, fmt.bits, fmt.group_size, fmt.name)


def on_minimum_grid(w: np.ndarray, fmt: GridFormat) -> BlockQuantWeight | None:
    """The weight quantized with free group minimums when that (nearly) reproduces it, else None.

    Weights that already lie on such a grid (SmolLM2's Q4_1 at int4 g32) are then kept losslessly: their
    squared error is under 1% of the integer-zero-point grid's (measured: perplexity 14.19 = fp32 vs 17.46)."""
    if fmt.symmetric or fmt.bits == 8:
        return None
    free = _rtn(w, fmt, zero_point=False)
    free_err = float(np.square(free.dequantize() - w).sum())
    zero_err = float(np.square(_rtn(w, fmt, zero_point=True).dequantize() - w).sum())
    return free if free_err <= 0.01 * zero_err else None


def quantize_rtn(w: np.ndarray, fmt: GridFormat) -> BlockQuantWeight:
    """float32 [N, K] -> BlockQuantWeight with `fmt`'s bits and group size (a short last group where G ∤ K)."""
    return on_minimum_grid(w, fmt) or _rtn(w.astype(np.float32), fmt, zero_point=True)


def rescale_groups(q: BlockQuantWeight, factors: np.ndarray) -> BlockQuantWeight:
    """The same codes with each group's scale and offset multiplied by `factors` [N, groups], rounded back onto
    the grid the package stores: float16, and where every offset is an integer zero point (o = -z·s), scales
    with few enough significant bits that z·s stays exact in float16 (so z stays that integer)."""
    z = -q.offsets / np.where(q.scales != 0, q.scales, 1)
    scales = (q.scales * factors).astype(np.float32)
    if np.array_equal(z, np.rint(z)):
        scales = to_half_grid(round_to_bits(scales, 11 - significant_bits(z)))
        offsets = (-z * scales).astype(np.float32)
    else:
        scales, offsets = to_half_grid(scales), to_half_grid(q.offsets * factors)
    return BlockQuantWeight(q.codes, scales, offsets, q.bits, q.block_size, q.source_format)
