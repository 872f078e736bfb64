"""Rollouts shared by the strategies that combine several answers (best_of_n,
self_consistency, synthesis): parsing their `inner` decoding object, drawing G rollouts in one
inner-strategy run, and scoring rollouts by their token log-probs. Not a strategy itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from pydantic import BaseModel

from temper.decoding.strategies.base import (
    Completion,
    DecodeRequest,
    ParamError,
    Strategy,
    StrategyResult,
    derive_seed,
)

MAX_ROLLOUTS = 64
COMPOSITE = frozenset({"best_of_n", "self_consistency", "synthesis"})


def parse_inner(raw: Mapping[str, Any] | None, default: Mapping[str, Any]) -> tuple[Strategy, BaseModel]:
    """The inner decoding object → (strategy, params); errors name "decoding.inner.<field>"."""
    from temper.decoding.strategies.registry import parse_decoding  # the registry imports us

    obj = dict(default if raw is None else raw)
    if obj.get("strategy", "sample") in COMPOSITE:
        raise ParamError(
            f"decoding.inner.strategy: {obj['strategy']!r} cannot draw rollouts for another "
            "rollout strategy (each level would multiply the cost by the rollout count)",
            "decoding.inner.strategy",
        )
    if "n" in obj:
        raise ParamError("decoding.inner.n: set by the rollout count, not here", "decoding.inner.n")
    try:
        return parse_decoding(obj)
    except ParamError as exc:
        param = (exc.param or "decoding").replace("decoding", "decoding.inner", 1)
        msg = exc.message.replace("decoding", "decoding.inner", 1)
        raise ParamError(msg, param) from None


def check_n(req: DecodeRequest, limit: int, what: str) -> None:
    if req.settings.n > limit:
        raise ParamError(f"n: {req.settings.n} choices asked for but only {limit} {what}", "n")


async def draw_rollouts(
    req: DecodeRequest, inner: tuple[Strategy, BaseModel], count: int, tag: int, *, keep_logprobs: bool
) -> StrategyResult:
    """`count` rollouts of the request's prompt by the inner strategy, which runs once with
    n = count (so `sample` makes one engine call of `count` specs, `power` runs `count` chains
    side by side). Seeds come from a sub-stream `tag` of the request seed."""
    strategy, params = inner
    overrides: dict[str, Any] = {"n": count, "seed": derive_seed(req.settings.seed, tag)}
    if not keep_logprobs:
        overrides.update(logprobs=False, top_logprobs=0)
    sub = DecodeRequest(
        prompt=list(req.prompt),
        settings=req.settings.updated(overrides),
        engine=req.engine,
        engines=req.engines,
        prompt_text=req.prompt_text,
        options=req.options,
    )
    result = await strategy.run(sub, params)
    if len(result.completions) != count:
        raise RuntimeError(f"inner strategy {strategy.name!r} returned {len(result.completions)} of {count}")
    return result


def rollout_text(req: DecodeRequest, c: Completion) -> str:
    return c.text if c.text is not None else req.engine.tokenizer.decode(c.tokens)


async def token_logprobs(req: DecodeRequest, completions: list[Completion]) -> tuple[list[np.ndarray], int]:
    """Raw per-token log-probs of each completion, and how many tokens had to be re-scored.
    Completions without `logp` are scored in one engine call."""
    missing = [i for i, c in enumerate(completions) if c.logp is None or len(c.logp) != len(c.tokens)]
    out = [None if i in missing else np.asarray(c.logp, dtype=np.float32) for i, c in enumerate(completions)]
    todo = [i for i in missing if completions[i].tokens]
    if todo:
        scored = await req.engine.score(
            [list(req.prompt) + list(completions[i].tokens) for i in todo], start=len(req.prompt)
        )
        for i, sc in zip(todo, scored, strict=True):
            out[i] = np.asarray(sc.logp, dtype=np.float32)
    for i in missing:
        if out[i] is None:
            out[i] = np.zeros(0, dtype=np.float32)
    return out, sum(len(completions[i].tokens) for i in todo)


def sequence_score(logp: np.ndarray, kind: str = "mean_logprob") -> float:
    """Mean (the default) or total token log-prob; an empty sequence scores -inf."""
    if len(logp) == 0:
        return float("-inf")
    total = float(np.sum(logp, dtype=np.float64))
    return total if kind == "total_logprob" else total / len(logp)


def json_floats(xs: list[float]) -> list[float | None]:
    """Scores for the response metadata: JSON has no infinities, so -inf becomes null."""
    return [x if math.isfinite(x) else None for x in xs]
