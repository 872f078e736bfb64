"""Reinforcement Pre-Training math (arXiv 2506.08007, research/training_methods.md §2): the
proxy model's top-k entropy per position, the prediction after the reasoning, and the
byte-prefix reward with the valid-token-boundary rule.

Reward (§3.2, Eq. 3): with x̄ the UTF-8 bytes of the ground-truth continuation from position t,
ȳ the prediction's bytes (length l) and L_gt the cumulative byte lengths of the ground-truth
tokens x_t, x_t x_{t+1}, ...:

    r = 1  if ȳ == x̄[:l] and l ∈ L_gt,   else 0

so a prediction may cover one or several whole tokens but must end on a token boundary; the
empty prediction scores 0 (0 ∉ L_gt). Pure functions over strings, bytes and arrays.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from itertools import accumulate

import numpy as np

from temper.decoding.answers import braced_group
from temper.training_adapters.reward import Reward

THINK_END = "</think>"
_BOX = re.compile(r"\\boxed\{")


def topk_entropy(top_logprobs: np.ndarray) -> np.ndarray:
    """[..., k] log-probs of the k most likely next tokens → [...] entropy in nats of that top-k
    distribution renormalised (p_i = exp(l_i) / Σ_j exp(l_j)). -inf entries (fewer than k
    alternatives) have probability 0; a row with none is NaN."""
    lp = np.asarray(top_logprobs, dtype=np.float64)
    if lp.ndim == 0 or lp.shape[-1] == 0:
        raise ValueError(f"top_logprobs: need a last axis of k >= 1 alternatives, got shape {lp.shape}")
    top = lp.max(axis=-1, keepdims=True)
    finite = np.isfinite(top)  # rows with at least one alternative
    shifted = np.where(np.isfinite(lp), lp - np.where(finite, top, 0.0), -np.inf)
    w = np.exp(shifted)  # 0 for -inf
    z = np.where(finite, w.sum(axis=-1, keepdims=True), 1.0)
    p = w / z
    logp = np.where(p > 0, shifted - np.log(z), 0.0)
    h = -(p * logp).sum(axis=-1)
    return np.where(finite[..., 0], h, np.nan)


def final_prediction(text: str, think_end: str = THINK_END) -> tuple[str | None, str]:
    """The content of the last complete \\boxed{...} after the last `think_end`, verbatim: no
    whitespace is stripped (a leading space is part of a token) and braces may nest, so a token
    that is a lone brace cannot be predicted (the paper's format has no escape for it). Returns
    (prediction, "ok") or (None, why there is none)."""
    cut = text.rfind(think_end)
    if cut < 0:
        return None, f"no {think_end}"
    tail = text[cut + len(think_end) :]
    for m in reversed(list(_BOX.finditer(tail))):
        got = braced_group(tail, m.end() - 1)
        if got is not None:
            return got[0], "ok"
    return None, f"no \\boxed{{}} after {think_end}"


def token_boundaries(piece_lengths: Sequence[int]) -> list[int]:
    """L_gt: the cumulative byte lengths of the ground-truth tokens x_t, x_t x_{t+1}, ..."""
    if any(n < 0 for n in piece_lengths):
        raise ValueError("piece_lengths: byte lengths must be >= 0")
    return list(accumulate(piece_lengths))


def prefix_reward(prediction: str | None, continuation: bytes, boundaries: Sequence[int]) -> Reward:
    """1 when the prediction's UTF-8 bytes are a prefix of `continuation` ending exactly on one
    of its token `boundaries` (L_gt), else 0; the reason says which test failed.

    `continuation` is a window of the ground truth: a prediction longer than the window cannot
    be judged and scores 0 with its own reason."""
    if any(not 0 < b <= len(continuation) for b in boundaries):
        raise ValueError(f"boundaries: must lie in [1, {len(continuation)}] (the continuation's length)")
    if prediction is None:
        return Reward(0.0, "no prediction")
    pred = prediction.encode("utf-8")
    n = len(pred)
    if n == 0:
        return Reward(0.0, "empty prediction")
    if n > len(continuation):
        return Reward(0.0, "longer than the continuation window", {"prediction_bytes": n})
    if continuation[:n] != pred:
        return Reward(0.0, "not a prefix of the continuation", {"prediction_bytes": n})
    if n not in set(boundaries):
        return Reward(0.0, "ends inside a token", {"prediction_bytes": n})
    return Reward(1.0, "match", {"prediction_bytes": n, "tokens": list(boundaries).index(n) + 1})
