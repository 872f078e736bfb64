"""The routes that do not decode: /v1/models, /tokenize, /detokenize, /metrics, and /health
(the one route the API key never guards: see edge.py)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from temper.server.errors import bad_request
from temper.server.metrics import CONTENT_TYPE
from temper.server.prompts import check_token_ids, message_dicts, render_chat
from temper.server.protocol import DetokenizeRequest, TokenizeRequest
from temper.server.responses import json_response
from temper.server.state import ServerState

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    """200 {"status": "ok"} while every engine serves; 503 naming those that cannot."""
    state: ServerState = request.app.state.temper
    dead = [name for name, engine in state.engines.items() if not getattr(engine, "healthy", True)]
    if dead:
        return JSONResponse({"status": "unhealthy", "unhealthy": dead}, status_code=503)
    return JSONResponse({"status": "ok"})


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    state: ServerState = request.app.state.temper
    return Response(state.metrics.render(), media_type=CONTENT_TYPE)


@router.get("/v1/models")
async def list_models(request: Request) -> dict:
    state: ServerState = request.app.state.temper
    data = [
        {
            "id": name,
            "object": "model",
            "created": state.started,
            "owned_by": "temper",
            "root": name,
            "parent": None,
            "max_model_len": engine.max_context,
        }
        for name, engine in state.engines.items()
    ]
    return {"object": "list", "data": data}


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request) -> Response:
    state: ServerState = request.app.state.temper
    name, engine = state.model(body.model)
    if (body.prompt is None) == (body.messages is None):
        raise bad_request("tokenize: send exactly one of prompt or messages", "prompt")
    if body.messages is not None:
        messages = message_dicts(body.messages)
        ids = await asyncio.to_thread(render_chat, engine, messages, body.add_generation_prompt)
    else:
        ids = await asyncio.to_thread(engine.tokenizer.encode, body.prompt, add_special_tokens=body.add_special_tokens)
    tt = state.token_texts[name]
    strs = [tt.token_str(t) for t in ids] if body.return_token_strs else None
    return await json_response(
        {"count": len(ids), "max_model_len": engine.max_context, "tokens": ids, "token_strs": strs}
    )


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request) -> Response:
    state: ServerState = request.app.state.temper
    _, engine = state.model(body.model)
    check_token_ids(engine, body.tokens, "tokens")
    return await json_response({"prompt": await asyncio.to_thread(engine.tokenizer.decode, body.tokens)})
