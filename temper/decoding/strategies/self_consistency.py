"""`self_consistency`: draw `rollouts` answers, majority-vote their extracted final answers,
and return a rollout that gave the winning answer (not just the answer: the client gets the
reasoning that led to it).

Answers come from a named extractor (temper.decoding.answers: "auto" = last \\boxed{}, else
last number; "boxed"; "last_number") and are normalised before counting. Ties between answers
go to the higher mean token log-prob of their rollouts, then to the answer seen first; the
rollout returned for an answer is its most likely one (mean token log-prob), then the earliest.

- `n` (the request's) = how many choices come back: one rollout for each of the top-n answers,
  best first. When fewer distinct answers than n exist, the remaining choices are the other
  rollouts in vote order (answer rank, then score), so n choices always come back; n ≤ rollouts.
- Usage: completion_tokens = every token generated for all rollouts (one batched call);
  re-scoring, needed only when the inner strategy returns no log-probs, counts its re-fed
  completion tokens as extra prompt tokens.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from temper.decoding.answers import extract_answer, majority_vote
from temper.decoding.engine import TokenCallback
from temper.decoding.strategies.base import DecodeRequest
from temper.decoding.strategies.completion import StrategyResult, completion_text
from temper.decoding.strategies.rollouts import (
    MAX_ROLLOUTS,
    ExtractorName,
    RolloutParams,
    RolloutStrategy,
    draw_rollouts,
    json_floats,
    sequence_score,
)


class SelfConsistencyParams(RolloutParams):
    rollouts: int = Field(default=8, ge=1, le=MAX_ROLLOUTS)
    extractor: ExtractorName = "auto"


class SelfConsistencyStrategy(RolloutStrategy):
    name = "self_consistency"
    Params = SelfConsistencyParams

    async def run(
        self, req: DecodeRequest, params: SelfConsistencyParams, on_token: TokenCallback | None = None
    ) -> StrategyResult:
        self.check(req, params)
        drawn = await draw_rollouts(req, self.inner(params), params.rollouts, choices=True)
        rollouts = drawn.completions
        scores = [sequence_score(c.logp) for c in rollouts]
        texts = [completion_text(req.engine.tokenizer, c) for c in rollouts]
        answers = [extract_answer(t, params.extractor) for t in texts]
        vote = majority_vote(answers, scores)
        chosen = vote.order[: req.settings.n]
        for i in chosen:
            a = answers[i]
            rollouts[i].metadata = {**rollouts[i].metadata, "rollout": i, "answer": a, "votes": vote.table.get(a, 0)}
        meta: dict[str, Any] = {
            "strategy": self.name,
            "inner": drawn.metadata,
            "extractor": params.extractor,
            "answers": answers,
            "votes": vote.table,
            "winner": vote.winner,
            "chosen": chosen,
            "scores": json_floats(scores),
            "tokens_generated": drawn.completion_tokens,
        }
        if params.return_rollouts:
            meta["rollouts"] = texts
        return StrategyResult(
            completions=[rollouts[i] for i in chosen],
            completion_tokens=drawn.completion_tokens,
            extra_prompt_tokens=drawn.extra_prompt_tokens,
            metadata=meta,
        )
