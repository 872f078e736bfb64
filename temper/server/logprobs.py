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

from temper.decoding.engine import Engine, Scored, Tokenizer
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


def kept(tokenizer: Tokenizer, c: Completion, text: str) -> int:
    """How many of a completion's tokens to report: all, unless the strategy cut its text at a
    stop string; then those whose text starts before the cut."""
    if c.text is None:
        return len(c.tokens)
    offsets = text_offsets(tokenizer, c.tokens)
    return sum(1 for o in offsets if o < len(text)) or min(1, len(c.tokens))


def choice_logprobs(
    engine: Engine, completions: Sequence[Completion], k: int | None, processed: bool = False
) -> list[tuple[str, TokenLogprobs | None]]:
    """Each completion's final text and, k given, the log-prob entries to report: raw, or
    `processed` (those of the distribution sampled, `logq`). The completions carry them by now
    (completion.fill_logprobs; the strategy's own logq, checked by prompt building)."""
    out = []
    for c in completions:
        text = completion_text(engine.tokenizer, c)
        lp = None
        if k is not None:
            values = c.logq if processed else c.logp
            lp = TokenLogprobs.of(c.tokens, values, c.top_ids, c.top_logps, k)[: kept(engine.tokenizer, c, text)]
        out.append((text, lp))
    return out


async def echo_logprobs(engine: Engine, prompt: Sequence[int], k: int) -> TokenLogprobs:
    """The prompt's own log-probs (echo); the first token has none."""
    head = TokenLogprobs([prompt[0]], [None], [None])
    if len(prompt) < 2:
        return head
    (scored,) = await engine.score([list(prompt)], start=1, top_k=k)
    return head + TokenLogprobs.of(prompt[1:], scored.logp, scored.top_ids, scored.top_logps, k)


def legacy(
    tt: TokenText,
    lp: TokenLogprobs,
    start_offset: int = 0,
    offsets: Sequence[int] | None = None,
    as_ids: bool = False,
) -> dict:
    """/v1/completions shape. top_logprobs maps token text → log-prob and, like vLLM, holds the
    chosen token first, then the alternatives. `offsets`: text_offset when the caller already
    knows it (a stream counts across chunks); otherwise counted from `start_offset`. `as_ids`:
    tokens read "token_id:<id>" (vLLM's return_tokens_as_token_ids)."""
    name = lambda t: tt.label(t, as_ids)
    out_top: list[dict[str, float] | None] = []
    for tok, v, top in zip(lp.tokens, lp.logp, lp.top, strict=True):
        if v is None:
            out_top.append(None)
            continue
        d = {name(tok): v}  # chosen first (vLLM's order); an alternative's own value wins
        d.update((name(i), x) for i, x in top or [])
        out_top.append(d)
    return {
        "tokens": [name(t) for t in lp.tokens],
        "token_logprobs": lp.logp,
        "top_logprobs": out_top,
        "text_offset": list(offsets) if offsets is not None else text_offsets(tt.tokenizer, lp.tokens, start_offset),
    }


def chat_content(tt: TokenText, lp: TokenLogprobs, as_ids: bool = False) -> list[dict]:
    """/v1/chat/completions shape: the list under logprobs.content. With `as_ids`, tokens read
    "token_id:<id>"; the chosen token's bytes stay its text's, the alternatives' are those of
    the string sent (vLLM's rule)."""

    def entry(tok: int, v: float, chosen: bool) -> dict:
        label = tt.label(tok, as_ids)
        raw = tt.token_bytes(tok) if chosen or not as_ids else label.encode()
        return {"token": label, "logprob": v, "bytes": list(raw)}

    return [
        {
            **entry(tok, v if v is not None else FLOOR, True),
            "top_logprobs": [entry(i, x, False) for i, x in (top or [])],
        }
        for tok, v, top in zip(lp.tokens, lp.logp, lp.top, strict=True)
    ]


def prompt_logprobs(tt: TokenText, prompt: Sequence[int], scored: Scored, k: int) -> list[dict | None]:
    """vLLM's `prompt_logprobs`: one entry per prompt token, None for the first (nothing
    predicts it), then {"<token id>": {"logprob", "rank", "decoded_token"}}: the prompt's own
    token first with its rank, then the k most likely tokens ranked 1..k (duplicates once)."""
    out: list[dict | None] = [None]
    for j, tok in enumerate(prompt[1:]):
        entry = {
            str(tok): {"logprob": _f(scored.logp[j]), "rank": int(scored.ranks[j]), "decoded_token": tt.token_str(tok)}
        }
        if k and scored.top_ids is not None:
            for r, (i, x) in enumerate(zip(scored.top_ids[j][:k], scored.top_logps[j][:k], strict=True)):
                entry.setdefault(str(int(i)), {"logprob": _f(x), "rank": r + 1, "decoded_token": tt.token_str(int(i))})
        out.append(entry)
    return out
