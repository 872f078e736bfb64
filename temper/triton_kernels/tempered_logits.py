"""Tempered proposal logits with their log-normaliser, for engines whose own sampler draws.

`tempered_sample` draws the token itself. An engine that keeps its own sampler (vLLM, through a
logits processor) instead needs the proposal handed over as logits, plus the one number its
sampler cannot report: the log normaliser. Given raw logits ℓ [B, V] and per-row α, top-k, top-p:
  out[b]   = α·log p(·) on the kept set, −inf elsewhere   (softmax(out) = q, the proposal)
  log_z[b] = LSE_kept(α·log p) = LSE_kept(α·ℓ) − α·LSE(ℓ)  (= α·logp − logq = log_w, for any x)
The kept set is `tempered_sample.kept_mask`'s (top-k ties kept, vLLM-style top-p over q), so
both samplers propose the same q and report the same log_w. `exclude` names one column q may
never draw (an unused vocabulary id a caller needs for itself); it still counts in LSE(ℓ), so
log p stays the full-vocabulary raw log-prob, and it is dropped from the kept set like a
truncated token. Greedy rows (α = inf) come back as the raw logits, log_z = 0.

`tempered_logits_torch` is the twin (CPU, and the oracle for the kernel); `tempered_logits_triton`
the kernel (three streaming passes over a row, fp32 online log-sum-exp; top-k by threshold, no
top-p); `tempered_logits` the dispatcher. Not here: drawing the token, penalties, biases.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from temper.triton_kernels._triton import jit, next_pow2, require_launchable, tl, use_triton
from temper.triton_kernels.tempered_sample import Truncation, kept_mask, kth_largest, truncation


class TemperedLogits(NamedTuple):
    logits: torch.Tensor  # [B, V] float32: α·log p on the kept set, −inf elsewhere
    log_z: torch.Tensor  # [B] float32: LSE of each row of `logits` (0 for greedy rows)


def tempered_logits_torch(
    logits: torch.Tensor,
    alpha: torch.Tensor,
    top_k: torch.Tensor | None = None,
    top_p: torch.Tensor | None = None,
    *,
    exclude: int | None = None,
    truncated: Truncation | None = None,
) -> TemperedLogits:
    """logits [B, V]; alpha [B] f32 (inf = greedy); top_k [B] int64 (0 = off); top_p [B] f32
    (1 = off); exclude: a column id or None; truncated: `truncation(top_k, top_p, V)` if known."""
    ell = logits.float()
    alpha = alpha.to(ell.device, torch.float32)
    greedy = torch.isinf(alpha)
    a = torch.where(greedy, torch.ones_like(alpha), alpha)[:, None]  # [B, 1]
    lse = torch.logsumexp(ell, dim=-1, keepdim=True)  # [B, 1], over the full vocabulary
    scaled = a * (ell - lse)  # [B, V] α·log p
    if exclude is not None:
        scaled[:, exclude] = -torch.inf
    mask = kept_mask(scaled, top_k, top_p, truncated)
    if mask is not None:
        scaled = scaled.masked_fill(~mask, -torch.inf)
    log_z = torch.logsumexp(scaled, dim=-1)  # [B]
    out = torch.where(greedy[:, None], ell, scaled)
    return TemperedLogits(out, torch.where(greedy, torch.zeros_like(log_z), log_z))


# ---------------------------------------------------------------------------------------------
# Triton kernel, grid (B,): one program streams its row three times in BLOCK-sized blocks:
#   1. online LSE of ℓ (fp32)                         → lse
#   2. s = α·(ℓ − lse), kept iff s ≥ thresh and not the excluded column; online LSE of kept s
#                                                     → log_z
#   3. write out = kept ? s : −inf (greedy rows: ℓ).
# The top-k threshold is α·(kth − lse) computed with the same fp32 operations as s, so the kept
# set is the twin's (x ↦ fl(α·fl(x − lse)) is monotone and commutes with order statistics).
# ---------------------------------------------------------------------------------------------


@jit
def _tl_kernel(
    logits_ptr, stride_in, out_ptr, stride_out, alpha_ptr, kth_ptr, logz_ptr,
    V, EXCLUDE,
    HAS_KTH: tl.constexpr, HAS_EXCLUDE: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    in_row = logits_ptr + row.to(tl.int64) * stride_in
    out_row = out_ptr + row.to(tl.int64) * stride_out
    alpha = tl.load(alpha_ptr + row)
    greedy = alpha == float("inf")
    a = tl.where(greedy, 1.0, alpha)

    m1 = -float("inf")
    s1 = 0.0
    for off in range(0, V, BLOCK):
        offs = off + tl.arange(0, BLOCK)
        ell = tl.load(in_row + offs, mask=offs < V, other=-float("inf")).to(tl.float32)
        n1 = tl.maximum(m1, tl.max(ell, 0))
        c1 = tl.where(n1 == -float("inf"), 0.0, n1)  # all -inf so far: shift by 0, no inf - inf
        s1 = s1 * tl.exp(m1 - c1) + tl.sum(tl.exp(ell - c1), 0)
        m1 = n1
    lse = tl.where(m1 == -float("inf"), 0.0, m1) + tl.log(s1)
    if HAS_KTH:
        thresh = a * (tl.load(kth_ptr + row) - lse)  # -inf where top-k is off (kth = -inf)
    else:
        thresh = -float("inf")

    m2 = -float("inf")
    s2 = 0.0
    for off in range(0, V, BLOCK):
        offs = off + tl.arange(0, BLOCK)
        valid = offs < V
        ell = tl.load(in_row + offs, mask=valid, other=-float("inf")).to(tl.float32)
        s = a * (ell - lse)
        keep = valid & (s >= thresh)
        if HAS_EXCLUDE:
            keep = keep & (offs != EXCLUDE)
        sk = tl.where(keep, s, -float("inf"))
        n2 = tl.maximum(m2, tl.max(sk, 0))
        c2 = tl.where(n2 == -float("inf"), 0.0, n2)
        s2 = s2 * tl.exp(m2 - c2) + tl.sum(tl.exp(sk - c2), 0)
        m2 = n2
        tl.store(out_row + offs, tl.where(greedy, ell, sk), mask=valid)
    log_z = tl.where(m2 == -float("inf"), 0.0, m2) + tl.log(s2)
    tl.store(logz_ptr + row, tl.where(greedy, 0.0, log_z))


def tempered_logits_triton(
    logits: torch.Tensor,
    alpha: torch.Tensor,
    top_k: torch.Tensor | None = None,
    top_p: torch.Tensor | None = None,
    *,
    exclude: int | None = None,
    truncated: Truncation | None = None,
    block: int | None = None,
) -> TemperedLogits:
    """The kernel; same arguments and results as the twin. top_p must be absent or all ≥ 1."""
    require_launchable(logits, "tempered_logits_triton")
    B, V = logits.shape
    kmax, any_p = truncated or truncation(top_k, top_p, V)
    if any_p:
        raise ValueError("tempered_logits_triton: top_p < 1 is not supported in the kernel")
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    dev = logits.device
    out = torch.empty((B, V), dtype=torch.float32, device=dev)
    log_z = torch.empty(B, dtype=torch.float32, device=dev)
    if B == 0:
        return TemperedLogits(out, log_z)
    alpha = alpha.to(dev, torch.float32).contiguous()
    kth = alpha  # never read unless HAS_KTH
    if kmax > 0:
        src = logits
        if exclude is not None:  # the k-th largest among the drawable columns, as the twin's
            src = logits.clone()
            src[:, exclude] = -torch.inf
        kth = kth_largest(src, top_k.to(dev).clamp(0, V), kmax).float().contiguous()
    BLOCK = block or min(4096, max(16, next_pow2(V)))
    _tl_kernel[(B,)](
        logits, logits.stride(0), out, out.stride(0), alpha, kth, log_z, V,
        -1 if exclude is None else int(exclude),
        HAS_KTH=kmax > 0, HAS_EXCLUDE=exclude is not None, BLOCK=BLOCK,
        num_warps=8 if BLOCK >= 2048 else 4, enable_fp_fusion=False,
    )
    return TemperedLogits(out, log_z)


def tempered_logits(
    logits: torch.Tensor,
    alpha: torch.Tensor,
    top_k: torch.Tensor | None = None,
    top_p: torch.Tensor | None = None,
    *,
    exclude: int | None = None,
) -> TemperedLogits:
    """Dispatcher: the kernel on CUDA when Triton is usable and no row asks for top_p < 1, else
    the twin. One device sync (`truncation`) when top-k or top-p tensors are given."""
    truncated = truncation(top_k, top_p, logits.shape[1])
    if use_triton(logits) and not truncated[1]:
        return tempered_logits_triton(logits, alpha, top_k, exclude=exclude, truncated=truncated)
    return tempered_logits_torch(logits, alpha, top_k, top_p, exclude=exclude, truncated=truncated)
