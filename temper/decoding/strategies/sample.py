"""`sample`: plain ancestral sampling with the request's temperature / top-p / top-k, exactly
what vLLM would do. n choices are one batched engine call; tokens stream as they are drawn.
"""

from __future__ import annotations

from dataclasses import replace

from pydantic import BaseModel, ValidationError

from temper.decoding.engine import SampleSpec, TokenCallback, TokenDraw
from temper.decoding.errors import param_error_from
from temper.decoding.strategies.base import DecodeRequest, Strategy, derive_seed
from temper.decoding.strategies.completion import Completion, StrategyResult, apply_stops
from temper.decoding.strategies.settings import SamplingSettings, overrides_model
from temper.decoding.strategies.stops import StopWatch

SampleParams = overrides_model(
    "SampleParams",
    ("temperature", "top_p", "top_k", "n", "seed", "max_tokens", "stop"),
    "Optional overrides of the request's own sampling fields (vLLM defaults otherwise).",
)


def sample_specs(req: DecodeRequest, count: int, *path: int) -> list[SampleSpec]:
    """`count` specs for the request's prompt under its settings, seeded per choice."""
    s = req.settings
    max_new = req.max_new_tokens()
    return [
        SampleSpec(
            prefix=tuple(req.prompt),
            max_new_tokens=max_new,
            alpha=s.alpha,
            top_k=s.top_k_or_off,
            top_p=s.top_p,
            stop_ids=req.stop_ids(),
            seed=derive_seed(s.seed, *path, i),
            top_logprobs=s.top_logprobs,
            logprobs_mode=s.logprobs_mode,
        )
        for i in range(count)
    ]


async def sample_completions(
    req: DecodeRequest, count: int, *path: int, on_token: TokenCallback | None = None
) -> list[Completion]:
    """Draw `count` completions in one engine call under the request's settings, honouring stop
    strings (a stop string ends its sequence as soon as it appears) and passing every token to
    `on_token`."""
    s = req.settings
    watches = [StopWatch(req.engine.tokenizer, s.stop) for _ in range(count)]

    def watch(i: int, draw: TokenDraw) -> bool:
        go_on = not watches[i].push(draw.token)
        if on_token is not None and not on_token(i, draw):
            go_on = False
        return go_on

    samples = await req.engine.sample(sample_specs(req, count, *path), on_token=watch)
    return [
        apply_stops(
            req.engine.tokenizer,
            Completion(list(smp.tokens), smp.finish_reason, smp.logp, smp.top_ids, smp.top_logps, logq=smp.logq),
            s.stop,
        )
        for smp in samples
    ]


class SampleStrategy(Strategy):
    name = "sample"
    Params = SampleParams
    streams_tokens = True

    def settings(self, settings: SamplingSettings, params: BaseModel) -> SamplingSettings:
        try:
            return settings.updated(params)
        except ValidationError as exc:  # e.g. an override that contradicts another field
            raise param_error_from(exc, "decoding") from None

    def sampled_logprobs(self, params: BaseModel) -> bool:
        return True

    async def run(
        self, req: DecodeRequest, params: BaseModel, on_token: TokenCallback | None = None
    ) -> StrategyResult:
        req = replace(req, settings=self.settings(req.settings, params))
        completions = await sample_completions(req, req.settings.n, on_token=on_token)
        return StrategyResult(
            completions=completions,
            completion_tokens=sum(len(c.tokens) for c in completions),
            metadata={"strategy": self.name},
        )
