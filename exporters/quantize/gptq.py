"""GPTQ (Frantar et al., 2022): quantize a weight column by column, each column's rounding error
pushed onto the columns not yet quantized, weighted by the inverse Hessian of the layer's inputs.

For y = x·Wᵀ and calibration inputs X [T, K], the layer-output error of a quantized W' is
tr((W - W') H (W - W')ᵀ) with H = XᵀX / T. Round-to-nearest minimizes the weight error alone; GPTQ
minimizes this output error greedily, which matters most at 4 bits and below.

This is the reference algorithm with its usual refinements: dampening (H + λ·mean(diag H)·I), lazy
batched updates (columns in blocks of 128; the rest of W is updated once per block, a matmul), and
optional act-order (columns by decreasing H diagonal). Group scales and offsets come from the rtn
grid (rtn.group_params) on the weights as updated so far, computed when the first column of a group
is reached; with act-order the groups must stay contiguous along K (the package's block layout), so
their parameters are fixed up front from the original weights ("static groups"). The model forward
passes that produce H live in sequential.py.
"""

from __future__ import annotations

import numpy as np
import torch
from edgekit.exporters.quantize.rtn import decode, encode, group_params, grouped, on_minimum_grid

from edgekit.formats import BlockQuantWeight, GridFormat

BLOCK_COLUMNS = 128


def inverse_hessian_factor(hessian: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor U of (H + λI)⁻¹ = UᵀU (float32 [K, K]); λ grows until H + λI is positive definite."""
    k = hessian.shape[0]
    mean_diag = float(hessian.diagonal().mean()) or 1.0
    for attempt in range(6):
        h = hessian + (damp * 10**attempt) * mean_diag * torch.eye(k, dtype=hessian.dtype)
        lower, info = torch.linalg.cholesky_ex(h)
        if int(info) == 0:
            return torch.linalg.cholesky(torch.cholesky_inverse(lower), upper=True).float()
    raise np.linalg.LinAlgError("Hessian is not positive definite even with strong dampening")


def gptq_quantize(w: np.ndarray, hessian: np.ndarray, fmt: GridFormat, act_order: bool = False,
                  damp: float = 0.01) -> BlockQuantWeight:
    """float32 W [N, K] and H [K, K] (XᵀX / T of the layer's inputs) -> BlockQuantWeight in `fmt`.

    The linear algebra runs in torch (MKL): numpy's OpenBLAS threads and torch's in one process fight for
    the cores (measured: a 1536² Cholesky from 0.1 s to 3 s). Per-column rounding uses the rtn grid in numpy
    on views of the same memory. One torch thread: the column loop is thousands of small ops, and a thread
    barrier per op on busy cores cost 20-50x (576x1536: 0.55 s on one thread, 10-28 s on two, measured on a
    loaded 2-core machine)."""
    kept = on_minimum_grid(w, fmt)
    if kept is not None:  # already on the grid: nothing left for error feedback to improve
        return kept
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _gptq(w, hessian, fmt, act_order, damp)
    finally:
        torch.set_num_threads(previous)


def _gptq(w: np.ndarray, hessian: np.ndarray, fmt: GridFormat, act_order: bool, damp: float) -> BlockQuantWeight:
    n, k = w.shape
    g = fmt.group_size
    block = max(BLOCK_COLUMNS // g, 1) * g  # whole groups per block: a group's columns are all up to date
    h = torch.from_numpy(np.array(hessian, np.float64))
    work = torch.from_numpy(np.array(w, np.float32))
    dead = h.diagonal() == 0  # inputs that are always 0: their weights cannot matter
    h[dead, dead] = 1.0
    work[:, dead] = 0.0
    scales = np.zeros((n, -(-k // g)), np.float32)
    offsets = np.zeros_like(scales)
    if act_order:
        perm = torch.argsort(h.diagonal(), descending=True, stable=True)
        scales[:], offsets[:] = group_params(grouped(work.numpy(), g), fmt)
    else:
        perm = torch.arange(k)
    h = h[perm][:, perm]
    u = inverse_hessian_factor(h, damp)
    work = work[:, perm].contiguous()
    order = perm.numpy()
    codes = np.zeros((n, k), np.uint8)
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        cols = work[:, i1:i2].clone()
        errors = torch.zeros_like(cols)
        cols_np = cols.numpy()
        for j in range(i2 - i1):
            col = order[i1 + j]
            grp = col // g
            if not act_order and col % g == 0:
                scales[:, grp], offsets[:, grp] = group_params(cols_np[:, j:j + g], fmt)
            q = encode(cols_np[:, j], scales[:, grp], offsets[:, grp], fmt.bits)
            codes[:, col] = q
            err = (cols[:, j] - torch.from_numpy(decode(q, scales[:, grp], offsets[:, grp]))) / u[i1 + j, i1 + j]
            cols[:, j + 1:] -= err[:, None] * u[i1 + j, i1 + j + 1:i2][None, :]
            errors[:, j] = err
        work[:, i2:] -= errors @ u[i1:i2, i2:]
    return BlockQuantWeight(codes, scales, offsets, fmt.bits, g, fmt.name)


def output_error(w: np.ndarray, quantized: BlockQuantWeight, hessian: np.ndarray) -> float:
    """Mean squared layer-output error per input row: tr((W - W') H (W - W')ᵀ) / N, for H = XᵀX / T."""
    d = (w - quantized.dequantize()).astype(np.float64)
    return float(np.einsum("nk,kl,nl->", d, hessian, d) / w.shape[0])
