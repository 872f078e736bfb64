"""`best_of_n`: draw `candidates` answers, return the ones the model itself finds most likely.

The score of a candidate is its mean token log-prob (min perplexity, the default) or its total
log-prob, under the raw model (temperature 1), ties going to the earlier candidate.

- `n` (the request's) = how many choices come back: the top-n candidates by score, best first;
  n ≤ candidates. All candidates are one batched engine call (the inner strategy's n).
- Usage: completion_tokens = every token the inner strategy generated for all candidates;
  when the inner strategy returns no log-probs the candidates are re-scored in one `score`
  call and those re-fed completion tokens are counted as extra prompt tokens.
- `inner` (a decoding object, default `sample` with the request's own settings) draws the
  candidates; any registered strategy except the rollout-combining ones (best_of_n,
  self_consistency, synthesis), whose nesting would multiply a request's cost by G per level.

The helpers the rollout strategies share live in `rollouts.py`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from temper.decoding.strategies.base import DecodeRequest, Strategy, StrategyResult
from temper.decoding.strategies.rollouts import (
    MAX_ROLLOUTS,
    check_n,
    draw_rollouts,
    json_floats,
    parse_inner,
    rollout_text,
    sequence_score,
    token_logprobs,
)


class BestOfNParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    candidates: int = Field(default=8, ge=1, le=MAX_ROLLOUTS)
    score: Literal["mean_logprob", "total_logprob"] = "mean_logprob"
    inner: dict[str, Any] | None = None  # decoding object; default: sample, request settings
    return_rollouts: bool = False  # candidate texts in the metadata


class BestOfNStrategy(Strategy):
    name = "best_of_n"
    Params = BestOfNParams

    def parse(self, raw: Mapping[str, Any]) -> BaseModel:
        params = super().parse(raw)
        parse_inner(params.inner, {"strategy": "sample"})  # fail at validation, not mid-request
        return params

    async def run(self, req: DecodeRequest, params: BestOfNParams) -> StrategyResult:
        check_n(req, params.candidates, "candidates are drawn (decoding.candidates)")
        inner = parse_inner(params.inner, {"strategy": "sample"})
        drawn = await draw_rollouts(req, inner, params.candidates, 1, keep_logprobs=True)
        cands = drawn.completions
        logps, rescored = await token_logprobs(req, cands)
        scores = [sequence_score(lp, params.score) for lp in logps]
        ranking = sorted(range(len(cands)), key=lambda i: (-scores[i], i))
        chosen = ranking[: req.settings.n]
        completions = []
        for i in chosen:
            c = cands[i]
            c.logp = logps[i] if len(logps[i]) == len(c.tokens) else c.logp
            c.metadata = {**c.metadata, "candidate": i, "score": scores[i]}
            completions.append(c)
        meta: dict[str, Any] = {
            "strategy": self.name,
            "inner": drawn.metadata,
            "score": params.score,
            "scores": json_floats(scores),
            "chosen": chosen,
            "tokens_generated": drawn.completion_tokens,
        }
        if params.return_rollouts:
            meta["rollouts"] = [rollout_text(req, c) for c in cands]
        return StrategyResult(
            completions=completions,
            completion_tokens=drawn.completion_tokens,
            extra_prompt_tokens=drawn.extra_prompt_tokens + rescored,
            metadata=meta,
        )
