"""What a strategy returns: Completions (one per choice) in a StrategyResult, and the few
things every strategy and the server do to a completion: cut it at a stop string, read its
text, give it the raw log-probs it came without.

Not the response format (the server's) and not any strategy's logic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from temper.decoding.engine import Engine, Tokenizer
from temper.decoding.strategies.stops import cut_at_stop


@dataclass(slots=True)
class Completion:
    """One returned choice."""

    tokens: list[int]
    finish_reason: str  # "stop" | "length" | "abort"
    logp: np.ndarray | None = None  # [T] raw log-probs of `tokens`
    top_ids: np.ndarray | None = None  # [T, k]
    top_logps: np.ndarray | None = None  # [T, k], in the settings' logprobs_mode
    text: str | None = None  # set when the strategy cut the text itself (stop strings)
    metadata: dict[str, Any] = field(default_factory=dict)
    # [T] log-probs of `tokens` under the distribution they were sampled from (temperature and
    # top-k / top-p applied): what importance-sampling trainers need. None when the strategy
    # did not draw the returned tokens from a per-token distribution (power sampling).
    logq: np.ndarray | None = None


@dataclass(slots=True)
class StrategyResult:
    completions: list[Completion]
    completion_tokens: int  # every token the request generated (all proposals, rollouts...)
    extra_prompt_tokens: int = 0  # prompts the strategy built itself (e.g. anchor prompts)
    metadata: dict[str, Any] = field(default_factory=dict)


def apply_stops(tokenizer: Tokenizer, c: Completion, stops: Sequence[str]) -> Completion:
    """Cut c's text at its first stop string (finish_reason "stop"); the tokens stay whole,
    the server reports only those whose text lies before the cut."""
    if stops:
        text, hit = cut_at_stop(tokenizer.decode(c.tokens), stops)
        if hit:
            c.text, c.finish_reason = text, "stop"
    return c


def completion_text(tokenizer: Tokenizer, c: Completion) -> str:
    """The completion's text: the strategy's own (cut at a stop string), else its tokens decoded."""
    return c.text if c.text is not None else tokenizer.decode(c.tokens)


def needs_scoring(c: Completion, top_k: int) -> bool:
    has_logp = c.logp is not None and len(c.logp) == len(c.tokens)
    return bool(c.tokens) and (not has_logp or (top_k > 0 and c.top_ids is None))


async def fill_logprobs(
    engine: Engine, prompt: Sequence[int], completions: Sequence[Completion], top_k: int = 0
) -> int:
    """Give every completion its raw per-token log-probs (and top_k alternatives), scoring those
    that came without them in one engine call. Returns how many tokens were re-scored (re-fed
    tokens count as prompt tokens in usage)."""
    todo = [c for c in completions if needs_scoring(c, top_k)]
    for c in completions:
        if not c.tokens and c.logp is None:
            c.logp = np.zeros(0, dtype=np.float32)
    if not todo:
        return 0
    scored = await engine.score([list(prompt) + list(c.tokens) for c in todo], start=len(prompt), top_k=top_k)
    for c, sc in zip(todo, scored, strict=True):
        c.logp = np.asarray(sc.logp, dtype=np.float32)
        if top_k:
            c.top_ids, c.top_logps = sc.top_ids, sc.top_logps
    return sum(len(c.tokens) for c in todo)
