"""The HF engine's per-step token draw and its scoring pass, as functions over model outputs.

`sample_rows` turns next-token logits [B, V] into one token per running sequence (through the
`tempered_sample` dispatcher: Triton on CUDA, the torch twin elsewhere) and does the
per-sequence bookkeeping; `score_chunk` runs one right-padded forward pass and reads raw
log-probs of the given tokens. Neither owns state: the engine passes its rows and its model.
"""

from __future__ import annotations

import numpy as np
import torch

from temper.decoding.engine import Scored
from temper.decoding.engines.hf_seq import Seq
from temper.triton_kernels.tempered_sample import kept_mask, tempered_sample


def top_logprobs(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k most likely tokens per row of log-probs or logits [n, V] → (ids [n, k], log-probs
    [n, k]), normalised over each row."""
    v, ix = torch.log_softmax(logits.float(), dim=-1).topk(min(k, logits.shape[-1]), dim=-1)
    return ix.cpu(), v.cpu()


def processed_logits(rows: list[Seq], logits: torch.Tensor) -> torch.Tensor:
    """Logits [n, V] of q, the distribution each row samples from: α·ℓ with −inf outside its
    top-k / top-p kept set (vLLM's processed logprobs after log_softmax). Greedy rows keep the
    raw logits (vLLM's choice too: a one-hot q has no useful alternatives)."""
    dev = logits.device
    alpha = torch.tensor([r.spec.alpha if not r.spec.greedy else 1.0 for r in rows], device=dev)
    scaled = logits.float() * alpha[:, None]
    top_k = torch.tensor([r.spec.top_k for r in rows], dtype=torch.int64, device=dev)
    top_p = torch.tensor([r.spec.top_p if not r.spec.greedy else 1.0 for r in rows], device=dev)
    keep = kept_mask(scaled, top_k, top_p)  # None: nothing truncated
    return scaled if keep is None else torch.where(keep, scaled, torch.full_like(scaled, -torch.inf))


def alternatives(rows: list[Seq], logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best alternatives of every row that asked for them, in its spec's logprobs_mode."""
    if any(r.spec.logprobs_mode == "processed" for r in rows):
        processed = processed_logits(rows, logits)
        raw = torch.tensor([r.spec.logprobs_mode == "raw" for r in rows], device=logits.device)
        logits = torch.where(raw[:, None], logits.float(), processed)
    return top_logprobs(logits, k)


def sample_rows(rows: list[Seq], logits: torch.Tensor, only_live: bool) -> list[tuple[Seq, int]]:
    """Draw one token for each (live) row from logits [B, V]; append it and check stops.
    Returns (row, token) per draw."""
    idx = [i for i, r in enumerate(rows) if not (only_live and r.done)]
    if not idx:
        return []
    sel = [rows[i] for i in idx]
    lg = logits[idx] if len(idx) != len(rows) else logits  # [b, V]
    dev = lg.device
    out = tempered_sample(
        lg,
        torch.tensor([r.spec.alpha for r in sel], dtype=torch.float32, device=dev),
        torch.tensor([r.seed for r in sel], dtype=torch.int64, device=dev),
        torch.tensor([r.position for r in sel], dtype=torch.int64, device=dev),  # RNG offset
        # None when no row truncates (known here on the host): no device sync to find out
        torch.tensor([r.spec.top_k for r in sel], dtype=torch.int64, device=dev)
        if any(r.spec.top_k for r in sel) else None,
        torch.tensor([r.spec.top_p for r in sel], dtype=torch.float32, device=dev)
        if any(r.spec.top_p < 1 for r in sel) else None,
    )
    tok, lp, lq, lw = (t.tolist() for t in (out.token, out.logp, out.logq, out.log_w))
    want = {j: n for n, j in enumerate(j for j, r in enumerate(sel) if r.spec.top_logprobs)}
    asked = [sel[j] for j in want]
    tops = alternatives(asked, lg[list(want)], max(r.spec.top_logprobs for r in asked)) if want else None
    events = []
    for j, r in enumerate(sel):
        r.append(tok[j], lp[j], lq[j], lw[j])
        if j in want:
            k = r.spec.top_logprobs
            r.top_ids.append(tops[0][want[j], :k].numpy())
            r.top_lps.append(tops[1][want[j], :k].numpy())
        if tok[j] in r.stops:
            r.finish("stop")
        elif len(r.tokens) >= r.limit:
            r.finish("length")
        events.append((r, tok[j]))
    return events


def score_chunk(
    model, seqs: list[list[int]], starts: list[int], top_k: int, pad_id: int, device: torch.device,
    ranks: bool = False,
) -> list[Scored]:
    """Raw log-probs of seqs[i][starts[i]:] in one right-padded forward pass (right padding
    keeps the natural positions). Only the logits of scored positions are materialised."""
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), L), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    first = min(starts) - 1  # earliest position whose logits predict a scored token
    logits = model(
        input_ids=ids.to(device), attention_mask=mask.to(device), logits_to_keep=L - first
    ).logits  # [B, L - first, V]: row j predicts token first + j + 1
    out = []
    for i, s in enumerate(seqs):
        rows = logits[i, starts[i] - 1 - first : len(s) - 1 - first].float()  # [T, V]
        lse = torch.logsumexp(rows, dim=-1)  # per row, instead of a full [T, V] log-softmax
        tgt = torch.tensor(s[starts[i] :], device=rows.device)
        picked = rows.gather(1, tgt[:, None])  # [T, 1] the scored tokens' logits
        sc = Scored((picked[:, 0] - lse).cpu().numpy().astype(np.float32))
        if ranks:  # vLLM's rank: how many tokens score at least as high (ties count against)
            sc.ranks = (rows >= picked).sum(dim=-1).cpu().numpy().astype(np.int64)
        if top_k:
            v, ix = rows.topk(min(top_k, rows.shape[-1]), dim=-1)
            sc.top_ids = ix.cpu().numpy()
            sc.top_logps = (v - lse[:, None]).cpu().numpy().astype(np.float32)
        out.append(sc)
    return out
