"""Batched accept/choose step of power-sampling MCMC: suffix sums of log_w, then MH or i-SIR.

For each chain b with current state x and M proposals x'_1..x'_M that all share x's prefix up to
the resampling cut, the target ratio π(x')q(x|x')/(π(x)q(x'|x)) reduces to
exp(Σ_{j≥cut} log_w'_j − Σ_{j≥cut} log_w_j) (see research/vllm_extension.md §9a), so all that
is needed is the suffix sum of the per-token log_w of every candidate:
  * M = 1, Metropolis-Hastings: choice = 1 iff log u < prop_sum − cur_sum;
  * M > 1, i-SIR: choice ~ Categorical(softmax([cur_sum, prop_sum_1..M])) by inverse CDF on u.
Positions are absolute response positions; positions ≥ a candidate's length are absorbing EOS
padding and contribute 0; a row with cut ≥ len has sum 0. Sums and the decision use fp64.

What this is not: the proposal step, the |x|/|x'| position-choice correction (fold it into the
sums before calling, if the cut is drawn uniformly over lengths), or any engine call.
`mh_accept_torch` is the twin, `mh_accept_triton` the kernel, `mh_accept` the dispatcher.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from temper.triton_kernels._triton import jit, next_pow2, require_launchable, tl, use_triton


class MHChoice(NamedTuple):
    cur_sum: torch.Tensor  # [B] float32
    prop_sum: torch.Tensor  # [B, M] float32
    choice: torch.Tensor  # [B] int64 in 0..M: 0 = keep current, m ≥ 1 = proposal m − 1


def _suffix_sum(log_w: torch.Tensor, cut: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """log_w [..., T], cut and length broadcastable to [...] → fp64 Σ_{cut ≤ j < length} log_w."""
    pos = torch.arange(log_w.shape[-1], device=log_w.device)
    keep = (pos >= cut[..., None]) & (pos < length[..., None])
    return torch.where(keep, log_w.double(), 0.0).sum(-1)  # where, not *: -inf outside is fine


def _choose(cur: torch.Tensor, prop: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """fp64 cur [B], prop [B, M], u [B] → choice [B] int64 (MH for M = 1, i-SIR otherwise)."""
    M = prop.shape[1]
    if M == 1:  # NaN (both sums -inf) compares False: keep the current state
        return (torch.log(u) < prop[:, 0] - cur).long()
    v = torch.cat([cur[:, None], prop], dim=1)  # [B, M+1], current first
    mx = v.max(dim=1).values
    w = torch.exp(v - torch.where(mx == -torch.inf, 0.0, mx)[:, None])
    cdf = w.cumsum(dim=1)
    target = u * cdf[:, -1]
    # first index whose cumulative weight exceeds target = how many are ≤ target
    choice = (cdf <= target[:, None]).sum(dim=1).clamp(max=M)
    return torch.where(mx == -torch.inf, 0, choice)  # nothing finite: keep the current state


def mh_accept_torch(
    cur_log_w: torch.Tensor,
    cur_len: torch.Tensor,
    cut: torch.Tensor,
    prop_log_w: torch.Tensor,
    prop_len: torch.Tensor,
    uniforms: torch.Tensor,
) -> MHChoice:
    """cur_log_w [B, T] f32, cur_len [B] i64, cut [B] i64, prop_log_w [B, M, T] f32,
    prop_len [B, M] i64, uniforms [B] f32 in (0, 1). Reference twin."""
    cut = cut.clamp(min=0)
    cur = _suffix_sum(cur_log_w, cut, cur_len)  # [B]
    prop = _suffix_sum(prop_log_w, cut[:, None], prop_len)  # [B, M]
    choice = _choose(cur, prop, uniforms.double())
    return MHChoice(cur.float(), prop.float(), choice)


# ---------------------------------------------------------------------------------------------
# Triton kernel, grid (B,). The current state and the M proposals of one chain are treated as
# the M+1 rows of one [BLOCK_C, BLOCK_T] tile (row 0 = current, row i = proposal i − 1), so the
# suffix sums land in one fp64 vector v [BLOCK_C] in the order the i-SIR choice wants.
# ---------------------------------------------------------------------------------------------


@jit
def _mh_kernel(
    cur_ptr, cur_stride, cur_len_ptr, cut_ptr, prop_ptr, prop_stride_b, prop_stride_m, prop_len_ptr,
    u_ptr, cur_sum_ptr, prop_sum_ptr, choice_ptr,
    M, T_CUR, T_PROP,
    IS_MH: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr,
):
    b = tl.program_id(0)
    c = tl.arange(0, BLOCK_C)  # [BLOCK_C] candidate: 0 = current, i = proposal i − 1
    is_cur = c == 0
    is_prop = (c >= 1) & (c <= M)
    m = tl.maximum(c - 1, 0)
    cut = tl.maximum(tl.load(cut_ptr + b), 0)
    cur_len = tl.minimum(tl.load(cur_len_ptr + b), T_CUR)
    prop_len = tl.minimum(tl.load(prop_len_ptr + b * M + m, mask=is_prop, other=0), T_PROP)
    length = tl.where(is_cur, cur_len, prop_len)  # [BLOCK_C] int64, 0 for padding candidates
    rows = tl.where(
        is_cur,
        cur_ptr + b.to(tl.int64) * cur_stride,
        prop_ptr + b.to(tl.int64) * prop_stride_b + m.to(tl.int64) * prop_stride_m,
    )  # [BLOCK_C] row base pointers

    v = tl.zeros([BLOCK_C], dtype=tl.float64)
    hi = tl.max(length, 0)  # nothing to read past the longest candidate
    for t0 in range(cut, hi, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)  # [BLOCK_T] absolute positions
        keep = t[None, :] < length[:, None]  # [BLOCK_C, BLOCK_T]
        x = tl.load(rows[:, None] + t[None, :], mask=keep, other=0.0)  # padding reads as 0
        v += tl.sum(x.to(tl.float64), 1)

    cur_sum = tl.sum(tl.where(is_cur, v, 0.0), 0)
    tl.store(cur_sum_ptr + b, cur_sum.to(tl.float32))
    tl.store(prop_sum_ptr + b * M + m, v.to(tl.float32), mask=is_prop)
    u = tl.load(u_ptr + b).to(tl.float64)
    if IS_MH:
        prop_sum = tl.sum(tl.where(c == 1, v, 0.0), 0)
        choice = (tl.log(u) < prop_sum - cur_sum).to(tl.int64)
    else:
        live = is_cur | is_prop
        mx = tl.max(tl.where(live, v, -float("inf")), 0)
        w = tl.where(live, tl.exp(v - tl.where(mx == -float("inf"), 0.0, mx)), 0.0)
        cdf = tl.cumsum(w, 0)  # [BLOCK_C]; padding lanes repeat the total
        target = u * tl.max(cdf, 0)
        n_le = tl.sum((live & (cdf <= target)).to(tl.int64), 0)
        choice = tl.where(mx == -float("inf"), 0, tl.minimum(n_le, M))
    tl.store(choice_ptr + b, choice)


def mh_accept_triton(
    cur_log_w: torch.Tensor,
    cur_len: torch.Tensor,
    cut: torch.Tensor,
    prop_log_w: torch.Tensor,
    prop_len: torch.Tensor,
    uniforms: torch.Tensor,
) -> MHChoice:
    """The Triton kernel; same arguments and results as `mh_accept_torch`."""
    require_launchable(cur_log_w, "mh_accept_triton")
    B, T_cur = cur_log_w.shape
    _, M, T_prop = prop_log_w.shape
    dev = cur_log_w.device
    cur_log_w = cur_log_w.float()
    prop_log_w = prop_log_w.float()
    if cur_log_w.stride(-1) != 1:
        cur_log_w = cur_log_w.contiguous()
    if prop_log_w.stride(-1) != 1:
        prop_log_w = prop_log_w.contiguous()
    cur_sum = torch.empty(B, dtype=torch.float32, device=dev)
    prop_sum = torch.empty((B, M), dtype=torch.float32, device=dev)
    choice = torch.empty(B, dtype=torch.int64, device=dev)
    if B == 0:
        return MHChoice(cur_sum, prop_sum, choice)
    BLOCK_C = max(2, next_pow2(M + 1))
    BLOCK_T = max(16, min(next_pow2(max(T_cur, T_prop, 1)), 4096 // BLOCK_C))  # tile ≤ 4096
    _mh_kernel[(B,)](
        cur_log_w, cur_log_w.stride(0), cur_len.to(dev, torch.int64).contiguous(),
        cut.to(dev, torch.int64).contiguous(),
        prop_log_w, prop_log_w.stride(0), prop_log_w.stride(1), prop_len.to(dev, torch.int64).contiguous(),
        uniforms.to(dev, torch.float32).contiguous(), cur_sum, prop_sum, choice,
        M, T_cur, T_prop,
        IS_MH=M == 1, BLOCK_C=BLOCK_C, BLOCK_T=BLOCK_T, num_warps=4, enable_fp_fusion=False,
    )
    return MHChoice(cur_sum, prop_sum, choice)


def mh_accept(
    cur_log_w: torch.Tensor,
    cur_len: torch.Tensor,
    cut: torch.Tensor,
    prop_log_w: torch.Tensor,
    prop_len: torch.Tensor,
    uniforms: torch.Tensor,
) -> MHChoice:
    """Dispatcher: the Triton kernel on CUDA when available, else the torch twin."""
    if use_triton(cur_log_w, prop_log_w):
        return mh_accept_triton(cur_log_w, cur_len, cut, prop_log_w, prop_len, uniforms)
    return mh_accept_torch(cur_log_w, cur_len, cut, prop_log_w, prop_len, uniforms)
