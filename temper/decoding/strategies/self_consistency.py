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

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from temper.decoding.answers import EXTRACTORS, extract_answer, majority_vote
from temper.decoding.strategies.base import DecodeRequest, ParamError, Strategy, StrategyResult
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


def check_extractor(name: str) -> None:
    if name not in EXTRACTORS:
        raise ParamError(
            f"decoding.extractor: unknown extractor {name!r}; available: {', '.join(sorted(EXTRACTORS))}",
            "decoding.extractor",
        )


class SelfConsistencyParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rollouts: int = Field(default=8, ge=1, le=MAX_ROLLOUTS)
    extractor: str = "auto"
    inner: dict[str, Any] | None = None  # decoding object; default: sample, request settings
    return_rollouts: bool = False  # rollout texts in the metadata


class SelfConsistencyStrategy(Strategy):
    name = "self_consistency"
    Params = SelfConsistencyParams

    def parse(self, raw: Mapping[str, Any]) -> BaseModel:
        params = super().parse(raw)
        check_extractor(params.extractor)
        parse_inner(params.inner, {"strategy": "sample"})
        return params

    async def run(self, req: DecodeRequest, params: SelfConsistencyParams) -> StrategyResult:
        check_n(req, params.rollouts, "rollouts are drawn (decoding.rollouts)")
        inner = parse_inner(params.inner, {"strategy": "sample"})
        drawn = await draw_rollouts(req, inner, params.rollouts, 1, keep_logprobs=True)
        rollouts = drawn.completions
        logps, rescored = await token_logprobs(req, rollouts)
        scores = [sequence_score(lp) for lp in logps]
        texts = [rollout_text(req, c) for c in rollouts]
        answers = [extract_answer(t, params.extractor) for t in texts]
        vote = majority_vote(answers, scores)
        chosen = vote.order[: req.settings.n]
        completions = []
        for i in chosen:
            c = rollouts[i]
            a = answers[i]
            c.metadata = {**c.metadata, "rollout": i, "answer": a, "votes": vote.table.get(a, 0) if a else 0}
            completions.append(c)
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
            completions=completions,
            completion_tokens=drawn.completion_tokens,
            extra_prompt_tokens=drawn.extra_prompt_tokens + rescored,
            metadata=meta,
        )
