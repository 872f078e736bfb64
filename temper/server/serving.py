"""What the generation routes share: request fields → (engine, SamplingSettings, strategy,
prompts) with every check that must become a 400, the in-flight limit, and running a request's
strategy calls under the client's connection and the server's timeout.

Per-request state lives in Job objects and locals; app-wide state (engines, config, metrics,
admission) is read from app.state and never written per request. Of the responses, only the
parts both routes share: usage, the `decoding` field and the envelope.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from pydantic import BaseModel, ValidationError

from temper.decoding.engine import Engine
from temper.decoding.strategies.base import (
    Completion,
    DecodeRequest,
    ParamError,
    SamplingSettings,
    Strategy,
    StrategyResult,
    param_error_from,
)
from temper.decoding.strategies.registry import parse_decoding
from temper.server.errors import (
    APIError,
    ClientGone,
    as_api_error,
    bad_request,
    model_not_found,
    queue_full,
    request_timeout,
)
from temper.server.metrics import RequestRecord
from temper.server.protocol import GenerationRequest

log = logging.getLogger(__name__)


class Admission:
    """A bounded count of generation requests in flight; beyond `limit`, 429."""

    def __init__(self, limit: int, retry_after: int):
        self.limit = limit
        self.retry_after = retry_after
        self.in_flight = 0

    def enter(self) -> None:
        if self.in_flight >= self.limit:
            raise queue_full(self.limit, self.retry_after)
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1


@dataclass(slots=True)
class Job:
    """One strategy run: one prompt of the request."""

    req: DecodeRequest
    strategy: Strategy
    params: BaseModel
    prompt_index: int
    stride: int  # choices this prompt owns in streamed numbering (index = prompt_index * stride + i)

    def run(self):
        return self.strategy.run(self.req, self.params)


def resolve_model(request: Request, name: str | None) -> tuple[str, Engine]:
    engines: Mapping[str, Engine] = request.app.state.engines
    if name is None or name == "":
        name = next(iter(engines))
    if name not in engines:
        raise model_not_found(name)
    return name, engines[name]


@contextmanager
def recorded(record: RequestRecord) -> Iterator[RequestRecord]:
    """Count a request that fails in the metrics with the status its error will get."""
    try:
        yield record
    except Exception as exc:
        record.finish(as_api_error(exc).status)
        raise


def reject_unsupported(body: BaseModel) -> None:
    """400 for fields we cannot honour, unless they hold their neutral value."""
    neutral = {
        "presence_penalty": (None, 0, 0.0),
        "frequency_penalty": (None, 0, 0.0),
        "repetition_penalty": (None, 1, 1.0),
        "logit_bias": (None, {}),
        "best_of": (None, 1),
        "suffix": (None, ""),
        "tools": (None, []),
        "tool_choice": (None, "none", "auto"),
    }
    for name, ok in neutral.items():
        v = getattr(body, name, None)
        if v not in ok:
            raise bad_request(f"{name}: not supported by this server", name)
    fmt = getattr(body, "response_format", None)
    if fmt is not None and fmt.get("type", "text") != "text":
        raise bad_request("response_format: only {'type': 'text'} is supported", "response_format")
    if getattr(body, "stream_options", None) is not None and not body.stream:
        raise bad_request("stream_options: only allowed when stream is true", "stream_options")


def sampling_settings(
    body: GenerationRequest,
    *,
    max_tokens: int | None,
    logprobs: bool,
    top_logprobs: int,
    aliases: Mapping[str, str] = {},
) -> SamplingSettings:
    """The request's SamplingSettings; a bad value is a 400 naming the field the client sent
    (`aliases` maps settings names back, e.g. top_logprobs → logprobs for completions)."""
    if max_tokens is not None and max_tokens <= 0:
        p = aliases.get("max_tokens", "max_tokens")
        raise ParamError(f"{p}: must be at least 1, got {max_tokens}", p)
    data: dict[str, Any] = {
        "max_tokens": max_tokens,
        "stop": body.stop_list(),
        "logprobs": logprobs,
        "top_logprobs": top_logprobs,
    }
    for name in ("temperature", "top_p", "top_k", "n", "seed", "stop_token_ids"):
        v = getattr(body, name)
        if v is not None:
            data[name] = v
    try:
        return SamplingSettings.model_validate(data)
    except ValidationError as exc:
        err = param_error_from(exc)
        head = (err.param or "").split(".")[0]
        if head in aliases:
            p = aliases[head]
            raise ParamError(err.message.replace(head, p, 1), p) from None
        raise err from None


def check_prompt(engine: Engine, ids: Sequence[int], max_tokens: int | None, param: str) -> None:
    """400s for an empty prompt, unknown token ids, or one that leaves no room (vLLM's wording)."""
    if not ids:
        raise bad_request(f"{param}: must not be empty", param)
    vocab = engine.tokenizer.vocab_size
    bad = next((t for t in ids if not 0 <= t < vocab), None)
    if bad is not None:
        raise bad_request(f"{param}: token id {bad} is outside the vocabulary [0, {vocab})", param)
    ctx = engine.max_context
    if len(ids) >= ctx:
        raise bad_request(
            f"This model's maximum context length is {ctx} tokens. However, your {param} has "
            f"{len(ids)} tokens, which leaves no room for a completion. Please reduce its length.",
            param,
        )
    if max_tokens is not None and len(ids) + max_tokens > ctx:
        raise bad_request(
            f"This model's maximum context length is {ctx} tokens. However, you requested "
            f"{len(ids) + max_tokens} tokens ({len(ids)} in the {param}, {max_tokens} in the "
            f"completion). Please reduce the length of the {param} or completion.",
            "max_tokens",
        )


def make_jobs(
    request: Request,
    engine: Engine,
    prompts: Sequence[tuple[list[int], str | None]],
    settings: SamplingSettings,
    decoding: Mapping[str, Any] | None,
) -> list[Job]:
    """One Job per prompt, all with the request's strategy (validated once)."""
    strategy, params = parse_decoding(decoding)
    state = request.app.state
    try:
        stride = settings.updated(params).n
    except ValidationError as exc:
        raise param_error_from(exc, "decoding") from None
    return [
        Job(
            req=DecodeRequest(
                prompt=list(ids),
                settings=settings.model_copy(),
                engine=engine,
                engines=state.engines,
                prompt_text=text,
                options=state.strategy_options,
            ),
            strategy=strategy,
            params=params,
            prompt_index=i,
            stride=stride,
        )
        for i, (ids, text) in enumerate(prompts)
    ]


def _retrieve(task: asyncio.Future) -> None:
    # cancelled work may still end in an exception nobody awaits; read it so asyncio stays quiet
    if not task.cancelled():
        task.exception()


def start(jobs: Sequence[Job]) -> list[asyncio.Task]:
    tasks = [asyncio.create_task(job.run()) for job in jobs]
    for t in tasks:
        t.add_done_callback(_retrieve)
    return tasks


def stop(tasks: Sequence[asyncio.Future]) -> None:
    """Cancel unfinished work (engine.sample aborts its sequences and frees their cache)."""
    for t in tasks:
        if not t.done():
            t.cancel()


async def _disconnected(request: Request) -> None:
    # the body is already read, so the next ASGI message is the disconnect (or end of response)
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def run_jobs(request: Request, jobs: Sequence[Job]) -> list[StrategyResult]:
    """Run every job concurrently; cancel all of them if one fails, the client leaves, or the
    server's request timeout passes."""
    timeout = request.app.state.config.request_timeout or None
    tasks = start(jobs)
    everything = asyncio.gather(*tasks)
    watcher = asyncio.create_task(_disconnected(request))
    try:
        done, _ = await asyncio.wait({everything, watcher}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if everything in done:
            try:
                return everything.result()
            except APIError:
                raise
            except Exception as exc:
                raise strategy_error(exc) from exc
        if watcher in done:
            raise ClientGone()
        raise request_timeout(timeout)
    finally:
        watcher.cancel()
        stop(tasks)
        everything.add_done_callback(_retrieve)


def strategy_error(exc: BaseException) -> APIError:
    """A strategy's failure as an HTTP error: its ValueErrors come from request values its
    Params could not check (400); anything else is a bug (500)."""
    if isinstance(exc, ValueError) and not isinstance(exc, ParamError):
        log.warning("strategy rejected the request: %s", exc)
        return bad_request(str(exc), getattr(exc, "param", None))
    return as_api_error(exc)


def usage(jobs: Sequence[Job], results: Sequence[StrategyResult]) -> dict[str, int]:
    prompt = sum(len(j.req.prompt) for j in jobs) + sum(r.extra_prompt_tokens for r in results)
    completion = sum(r.completion_tokens for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def decoding_field(jobs: Sequence[Job], results: Sequence[StrategyResult]) -> dict[str, Any]:
    """The response's `decoding` field: the strategy's metadata (one entry per prompt when a
    completions request had several)."""
    name = jobs[0].strategy.name
    if len(results) == 1:
        return {"strategy": name, **results[0].metadata}
    return {"strategy": name, "prompts": [dict(r.metadata) for r in results]}


def with_metadata(choice: dict[str, Any], c: Completion) -> dict[str, Any]:
    """A response choice plus its completion's own strategy metadata, when it has any."""
    if c.metadata:
        choice["decoding"] = c.metadata
    return choice


def response_body(
    obj: str, rid: str, created: int, model: str, choices: list[dict],
    jobs: Sequence[Job], results: Sequence[StrategyResult],
) -> dict[str, Any]:
    """The OpenAI response envelope (`text_completion` or `chat.completion`) plus `decoding`."""
    return {
        "id": rid,
        "object": obj,
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage(jobs, results),
        "system_fingerprint": None,
        "decoding": decoding_field(jobs, results),
    }
