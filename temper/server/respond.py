"""Admit a validated request and answer it: a JSON body once every job is done, or an SSE
stream. Holds the in-flight slot for exactly as long as the work (or the stream) lasts."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from temper.decoding.strategies.base import StrategyResult
from temper.server.errors import CLIENT_GONE
from temper.server.metrics import RequestRecord
from temper.server.serving import Job, run_jobs
from temper.server.streaming import ChunkWriter, SSEResponse, stream_jobs


@dataclass(slots=True)
class StreamPlan:
    writer: ChunkWriter
    logprobs_k: int | None
    # chunks sent before any job's (an echoed prompt), worked out once the request is admitted
    preamble: Callable[[], Awaitable[Sequence[dict]]] | None = None


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
        try:
            preamble = await stream.preamble() if stream.preamble is not None else ()
        except BaseException:
            state.admission.leave()
            raise

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
            preamble=preamble,
        )
        return SSEResponse(body, on_close=close)
    try:
        results = await run_jobs(request, jobs)
        payload = await build(results)
        record.count(payload["usage"])
        record.finish(200)
        return JSONResponse(payload)
    finally:
        state.admission.leave()
