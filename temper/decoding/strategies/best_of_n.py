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

from typing import Any, Literal

from pydantic import Field

from temper.decoding.engine import TokenCallback
from temper.decoding.strategies.base import DecodeRequest
from temper.decoding.strategies.completion import StrategyResult, completion_text
from temper.decoding.strategies.rollouts import (
    MAX_ROLLOUTS,
    RolloutParams,
    RolloutStrategy,
    draw_rollouts,
    json_floats,
    sequence_score,
)


class BestOfNParams(RolloutParams):
    candidates: int = Field(default=8, ge=1, le=MAX_ROLLOUTS)
    score: Literal["mean_logprob", "total_logprob"] = "mean_logprob"


class BestOfNStrategy(RolloutStrategy):
    name = "best_of_n"
    Params = BestOfNParams
    count_field = "candidates"

    async def run(
        self, req: DecodeRequest, params: BestOfNParams, on_token: TokenCallback | None = None
    ) -> StrategyResult:
        self.check(req, params)
        drawn = await draw_rollouts(req, self.inner(params), params.candidates, choices=True)
        cands = drawn.completions
        scores = [sequence_score(c.logp, params.score) for c in cands]
        chosen = sorted(range(len(cands)), key=lambda i: (-scores[i], i))[: req.settings.n]
        for i in chosen:
            cands[i].metadata = {**cands[i].metadata, "candidate": i, "score": scores[i]}
        meta: dict[str, Any] = {
            "strategy": self.name,
            "inner": drawn.metadata,
            "score": params.score,
            "scores": json_floats(scores),
            "chosen": chosen,
            "tokens_generated": drawn.completion_tokens,
        }
        if params.return_rollouts:
            meta["rollouts"] = [completion_text(req.engine.tokenizer, c) for c in cands]
        return StrategyResult(
            completions=[cands[i] for i in chosen],
            completion_tokens=drawn.completion_tokens,
            extra_prompt_tokens=drawn.extra_prompt_tokens,
            metadata=meta,
        )
