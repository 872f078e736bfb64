"""Admit a validated request and answer it: a JSON body once every job is done, or an SSE
stream. Holds the in-flight slot for exactly as long as the work (or the stream) lasts."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from temper.decoding.strategies.base import StrategyResult
from temper.server.metrics import RequestRecord
from temper.server.serving import CLIENT_GONE, Job, run_jobs
from temper.server.streaming import ChunkWriter, SSEResponse, stream_jobs


@dataclass(slots=True)
class StreamPlan:
    writer: ChunkWriter
    logprobs_k: int | None
    include_usage: bool
    preamble: Sequence[dict] = field(default_factory=list)


async def respond(
    request: Request,
    jobs: Sequence[Job],
    record: RequestRecord,
    build: Callable[[list[StrategyResult]], Awaitable[dict[str, Any]]],
    stream: StreamPlan | None,
) -> Response:
    state = request.app.state
    state.admission.enter()
    if stream is not None:

        def close() -> None:
            state.admission.leave()
            record.finish(CLIENT_GONE)  # no-op when the stream already recorded its end

        config = state.config
        body = stream_jobs(
            jobs,
            stream.writer,
            record=record,
            heartbeat=config.heartbeat_interval,
            timeout=config.request_timeout or None,
            logprobs_k=stream.logprobs_k,
            include_usage=stream.include_usage,
            preamble=stream.preamble,
        )
        return SSEResponse(body, on_close=close)
    try:
        results = await run_jobs(request, jobs)
        payload = await build(results)
        usage = payload.get("usage") or {}
        record.prompt_tokens = usage.get("prompt_tokens", 0)
        record.completion_tokens = usage.get("completion_tokens", 0)
        record.finish(200)
        return JSONResponse(payload)
    finally:
        state.admission.leave()
