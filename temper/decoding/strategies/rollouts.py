"""Rollouts shared by the strategies that combine several answers (best_of_n,
self_consistency, synthesis): their common Params and parsing, drawing G rollouts in one
inner-strategy run, and scoring rollouts by their token log-probs. Not a strategy itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Annotated, Any, ClassVar

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict
from pydantic_core import PydanticCustomError

from temper.decoding.answers import EXTRACTORS
from temper.decoding.errors import ParamError
from temper.decoding.strategies.base import DecodeRequest, Strategy, derive_seed
from temper.decoding.strategies.completion import StrategyResult, fill_logprobs
from temper.decoding.strategies.registry import parse_decoding

MAX_ROLLOUTS = 64
COMPOSITE = frozenset({"best_of_n", "self_consistency", "synthesis"})
# The seed sub-stream of the rollouts: the same for all three strategies, so that for one seed
# they see the same rollouts (synthesis draws its anchor's answers from sub-stream 2).
ROLLOUT_STREAM = 1


def _known_extractor(name: str) -> str:
    if name not in EXTRACTORS:
        raise PydanticCustomError(
            "unknown_extractor",
            "unknown extractor {name}; available: {available}",
            {"name": repr(name), "available": ", ".join(sorted(EXTRACTORS))},
        )
    return name


# The name of an answer extractor in temper.decoding.answers (checked when the request is parsed).
ExtractorName = Annotated[str, AfterValidator(_known_extractor)]


class RolloutParams(BaseModel):
    """The fields every rollout strategy has; each adds its own."""

    model_config = ConfigDict(extra="forbid")

    inner: dict[str, Any] | None = None  # decoding object; default: the strategy's default_inner
    return_rollouts: bool = False  # rollout texts in the metadata


class RolloutStrategy(Strategy):
    """Base of the strategies that combine rollouts drawn by an `inner` strategy."""

    default_inner: ClassVar[Mapping[str, Any]] = {"strategy": "sample"}
    count_field: ClassVar[str] = "rollouts"  # the Params field saying how many rollouts are drawn
    # The choices returned are some of the rollouts (best_of_n, self_consistency): n ≤ count,
    # and the rollouts keep the request's log-prob settings.
    choices_are_rollouts: ClassVar[bool] = True

    def count(self, params: Any) -> int:
        return int(getattr(params, self.count_field))

    def cost(self, req: DecodeRequest, params: Any) -> int:
        return self.rollout_cost(req, params, self.count(params), choices=self.choices_are_rollouts)

    def cost_knob(self, params: Any) -> str:
        return f"decoding.{self.count_field}"

    def check(self, req: DecodeRequest, params: Any) -> None:
        field = self.count_field
        if self.choices_are_rollouts:
            check_n(req, self.count(params), f"{field} are drawn (decoding.{field})")
        self.check_rollouts(req, params, self.count(params), choices=self.choices_are_rollouts)

    def parse(self, raw: Mapping[str, Any]) -> BaseModel:
        params = super().parse(raw)
        self.check_params(params)
        self.inner(params)  # fail at validation, not mid-request
        return params

    def check_params(self, params: Any) -> None:
        """Checks of the validated Params beyond the model's own (ParamError naming the field)."""

    def inner(self, params: Any) -> tuple[Strategy, BaseModel]:
        return parse_inner(params.inner, self.default_inner)

    def sampled_logprobs(self, params: Any) -> bool:
        strategy, inner_params = self.inner(params)  # the choices are the inner strategy's rollouts
        return strategy.sampled_logprobs(inner_params)

    def rollout_cost(self, req: DecodeRequest, params: Any, count: int, *, choices: bool) -> int:
        """Worst-case tokens of drawing the rollouts: the inner strategy's cost with n = count."""
        strategy, inner_params = self.inner(params)
        sub = rollout_request(req, count, choices=choices)
        return strategy.cost(replace(sub, settings=strategy.settings(sub.settings, inner_params)), inner_params)

    def check_rollouts(self, req: DecodeRequest, params: Any, count: int, *, choices: bool) -> None:
        """The inner strategy's own checks of the run that will draw the rollouts."""
        strategy, inner_params = self.inner(params)
        sub = rollout_request(req, count, choices=choices)
        strategy.check(replace(sub, settings=strategy.settings(sub.settings, inner_params)), inner_params)


def parse_inner(raw: Mapping[str, Any] | None, default: Mapping[str, Any]) -> tuple[Strategy, BaseModel]:
    """The inner decoding object → (strategy, params); errors name "decoding.inner.<field>"."""
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


def rollout_request(req: DecodeRequest, count: int, *, choices: bool) -> DecodeRequest:
    """The request the inner strategy runs with: n = count, the rollout seed sub-stream, and
    no log-probs unless the rollouts may be returned as choices."""
    overrides: dict[str, Any] = {"n": count, "seed": derive_seed(req.settings.seed, ROLLOUT_STREAM)}
    if not choices:
        overrides.update(logprobs=False, top_logprobs=0)
    return replace(req, settings=req.settings.updated(overrides))


async def draw_rollouts(
    req: DecodeRequest, inner: tuple[Strategy, BaseModel], count: int, *, choices: bool
) -> StrategyResult:
    """`count` rollouts of the request's prompt by the inner strategy, which runs once with
    n = count (so `sample` makes one engine call of `count` specs, `power` runs `count` chains
    side by side), seeded from sub-stream ROLLOUT_STREAM of the request seed.

    Rollouts that may be returned as `choices` keep the request's logprob settings, and each
    carries its raw token log-probs (`logp`): those the inner strategy left out are scored in
    one engine call, whose re-fed tokens count as extra prompt tokens."""
    strategy, params = inner
    result = await strategy.run(rollout_request(req, count, choices=choices), params)
    if len(result.completions) != count:
        raise RuntimeError(f"inner strategy {strategy.name!r} returned {len(result.completions)} of {count}")
    if choices:
        result.extra_prompt_tokens += await fill_logprobs(req.engine, req.prompt, result.completions)
    return result


def sequence_score(logp: np.ndarray, kind: str = "mean_logprob") -> float:
    """Mean (the default) or total token log-prob; an empty sequence scores -inf."""
    if len(logp) == 0:
        return float("-inf")
    total = float(np.sum(logp, dtype=np.float64))
    return total if kind == "total_logprob" else total / len(logp)


def json_floats(xs: list[float]) -> list[float | None]:
    """Scores for the response metadata: JSON has no infinities, so -inf becomes null."""
    return [x if math.isfinite(x) else None for x in xs]
