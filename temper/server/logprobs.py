"""Log-probs in OpenAI's two shapes, from a Completion's raw model log-probs (vLLM's default:
temperature-1 log-probs of the full vocabulary, whatever the request's sampling settings).

completions: {"tokens", "token_logprobs", "top_logprobs": [{token: logprob}], "text_offset"}
chat:        {"content": [{"token", "logprob", "bytes", "top_logprobs": [{...}]}]}

-inf is sent as -9999.0 (as vLLM does): JSON has no infinities.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from temper.decoding.engine import Engine
from temper.decoding.strategies.completion import Completion, completion_text
from temper.server.text import TokenText, text_offsets

FLOOR = -9999.0


def _f(x: float) -> float:
    x = float(x)
    return FLOOR if math.isnan(x) or x < FLOOR else x


@dataclass(slots=True)
class TokenLogprobs:
    """Per-token log-probs of a run of tokens; None where a position has none (the first
    prompt token)."""

    tokens: list[int]
    logp: list[float | None]
    top: list[list[tuple[int, float]] | None]

    @classmethod
    def of(
        cls,
        tokens: Sequence[int],
        logp: np.ndarray | None,
        top_ids: np.ndarray | None = None,
        top_logps: np.ndarray | None = None,
        k: int = 0,
    ) -> TokenLogprobs:
        n = len(tokens)
        lp = [None] * n if logp is None else [_f(v) for v in logp[:n]]
        top: list[list[tuple[int, float]] | None] = [[] for _ in range(n)]
        if k and top_ids is not None and top_logps is not None:
            top = [
                [(int(i), _f(v)) for i, v in zip(ids[:k], vals[:k], strict=True)]
                for ids, vals in zip(top_ids[:n], top_logps[:n], strict=True)
            ]
        return cls(list(tokens), lp, top)

    def __add__(self, other: TokenLogprobs) -> TokenLogprobs:
        return TokenLogprobs(self.tokens + other.tokens, self.logp + other.logp, self.top + other.top)

    def __getitem__(self, part: slice) -> TokenLogprobs:
        return TokenLogprobs(self.tokens[part], self.logp[part], self.top[part])


def kept(engine: Engine, c: Completion, text: str) -> int:
    """How many of a completion's tokens to report: all, unless the strategy cut its text at a
    stop string; then those whose text starts before the cut."""
    if c.text is None:
        return len(c.tokens)
    offsets = text_offsets(engine.tokenizer, c.tokens)
    return sum(1 for o in offsets if o < len(text)) or min(1, len(c.tokens))


def choice_logprobs(
    engine: Engine, completions: Sequence[Completion], k: int | None
) -> list[tuple[str, TokenLogprobs | None]]:
    """Each completion's final text and, k given, the log-prob entries to report (the
    completions carry their log-probs by now: see completion.fill_logprobs)."""
    out = []
    for c in completions:
        text = completion_text(engine.tokenizer, c)
        lp = None
        if k is not None:
            lp = TokenLogprobs.of(c.tokens, c.logp, c.top_ids, c.top_logps, k)[: kept(engine, c, text)]
        out.append((text, lp))
    return out


async def echo_logprobs(engine: Engine, prompt: Sequence[int], k: int) -> TokenLogprobs:
    """The prompt's own log-probs (echo); the first token has none."""
    head = TokenLogprobs([prompt[0]], [None], [None])
    if len(prompt) < 2:
        return head
    (scored,) = await engine.score([list(prompt)], start=1, top_k=k)
    return head + TokenLogprobs.of(prompt[1:], scored.logp, scored.top_ids, scored.top_logps, k)


def legacy(tt: TokenText, lp: TokenLogprobs, start_offset: int = 0, offsets: Sequence[int] | None = None) -> dict:
    """/v1/completions shape. top_logprobs maps token text → log-prob and, like vLLM, also
    holds the chosen token. `offsets`: text_offset when the caller already knows it (a stream
    counts across chunks); otherwise counted from `start_offset`."""
    out_top: list[dict[str, float] | None] = []
    for tok, v, top in zip(lp.tokens, lp.logp, lp.top, strict=True):
        if v is None:
            out_top.append(None)
            continue
        d = {tt.token_str(i): x for i, x in (top or [])}
        d.setdefault(tt.token_str(tok), v)
        out_top.append(d)
    return {
        "tokens": [tt.token_str(t) for t in lp.tokens],
        "token_logprobs": lp.logp,
        "top_logprobs": out_top,
        "text_offset": list(offsets) if offsets is not None else text_offsets(tt.tokenizer, lp.tokens, start_offset),
    }


def chat_content(tt: TokenText, lp: TokenLogprobs) -> list[dict]:
    """/v1/chat/completions shape: the list under logprobs.content."""

    def entry(tok: int, v: float) -> dict:
        return {"token": tt.token_str(tok), "logprob": v, "bytes": list(tt.token_bytes(tok))}

    return [
        {**entry(tok, v if v is not None else FLOOR), "top_logprobs": [entry(i, x) for i, x in (top or [])]}
        for tok, v, top in zip(lp.tokens, lp.logp, lp.top, strict=True)
    ]
