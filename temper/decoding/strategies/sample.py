"""`sample`: plain ancestral sampling with the request's temperature / top-p / top-k, exactly
what vLLM would do. n choices are one batched engine call; tokens stream as they are drawn.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from temper.decoding.engine import SampleSpec, TokenDraw
from temper.decoding.strategies.base import (
    MAX_N,
    Completion,
    DecodeRequest,
    SamplingSettings,
    Strategy,
    StrategyResult,
    derive_seed,
)
from temper.decoding.strategies.stops import StopWatch, cut_at_stop


class SampleParams(BaseModel):
    """Optional overrides of the request's own sampling fields (vLLM defaults otherwise)."""

    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(default=None, ge=0.0, le=100.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=-1)
    n: int | None = Field(default=None, ge=1, le=MAX_N)
    seed: int | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    stop: list[str] | None = None


def sample_specs(req: DecodeRequest, s: SamplingSettings, count: int, *path: int) -> list[SampleSpec]:
    """`count` specs for the request's prompt under settings `s`, seeded per choice."""
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
        )
        for i in range(count)
    ]


async def sample_completions(
    req: DecodeRequest, s: SamplingSettings, count: int, *path: int, stream: bool = False
) -> list[Completion]:
    """Draw `count` completions in one engine call, honouring stop strings (and streaming
    tokens to req.on_token when `stream`)."""
    watches = [StopWatch(req.engine.tokenizer, s.stop) for _ in range(count)]

    def on_token(i: int, draw: TokenDraw) -> bool:
        go_on = not watches[i].push(draw.token)
        if stream and req.on_token is not None and not req.on_token(i, draw):
            go_on = False
        return go_on

    samples = await req.engine.sample(sample_specs(req, s, count, *path), on_token=on_token)
    out = []
    for smp in samples:
        c = Completion(
            tokens=list(smp.tokens),
            finish_reason=smp.finish_reason,
            logp=smp.logp,
            top_ids=smp.top_ids,
            top_logps=smp.top_logps,
        )
        if s.stop:
            text, hit = cut_at_stop(req.engine.tokenizer.decode(smp.tokens), s.stop)
            if hit:
                c.text, c.finish_reason = text, "stop"
        out.append(c)
    return out


class SampleStrategy(Strategy):
    name = "sample"
    Params = SampleParams
    streams_tokens = True

    async def run(self, req: DecodeRequest, params: SampleParams) -> StrategyResult:
        s = req.settings.updated(params)
        req.settings = s
        completions = await sample_completions(req, s, s.n, stream=True)
        return StrategyResult(
            completions=completions,
            completion_tokens=sum(len(c.tokens) for c in completions),
            metadata={"strategy": self.name},
        )
