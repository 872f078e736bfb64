"""SMC weight normalisation, effective sample size and systematic resampling, batched over rows.

One row is one SMC run (one request) with N particles and their log weights log_w [N]:
  weights   w = softmax(log_w)                       (dead particles, log_w = -inf, get 0)
  ess       = 1 / Σ w²                               (N for equal weights, 1 for a single one)
  ancestors a_i = first j with cdf_j > (u + i) / N   (systematic: one uniform u per row)
clamped to N − 1 against round-off. A row whose particles are all dead has no information; it
gets uniform weights (ess = N, ancestors = identity) so the caller can carry on or abort.
Normalisation, cdf and positions use fp64, so the ancestors do not hinge on float32 round-off.

What this is not: the decision when to resample (ESS threshold), the reweighting by new log_w
increments, or any other resampling scheme (multinomial, residual). `smc_resample_torch` is the
twin, `smc_resample_triton` the kernel, `smc_resample` the dispatcher.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from temper.triton_kernels._triton import jit, next_pow2, require_launchable, tl, use_triton

MAX_KERNEL_N = 8192  # one row lives in registers; wider rows go to the twin


class Resampled(NamedTuple):
    weights: torch.Tensor  # [R, N] float32, rows sum to 1
    ess: torch.Tensor  # [R] float32
    ancestors: torch.Tensor  # [R, N] int64


def smc_resample_torch(log_w: torch.Tensor, uniforms: torch.Tensor) -> Resampled:
    """log_w [R, N] float32 (may hold -inf), uniforms [R] float32 in [0, 1). Reference twin."""
    lw = log_w.double()
    R, N = lw.shape
    mx = lw.max(dim=1, keepdim=True).values  # [R, 1]
    dead = mx == -torch.inf
    e = torch.exp(lw - torch.where(dead, 0.0, mx))
    e = torch.where(dead, 1.0, e)  # all dead: uniform
    w = e / e.sum(dim=1, keepdim=True)  # [R, N] fp64
    ess = 1.0 / (w * w).sum(dim=1)
    cdf = w.cumsum(dim=1)
    i = torch.arange(N, device=lw.device, dtype=torch.float64)
    pos = (uniforms.double()[:, None] + i[None, :]) / N  # [R, N]
    # right=True: index of the first cdf entry strictly greater than pos
    anc = torch.searchsorted(cdf, pos, right=True).clamp(max=N - 1)
    return Resampled(w.float(), ess.float(), anc)


# ---------------------------------------------------------------------------------------------
# Triton kernel, grid (R,): the whole row [BLOCK_N] sits in registers; ancestors are counted
# for BLOCK_I positions at a time against the full cdf ([BLOCK_I, BLOCK_N] comparisons).
# ---------------------------------------------------------------------------------------------


@jit
def _smc_kernel(
    lw_ptr, lw_stride, u_ptr, w_ptr, ess_ptr, anc_ptr,
    N,
    BLOCK_N: tl.constexpr, BLOCK_I: tl.constexpr,
):
    r = tl.program_id(0)
    j = tl.arange(0, BLOCK_N)  # [BLOCK_N] particle index
    valid = j < N
    lw = tl.load(lw_ptr + r.to(tl.int64) * lw_stride + j, mask=valid, other=-float("inf"))
    lw = lw.to(tl.float64)
    mx = tl.max(lw, 0)
    dead = mx == -float("inf")
    e = tl.exp(lw - tl.where(dead, 0.0, mx))
    e = tl.where(valid, tl.where(dead, 1.0, e), 0.0)
    w = e / tl.sum(e, 0)
    tl.store(w_ptr + r * N + j, w.to(tl.float32), mask=valid)
    tl.store(ess_ptr + r, (1.0 / tl.sum(w * w, 0)).to(tl.float32))

    # padding lanes get cdf = +inf so that they never count as "≤ position"
    cdf = tl.where(valid, tl.cumsum(w, 0), float("inf"))
    u = tl.load(u_ptr + r).to(tl.float64)
    for i0 in range(0, N, BLOCK_I):
        i = i0 + tl.arange(0, BLOCK_I)  # [BLOCK_I] position index
        pos = (u + i.to(tl.float64)) / N
        n_le = tl.sum((cdf[None, :] <= pos[:, None]).to(tl.int64), 1)  # [BLOCK_I]
        tl.store(anc_ptr + r * N + i, tl.minimum(n_le, N - 1), mask=i < N)


def smc_resample_triton(log_w: torch.Tensor, uniforms: torch.Tensor) -> Resampled:
    """The Triton kernel; same arguments and results as `smc_resample_torch` (N ≤ 8192)."""
    require_launchable(log_w, "smc_resample_triton")
    R, N = log_w.shape
    if N > MAX_KERNEL_N:
        raise ValueError(f"smc_resample_triton: N = {N} > {MAX_KERNEL_N}; use the twin")
    dev = log_w.device
    log_w = log_w.float()
    if log_w.stride(-1) != 1:
        log_w = log_w.contiguous()
    weights = torch.empty((R, N), dtype=torch.float32, device=dev)
    ess = torch.empty(R, dtype=torch.float32, device=dev)
    anc = torch.empty((R, N), dtype=torch.int64, device=dev)
    if R == 0 or N == 0:
        return Resampled(weights, ess, anc)
    BLOCK_N = max(2, next_pow2(N))
    BLOCK_I = max(1, min(BLOCK_N, 8192 // BLOCK_N))  # comparison tile ≤ 8192 elements
    _smc_kernel[(R,)](
        log_w, log_w.stride(0), uniforms.to(dev, torch.float32).contiguous(), weights, ess, anc, N,
        BLOCK_N=BLOCK_N, BLOCK_I=BLOCK_I, num_warps=4, enable_fp_fusion=False,
    )
    return Resampled(weights, ess, anc)


def smc_resample(log_w: torch.Tensor, uniforms: torch.Tensor) -> Resampled:
    """Dispatcher: the Triton kernel on CUDA when available (N ≤ 8192), else the torch twin."""
    if use_triton(log_w) and log_w.shape[1] <= MAX_KERNEL_N:
        return smc_resample_triton(log_w, uniforms)
    return smc_resample_torch(log_w, uniforms)
