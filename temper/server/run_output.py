"""One prompt run's work and result: the strategy run, then the log-probs and texts its response
needs (all engine or tokenizer work, done before any response shape is built), and the usage
every response reports."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from temper.decoding.engine import Scored
from temper.decoding.strategies.completion import StrategyResult, fill_logprobs
from temper.server.generation import Generation, PromptRun
from temper.server.logprobs import TokenLogprobs, choice_logprobs, echo_logprobs

Part = tuple[str, TokenLogprobs | None]  # a text and, when asked for, its tokens' log-probs


@dataclass(slots=True)
class RunOutput:
    """A finished prompt run: the strategy's result and, per completion, its final text and
    the log-prob entries to report."""

    run: PromptRun
    result: StrategyResult
    choices: list[Part]
    weight_version: int  # of the weights that produced it (constant while a request runs)
    echo: Part | None = None  # the echoed prompt, for a JSON completions request with echo
    prompt_scored: Scored | None = None  # the prompt's own raw log-probs, for prompt_logprobs


def usage(outputs: Sequence[RunOutput]) -> dict[str, int]:
    """OpenAI usage: every prompt token (the request's and those a strategy fed itself) and
    every generated token (proposals, rollouts and anchor answers included)."""
    prompt = sum(len(o.run.req.prompt) + o.result.extra_prompt_tokens for o in outputs)
    completion = sum(o.result.completion_tokens for o in outputs)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def echo_part(gen: Generation, run: PromptRun) -> Part:
    """The echoed prompt of a completions request: its text and, k given, its log-probs."""
    text = run.text if run.text is not None else await asyncio.to_thread(gen.engine.tokenizer.decode, run.req.prompt)
    lp = await echo_logprobs(gen.engine, run.req.prompt, gen.logprobs) if gen.logprobs is not None else None
    return text, lp


async def execute(gen: Generation, run: PromptRun, on_token=None, *, echo: bool = False) -> RunOutput:
    """Run one prompt's strategy, then give its completions the log-probs the response needs
    (and, with `echo`, work out the echoed prompt too)."""
    version = gen.engine.weight_version
    result = await run.run(on_token)
    if gen.logprobs is not None and not gen.processed:
        await fill_logprobs(gen.engine, run.req.prompt, result.completions, gen.logprobs)
    # detokenising (text, offsets) off the event loop: a long output takes milliseconds
    choices = await asyncio.to_thread(choice_logprobs, gen.engine, result.completions, gen.logprobs, gen.processed)
    out = RunOutput(run, result, choices, version, await echo_part(gen, run) if echo else None)
    if gen.prompt_logprobs is not None:
        (out.prompt_scored,) = await gen.engine.score([run.req.prompt], start=1, top_k=gen.prompt_logprobs, ranks=True)
    return out
