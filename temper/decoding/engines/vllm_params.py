"""SampleSpec → vLLM request, and vLLM's logprob outputs → per-token logp / logq / log_w.

Both tiers run vLLM in processed-logprobs mode, so the value vLLM returns for a sampled token is
its log-prob under the distribution actually sampled:
  Tier 1 (public API, the oracle): temperature 1/α and vLLM's own top-k/top-p; the returned value
          is logq; raw logp comes from a scoring pass (prompt log-probs are always raw), and
          log_w = α·logp − logq.
  Tier 2 (one pass): temperature 1 and the power logits processor (vllm_logits.py); the sentinel
          column's value gives log_w, and logp = (logq + log_w) / α.
Greedy specs (α = inf) run at temperature 0 in both tiers; the returned value is then the raw
logp (temperature and truncation do not apply to greedy rows), logq = log_w = 0.
No vLLM engine state lives here: pure translation, unit-testable with fake outputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from vllm import SamplingParams
from vllm.logprobs import FlatLogprobs
from vllm.sampling_params import RequestOutputKind

from temper.decoding.engine import SampleSpec, Scored
from temper.decoding.engines.vllm_logits import PowerRow, sentinel_value

TIER1_ALPHA = (0.5, 100.0)  # vLLM's temperature range [0.01, 2] (below 0.01 it clamps)


def ranks_at(logprobs, pos: int) -> dict[int, int]:
    """{token id: vLLM's rank (1 + tokens with a higher log-prob)} for position `pos`."""
    if isinstance(logprobs, FlatLogprobs):
        lo, hi = logprobs.start_indices[pos], logprobs.end_indices[pos]
        return dict(zip(logprobs.token_ids[lo:hi], logprobs.ranks[lo:hi], strict=True))
    return {t: lp.rank for t, lp in logprobs[pos].items()}


def values_at(logprobs, pos: int) -> dict[int, float]:
    """{token id: value} returned for position `pos` (flat or dict layout)."""
    if isinstance(logprobs, FlatLogprobs):
        lo, hi = logprobs.start_indices[pos], logprobs.end_indices[pos]
        return dict(zip(logprobs.token_ids[lo:hi], logprobs.logprobs[lo:hi], strict=True))
    return {t: lp.logprob for t, lp in logprobs[pos].items()}


def sample_params(
    spec: SampleSpec,
    *,
    tier: int,
    max_tokens: int,
    stops: Sequence[int],
    seed: int,
    sentinel: int | None,
    vocab_size: int,
    stream: bool,
) -> SamplingParams:
    """One vLLM request for one spec. Stops are ours alone (ignore_eos, explicit stop ids)."""
    common = dict(
        n=1, max_tokens=max_tokens, seed=seed, stop_token_ids=list(stops), ignore_eos=True,
        detokenize=False, skip_special_tokens=False, flat_logprobs=True,
        output_kind=RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY,
    )
    if tier == 2:
        extra = None
        if not spec.greedy:
            extra = PowerRow(spec.alpha, spec.top_k, spec.top_p, sentinel,
                             sentinel_value(spec.alpha, vocab_size)).to_extra()
        return SamplingParams(temperature=0.0 if spec.greedy else 1.0, logprobs=1,
                              logprob_token_ids=[sentinel], extra_args=extra, **common)
    if spec.greedy:
        return SamplingParams(temperature=0.0, logprobs=0, **common)
    lo, hi = TIER1_ALPHA
    if not lo <= spec.alpha <= hi:
        raise ValueError(f"alpha: {spec.alpha} is outside [{lo}, {hi}], the range vLLM's temperature "
                         "covers (this engine runs without its Tier 2 logits processor)")
    return SamplingParams(temperature=1.0 / spec.alpha, top_k=spec.top_k, top_p=spec.top_p, logprobs=0,
                          **common)


def decode_tokens(
    spec: SampleSpec, tokens: Sequence[int], logprobs, first: int, *, tier: int, sentinel: int | None,
    vocab_size: int,
) -> tuple[list[float], list[float], list[float]]:
    """Per token of an output chunk: (logp, logq, log_w). In Tier 1 logp and log_w are NaN
    until the scoring pass fills them. `first`: index of tokens[0] within `logprobs`."""
    lp, lq, lw = [], [], []
    c = sentinel_value(spec.alpha, vocab_size) if tier == 2 and not spec.greedy else 0.0
    for j, tok in enumerate(tokens):
        vals = values_at(logprobs, first + j)
        v_x = vals[tok]
        if spec.greedy:
            lp.append(v_x)
            lq.append(0.0)
            lw.append(0.0)
        elif tier == 2:
            log_w = c - vals[sentinel]
            lp.append((v_x + log_w) / spec.alpha)
            lq.append(v_x)
            lw.append(log_w)
        else:
            lp.append(math.nan)
            lq.append(v_x)
            lw.append(math.nan)
    return lp, lq, lw


def score_params(top_k: int) -> SamplingParams:
    """A scoring request: one throw-away token, raw prompt log-probs (top_k alternatives)."""
    return SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=top_k, detokenize=False,
                          flat_logprobs=True, output_kind=RequestOutputKind.FINAL_ONLY)


def read_scores(prompt_logprobs, seq: Sequence[int], start: int, top_k: int, ranks: bool = False) -> Scored:
    """Scored for seq[start:] from vLLM's prompt log-probs (entry j scores token j given < j)."""
    n = len(seq) - start
    logp = np.empty(n, dtype=np.float32)
    rank = np.array([ranks_at(prompt_logprobs, pos)[seq[pos]] for pos in range(start, len(seq))], dtype=np.int64)
    ids = np.zeros((n, top_k), dtype=np.int64) if top_k else None
    lps = np.zeros((n, top_k), dtype=np.float32) if top_k else None
    for i, pos in enumerate(range(start, len(seq))):
        vals = values_at(prompt_logprobs, pos)
        logp[i] = vals[seq[pos]]
        if top_k:
            # the actual token rides along outside the top-k when it is not among them: keep
            # the k largest (vLLM's ranks are by value, ties broken by id like torch.topk)
            best = sorted(vals.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]
            ids[i] = [t for t, _ in best]
            lps[i] = [v for _, v in best]
    return Scored(logp, ids, lps, rank if ranks else None)


def processed_alternatives(spec: SampleSpec, ids: np.ndarray, raw: np.ndarray, log_w: np.ndarray) -> np.ndarray:
    """The k best alternatives [T, k] under q (vLLM's processed log-probs), from their raw
    log-probs: q(j) = α·log p(j) − log Z_t for a kept j (log_w_t = log Z_t over the kept set),
    −inf otherwise. With top-k, j is kept when its raw value is at least the top_k-th largest
    (ties kept, as the samplers keep them). Top-p membership needs the whole distribution,
    which a scoring pass does not return: that combination is refused, not approximated."""
    if spec.top_p < 1:
        raise ValueError("top_p: processed log-prob alternatives with top_p < 1 are not available on the vLLM engine")
    q = spec.alpha * raw.astype(np.float64) - log_w.astype(np.float64)[:, None]  # [T, k]
    if spec.top_k and spec.top_k < raw.shape[1]:
        kth = raw[:, spec.top_k - 1 : spec.top_k]  # [T, 1] the top_k-th largest raw value
        q = np.where(raw >= kth, q, -np.inf)
    return q.astype(np.float32)
