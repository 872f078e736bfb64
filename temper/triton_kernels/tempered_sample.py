"""Tempered sampling with log-normalisers: the sampler every engine calls once per decode step.

Given raw logits ℓ [B, V] and per-row α, draw x ~ q ∝ softmax(α·ℓ) (restricted to the top-k /
top-p kept set when asked) by Gumbel-max with counter-based noise, and return, from the same
fp32 logits:
  logp  = ℓ[x] − LSE(ℓ)                 raw log-prob, full vocabulary
  logq  = α·ℓ[x] − LSE_kept(α·ℓ)        log-prob under the distribution sampled
  log_w = LSE_kept(α·ℓ) − α·LSE(ℓ)      = α·logp − logq (the log normaliser of p^α)
Greedy rows (α = inf) take argmax ℓ and report logq = log_w = 0.

`tempered_sample_torch` is the reference twin (CPU, and the oracle for the Triton kernel);
`tempered_sample_triton` is the kernel (one read of the logits, fp32 online log-sum-exp, the
Gumbel noise regenerated in-kernel from `rng.py`'s counter hash); `tempered_sample` is the
dispatcher engines call. Not here: top-p inside the kernel (the dispatcher falls back to the twin
when a row asks for top_p < 1), penalties, logit biases.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from temper.triton_kernels._triton import jit, next_pow2, require_launchable, tl, use_triton
from temper.triton_kernels.rng import gumbel, row_key_tl, uniform_tl


class TemperedSample(NamedTuple):
    token: torch.Tensor  # [B] int64
    logp: torch.Tensor  # [B] float32
    logq: torch.Tensor  # [B] float32
    log_w: torch.Tensor  # [B] float32


Truncation = tuple[int, bool]  # (largest top-k in use, 0 = none; any row with top_p < 1)


def truncation(top_k: torch.Tensor | None, top_p: torch.Tensor | None, V: int) -> Truncation:
    """What the host must know about top_k / top_p before sampling (topk's width, kernel or
    twin), read back in ONE transfer: engines build these tensors on the logits' device every
    decode step, and every read back is a device sync."""
    if top_k is None and top_p is None:
        return 0, False
    dev = (top_k if top_k is not None else top_p).device
    zero = torch.zeros((), dtype=torch.float64, device=dev)
    kmax = top_k.clamp(0, V).amax().double() if top_k is not None and top_k.numel() else zero
    any_p = (top_p.to(dev) < 1).any().double() if top_p is not None and top_p.numel() else zero
    kmax, any_p = torch.stack([kmax, any_p]).tolist()
    return int(kmax), any_p > 0


def kth_largest(x: torch.Tensor, k: torch.Tensor, kmax: int) -> torch.Tensor:
    """[B] the k[b]-th largest entry of each row of x [B, V], in x's dtype; -inf where k = 0.
    k [B] in 0..V; kmax = max(k) ≥ 1 (from `truncation`, so no sync here)."""
    kth = torch.topk(x, kmax, dim=-1).values  # [B, kmax]
    t = kth.gather(1, (k.clamp(min=1) - 1)[:, None])[:, 0]
    return torch.where(k > 0, t, torch.full_like(t, -torch.inf))


def kept_mask(scaled: torch.Tensor, top_k: torch.Tensor | None, top_p: torch.Tensor | None,
              truncated: Truncation | None = None) -> torch.Tensor | None:
    """Boolean [B, V] mask of the tokens q may draw, or None when nothing is truncated.

    top-k keeps every token at least as large as the k-th largest (ties kept); top-p keeps
    the smallest prefix of the sorted q whose mass reaches p (at least one token), vLLM-style.
    `truncated`: `truncation(top_k, top_p, V)` if the caller has read it already."""
    V = scaled.shape[1]
    kmax, any_p = truncated or truncation(top_k, top_p, V)
    mask = None
    if kmax > 0:
        mask = scaled >= kth_largest(scaled, top_k.clamp(0, V), kmax)[:, None]
    if any_p:
        s = scaled if mask is None else scaled.masked_fill(~mask, -torch.inf)
        probs = torch.softmax(s, dim=-1)
        sp, order = probs.sort(dim=-1, descending=True)
        before = sp.cumsum(-1) - sp  # mass strictly before each sorted token
        keep_sorted = before < top_p[:, None]
        keep_sorted[:, 0] = True
        pmask = torch.zeros_like(keep_sorted).scatter(1, order, keep_sorted)
        pmask = pmask | (top_p[:, None] >= 1)
        mask = pmask if mask is None else (mask & pmask)
    return mask


def tempered_sample_torch(
    logits: torch.Tensor,
    alpha: torch.Tensor,
    seed: torch.Tensor,
    offset: torch.Tensor,
    top_k: torch.Tensor | None = None,
    top_p: torch.Tensor | None = None,
    *,
    truncated: Truncation | None = None,
) -> TemperedSample:
    """logits [B, V] (fp32/bf16/fp16); alpha [B] f32 (inf = greedy); seed, offset [B] int64;
    top_k [B] int64 (0 = off); top_p [B] f32 (1 = off); truncated as in `kept_mask`."""
    ell = logits.float()
    B, V = ell.shape
    alpha = alpha.to(ell.device, torch.float32)
    greedy = torch.isinf(alpha)
    a = torch.where(greedy, torch.ones_like(alpha), alpha)[:, None]  # [B, 1]
    lse = torch.logsumexp(ell, dim=-1)  # [B]
    scaled = a * ell  # [B, V]
    mask = kept_mask(scaled, top_k, top_p, truncated)
    if mask is not None:
        scaled = scaled.masked_fill(~mask, -torch.inf)
    lse_q = torch.logsumexp(scaled, dim=-1)  # [B]
    noisy = scaled + gumbel(seed.to(ell.device), offset.to(ell.device), V)
    token = torch.where(greedy, ell.argmax(-1), noisy.argmax(-1))
    logp = ell.gather(1, token[:, None])[:, 0] - lse
    logq = scaled.gather(1, token[:, None])[:, 0] - lse_q
    log_w = lse_q - a[:, 0] * lse
    zero = torch.zeros_like(logq)
    return TemperedSample(token, logp, torch.where(greedy, zero, logq), torch.where(greedy, zero, log_w))


# ---------------------------------------------------------------------------------------------
# Triton kernel. Two launches:
#   _ts_partial_kernel, grid (B, S): program (row, split) streams its contiguous vocab chunk once
#     in BLOCK-sized blocks and keeps, in fp32 registers, the online LSE of ℓ (m1, s1), the online
#     LSE of the kept α·ℓ (m2, s2) and the running Gumbel argmax (best, best_idx). S > 1 splits a
#     row over several programs so that small batches still fill the GPU.
#   _ts_combine_kernel, grid (B,): merges the S partials of a row and writes the four outputs.
# The noise comes from rng.py's device functions, the same counter hash as the twin's, so the
# uniforms are bit-identical.
# ---------------------------------------------------------------------------------------------


@jit
def _ts_partial_kernel(
    logits_ptr, stride_b, alpha_ptr, seed_ptr, offset_ptr, thresh_ptr, ws_ptr, idx_ptr,
    B, V, CHUNK,
    HAS_THRESH: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    split = tl.program_id(1)
    S = tl.num_programs(1)
    row_ptr = logits_ptr + row.to(tl.int64) * stride_b
    alpha = tl.load(alpha_ptr + row)
    greedy = alpha == float("inf")
    a = tl.where(greedy, 1.0, alpha)  # greedy rows: lse_q is computed with α = 1, like the twin
    key = row_key_tl(tl.load(seed_ptr + row), tl.load(offset_ptr + row))  # uint32
    if HAS_THRESH:
        thresh = tl.load(thresh_ptr + row)  # α·(k-th largest ℓ), -inf when top-k is off
    else:
        thresh = -float("inf")
    start = split * CHUNK
    end = tl.minimum(start + CHUNK, V)
    m1 = -float("inf")
    s1 = 0.0
    m2 = -float("inf")
    s2 = 0.0
    best = -float("inf")
    best_idx = start
    for off in range(start, end, BLOCK):
        offs = off + tl.arange(0, BLOCK)  # [BLOCK] vocabulary indices
        valid = offs < end
        ell = tl.load(row_ptr + offs, mask=valid, other=-float("inf")).to(tl.float32)
        scaled = a * ell
        sk = tl.where(valid & (scaled >= thresh), scaled, -float("inf"))  # kept α·ℓ

        # online LSE; an all -inf prefix keeps m = -inf, so shift by 0 instead (no inf - inf)
        n1 = tl.maximum(m1, tl.max(ell, 0))
        c1 = tl.where(n1 == -float("inf"), 0.0, n1)
        s1 = s1 * tl.exp(m1 - c1) + tl.sum(tl.exp(ell - c1), 0)
        m1 = n1
        n2 = tl.maximum(m2, tl.max(sk, 0))
        c2 = tl.where(n2 == -float("inf"), 0.0, n2)
        s2 = s2 * tl.exp(m2 - c2) + tl.sum(tl.exp(sk - c2), 0)
        m2 = n2

        u = uniform_tl(key, offs)  # = rng.uniform(seed, offset, V)[offs], bit for bit
        noisy = tl.where(greedy, ell, sk - tl.log(-tl.log(u)))

        # running argmax; ties go to the lowest index (tl.argmax within, strict > across blocks)
        bmax = tl.max(noisy, 0)
        barg = tl.argmax(noisy, 0)
        take = bmax > best
        best_idx = tl.where(take, off + barg, best_idx)
        best = tl.where(take, bmax, best)

    slot = row * S + split
    plane = B * S  # ws is [5, B, S] float32
    tl.store(ws_ptr + slot, m1)
    tl.store(ws_ptr + plane + slot, s1)
    tl.store(ws_ptr + 2 * plane + slot, m2)
    tl.store(ws_ptr + 3 * plane + slot, s2)
    tl.store(ws_ptr + 4 * plane + slot, best)
    tl.store(idx_ptr + slot, best_idx)


@jit
def _ts_combine_kernel(
    logits_ptr, stride_b, alpha_ptr, ws_ptr, idx_ptr,
    token_ptr, logp_ptr, logq_ptr, logw_ptr,
    B, S,
    BLOCK_S: tl.constexpr,
):
    row = tl.program_id(0)
    j = tl.arange(0, BLOCK_S)  # [BLOCK_S] split index
    valid = j < S
    slot = row * S + j
    plane = B * S
    m1 = tl.load(ws_ptr + slot, mask=valid, other=-float("inf"))
    s1 = tl.load(ws_ptr + plane + slot, mask=valid, other=0.0)
    m2 = tl.load(ws_ptr + 2 * plane + slot, mask=valid, other=-float("inf"))
    s2 = tl.load(ws_ptr + 3 * plane + slot, mask=valid, other=0.0)
    best = tl.load(ws_ptr + 4 * plane + slot, mask=valid, other=-float("inf"))

    M1 = tl.max(m1, 0)
    C1 = tl.where(M1 == -float("inf"), 0.0, M1)
    lse = C1 + tl.log(tl.sum(s1 * tl.exp(m1 - C1), 0))  # LSE(ℓ); -inf for an all -inf row
    M2 = tl.max(m2, 0)
    C2 = tl.where(M2 == -float("inf"), 0.0, M2)
    lse_q = C2 + tl.log(tl.sum(s2 * tl.exp(m2 - C2), 0))  # LSE_kept(α·ℓ)

    # splits are in vocabulary order, so the lowest split among tied maxima has the lowest index
    win = tl.argmax(best, 0)
    token = tl.load(idx_ptr + row * S + win)
    ell_x = tl.load(logits_ptr + row.to(tl.int64) * stride_b + token).to(tl.float32)
    alpha = tl.load(alpha_ptr + row)
    greedy = alpha == float("inf")
    a = tl.where(greedy, 1.0, alpha)
    tl.store(token_ptr + row, token.to(tl.int64))
    tl.store(logp_ptr + row, ell_x - lse)
    tl.store(logq_ptr + row, tl.where(greedy, 0.0, a * ell_x - lse_q))
    tl.store(logw_ptr + row, tl.where(greedy, 0.0, lse_q - a * lse))


_SM_COUNT: dict[int, int] = {}


def _num_splits(B: int, n_blocks: int, device: torch.device) -> int:
    """Enough programs to cover the GPU about twice over, never more than one per block."""
    if device.type != "cuda":
        return 1  # the interpreter runs programs one after another: splitting only adds work
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return max(1, min(n_blocks, -(-2 * _SM_COUNT[idx] // B)))


def tempered_sample_triton(
    logits: torch.Tensor,
    alpha: torch.Tensor,
    seed: torch.Tensor,
    offset: torch.Tensor,
    top_k: torch.Tensor | None = None,
    top_p: torch.Tensor | None = None,
    *,
    truncated: Truncation | None = None,
    block: int | None = None,
    num_splits: int | None = None,
) -> TemperedSample:
    """The Triton kernel; same arguments and results as `tempered_sample_torch`.

    top_p must be absent or all ≥ 1 (use the twin otherwise). `block` (power of two) and
    `num_splits` override the launch shape; tests use them to cover multi-block and split rows."""
    require_launchable(logits, "tempered_sample_triton")
    kmax, any_p = truncated or truncation(top_k, top_p, logits.shape[1])
    if any_p:
        raise ValueError("tempered_sample_triton: top_p < 1 is not supported in the kernel")
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    B, V = logits.shape
    dev = logits.device
    token = torch.empty(B, dtype=torch.int64, device=dev)
    logp, logq, log_w = (torch.empty(B, dtype=torch.float32, device=dev) for _ in range(3))
    if B == 0:
        return TemperedSample(token, logp, logq, log_w)
    alpha = alpha.to(dev, torch.float32).contiguous()
    seed = seed.to(dev, torch.int64).contiguous()
    offset = offset.to(dev, torch.int64).contiguous()
    has_thresh = kmax > 0
    if has_thresh:
        # Kept set: fl(a·ℓ) >= a·(k-th largest ℓ), exactly the twin's `kept_mask`: rounding
        # x ↦ fl(a·x) is monotone (a > 0), so it commutes with order statistics.
        a = torch.where(torch.isinf(alpha), torch.ones_like(alpha), alpha)
        thresh = (a * kth_largest(logits, top_k.to(dev).clamp(0, V), kmax).float()).contiguous()
    else:
        thresh = alpha  # never read (HAS_THRESH is a compile-time False)
    BLOCK = block or min(2048, max(16, next_pow2(V)))
    n_blocks = -(-V // BLOCK)
    S = max(1, min(num_splits or _num_splits(B, n_blocks, dev), n_blocks))
    chunk = -(-n_blocks // S) * BLOCK  # whole blocks per split
    S = -(-V // chunk)  # drop splits that would be empty

    ws = torch.empty((5, B, S), dtype=torch.float32, device=dev)  # m1, s1, m2, s2, best per split
    idx = torch.empty((B, S), dtype=torch.int32, device=dev)  # per-split winner (vocab index)
    _ts_partial_kernel[(B, S)](
        logits, logits.stride(0), alpha, seed, offset, thresh, ws, idx, B, V, chunk,
        HAS_THRESH=has_thresh, BLOCK=BLOCK, num_warps=8 if BLOCK >= 2048 else 4, enable_fp_fusion=False,
    )
    _ts_combine_kernel[(B,)](
        logits, logits.stride(0), alpha, ws, idx, token, logp, logq, log_w, B, S,
        BLOCK_S=max(2, next_pow2(S)), num_warps=1, enable_fp_fusion=False,
    )
    return TemperedSample(token, logp, logq, log_w)


def tempered_sample(
    logits: torch.Tensor,
    alpha: torch.Tensor,
    seed: torch.Tensor,
    offset: torch.Tensor,
    top_k: torch.Tensor | None = None,
    top_p: torch.Tensor | None = None,
) -> TemperedSample:
    """Dispatcher: the Triton kernel on CUDA when available and no row asks for top_p < 1, else
    the torch twin. One device sync before the launch (`truncation`)."""
    truncated = truncation(top_k, top_p, logits.shape[1])
    if use_triton(logits) and not truncated[1]:
        return tempered_sample_triton(logits, alpha, seed, offset, top_k, truncated=truncated)
    return tempered_sample_torch(logits, alpha, seed, offset, top_k, top_p, truncated=truncated)
