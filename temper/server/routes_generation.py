"""POST /v1/completions and /v1/chat/completions: thin routes over prompt building, the runner,
and the response builder (JSON) or the stream writer (SSE).

Completions take text or token-id prompts (one or many; each its own strategy run, choices
numbered prompt by prompt as vLLM does), echo and legacy log-probs; chat takes messages through
the model's own chat template. Both answer OpenAI's shapes plus a `decoding` field.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from fastapi import APIRouter, Request
from fastapi.responses import Response

from temper.server.prompts import Generation, build_chat, build_completion
from temper.server.protocol import ChatCompletionRequest, CompletionRequest
from temper.server.responses import WEIGHT_VERSION_HEADER, json_response, response_body
from temper.server.state import ServerState
from temper.server.streaming import stream_response

router = APIRouter()

Build = Callable[..., Generation]  # prompts.build_completion or prompts.build_chat


async def generate(request: Request, body: CompletionRequest | ChatCompletionRequest, build: Build) -> Response:
    """Build the request's Generation, run it, answer it (JSON or SSE); failures are counted
    in the metrics with the status they get."""
    state: ServerState = request.app.state.temper
    with state.metrics.record().failures() as record:
        target = state.target(body.model)
        record.model = target.name
        gen = await asyncio.to_thread(build, target, body)  # tokenising: off the event loop
        record.strategy = gen.strategy.name
        tt = state.token_texts[target.name]
        if gen.stream:
            return await stream_response(state.runner, gen, tt, record)
        outputs = await state.runner.run(request, gen)
        payload = await asyncio.to_thread(response_body, gen, tt, outputs)  # detokenising, too
        record.count(payload["usage"])
        record.finish(200)
        return await json_response(payload, {WEIGHT_VERSION_HEADER: str(payload["weight_version"])})


@router.post("/v1/completions")
async def create_completion(body: CompletionRequest, request: Request) -> Response:
    return await generate(request, body, build_completion)


@router.post("/v1/chat/completions")
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
    return await generate(request, body, build_chat)
