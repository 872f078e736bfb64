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

from temper.triton_kernels._triton import LazyJit, next_pow2, require_launchable, tl, use_triton
from temper.triton_kernels.rng import gumbel, row_key


class TemperedSample(NamedTuple):
    token: torch.Tensor  # [B] int64
    logp: torch.Tensor  # [B] float32
    logq: torch.Tensor  # [B] float32
    log_w: torch.Tensor  # [B] float32


def kept_mask(
    scaled: torch.Tensor, top_k: torch.Tensor | None, top_p: torch.Tensor | None
) -> torch.Tensor | None:
    """Boolean [B, V] mask of the tokens q may draw, or None when nothing is truncated.

    top-k keeps every token at least as large as the k-th largest (ties kept); top-p keeps
    the smallest prefix of the sorted q whose mass reaches p (at least one token), vLLM-style.
    """
    B, V = scaled.shape
    mask = None
    if top_k is not None and bool((top_k > 0).any()):
        k = top_k.clamp(min=0, max=V)
        kmax = int(k.max())
        kth = torch.topk(scaled, kmax, dim=-1).values  # [B, kmax]
        thresh = kth.gather(1, (k.clamp(min=1) - 1)[:, None])  # [B, 1]
        thresh = torch.where(k[:, None] > 0, thresh, torch.full_like(thresh, -torch.inf))
        mask = scaled >= thresh
    if top_p is not None and bool((top_p < 1).any()):
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
) -> TemperedSample:
    """logits [B, V] (fp32/bf16/fp16); alpha [B] f32 (inf = greedy); seed, offset [B] int64;
    top_k [B] int64 (0 = off); top_p [B] f32 (1 = off)."""
    ell = logits.float()
    B, V = ell.shape
    alpha = alpha.to(ell.device, torch.float32)
    greedy = torch.isinf(alpha)
    a = torch.where(greedy, torch.ones_like(alpha), alpha)[:, None]  # [B, 1]
    lse = torch.logsumexp(ell, dim=-1)  # [B]
    scaled = a * ell  # [B, V]
    mask = kept_mask(scaled, top_k, top_p)
    if mask is not None:
        scaled = scaled.masked_fill(~mask, -torch.inf)
    lse_q = torch.logsumexp(scaled, dim=-1)  # [B]
    noisy = scaled + gumbel(seed.to(ell.device), offset.to(ell.device), V)
    token = torch.where(greedy, ell.argmax(-1), noisy.argmax(-1))
    logp = ell.gather(1, token[:, None])[:, 0] - lse
    logq = scaled.gather(1, token[:, None])[:, 0] - lse_q
    log_w = lse_q - a[:, 0] * lse
    zero = torch.zeros_like(logq)
    return TemperedSample(
        token, logp, torch.where(greedy, zero, logq), torch.where(greedy, zero, log_w)
    )


def tempered_sample(
    logits: torch.Tensor,
    alpha: torch.Tensor,
    seed: torch.Tensor,
    offset: torch.Tensor,
    top_k: torch.Tensor | None = None,
    top_p: torch.Tensor | None = None,
) -> TemperedSample:
    """Dispatcher: the Triton kernel on CUDA when available, else the torch twin."""
    if use_triton(logits) and (top_p is None or not bool((top_p < 1).any())):
        return tempered_sample_triton(logits, alpha, seed, offset, top_k)
    return tempered_sample_torch(logits, alpha, seed, offset, top_k, top_p)
