"""A validated generation request, as prompt building hands it to the runner: the Target
(the served model and what the server allows), one PromptRun per prompt, and the Generation
that holds them with every response option. Frozen: nothing writes to them after building."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

from temper.decoding.engine import Engine, TokenCallback
from temper.decoding.strategies.base import DecodeRequest, Strategy, StrategyOptions
from temper.decoding.strategies.completion import StrategyResult


@dataclass(frozen=True, slots=True)
class PromptRun:
    """One strategy run: one prompt of a request, numbered `index` among its prompts."""

    req: DecodeRequest
    strategy: Strategy
    params: BaseModel
    index: int
    text: str | None  # the prompt as the client sent it (echo), when it was text

    async def run(self, on_token: TokenCallback | None = None) -> StrategyResult:
        return await self.strategy.run(self.req, self.params, on_token)


@dataclass(frozen=True, slots=True)
class Generation:
    """A validated /v1/completions or /v1/chat/completions request."""

    kind: Literal["completion", "chat"]
    model: str
    engine: Engine
    runs: list[PromptRun]
    stride: int  # choices per prompt (the strategy's n): choice index = prompt index × stride + i
    logprobs: int | None  # top alternatives per token when log-probs are asked for, else None
    echo: bool = False
    stream: bool = False
    include_usage: bool = False
    processed: bool = False  # log-probs of the distribution sampled (--logprobs-mode processed_logprobs)
    prompt_logprobs: int | None = None  # vLLM's prompt_logprobs: the prompt's own log-probs + top-k
    return_token_ids: bool = False  # prompt_token_ids and token_ids in the response
    as_ids: bool = False  # log-prob tokens read "token_id:<id>"
    request_id: str | None = None  # the client's id for the response (vLLM's request_id)
    cost: int = 0  # worst-case tokens the request may generate (all its prompt runs)

    @property
    def strategy(self) -> Strategy:
        return self.runs[0].strategy


@dataclass(frozen=True, slots=True)
class Target:
    """The served model a request runs on, the others (anchors, teachers), and what the server
    allows: strategy options, the log-prob cap and mode."""

    name: str
    engine: Engine
    engines: Mapping[str, Engine]
    options: StrategyOptions
    max_logprobs: int = 20  # -1 = the whole vocabulary
    processed: bool = False  # --logprobs-mode processed_logprobs
    max_request_tokens: int | None = None  # --max-request-tokens: the most one request may cost

    def cap(self, k: int | None) -> int | None:
        """vLLM's -1 (every token) as a count."""
        return self.engine.tokenizer.vocab_size if k == -1 else k
