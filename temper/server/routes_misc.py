"""The routes that do not decode: /v1/models, /v1/logprobs (scoring), /tokenize, /detokenize,
and the unauthenticated /health plus /metrics.

/v1/logprobs is temper's own (training clients use it for teacher / prompt log-probs):
  request  {"model", "prompt": text | [texts] | ids | [[ids]], "top_logprobs": k, "start": 1}
  response {"object": "list", "model", "data": [{"index", "object": "logprobs", "token_ids",
            "tokens", "logprobs": [null for positions < start, then floats],
            "top_logprobs": [null | [{"token_id", "token", "logprob"}]]}], "usage"}
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from temper.decoding.engine import Engine
from temper.decoding.strategies.base import MAX_TOP_LOGPROBS
from temper.server.errors import bad_request, request_timeout
from temper.server.logprobs import TokenLogprobs
from temper.server.metrics import RequestRecord
from temper.server.protocol import DetokenizeRequest, LogprobsRequest, TokenizeRequest
from temper.server.routes_chat import message_dicts, render_chat
from temper.server.routes_completions import encode_prompts
from temper.server.serving import recorded, resolve_model
from temper.server.text import TokenText

router = APIRouter()  # behind the API key
open_router = APIRouter()  # never behind it


def check_token_ids(engine: Engine, ids: list[int], param: str) -> None:
    vocab = engine.tokenizer.vocab_size
    if any(not 0 <= t < vocab for t in ids):
        raise bad_request(f"{param}: token ids must be in [0, {vocab})", param)


@open_router.get("/health")
async def health() -> Response:
    return Response(status_code=200)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    state = request.app.state
    text = state.metrics.render(state.engines, state.admission.in_flight, state.admission.limit)
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")


@router.get("/v1/models")
async def list_models(request: Request) -> dict:
    state = request.app.state
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


@router.post("/v1/logprobs")
async def score(body: LogprobsRequest, request: Request) -> Response:
    state = request.app.state
    record = RequestRecord(state.metrics, strategy="score")
    with recorded(record):
        name, engine = resolve_model(request, body.model)
        record.model = name
        k = body.top_logprobs
        if not 0 <= k <= MAX_TOP_LOGPROBS:
            raise bad_request(f"top_logprobs: must be in [0, {MAX_TOP_LOGPROBS}], got {k}", "top_logprobs")
        seqs = [ids for ids, _ in encode_prompts(engine, body.prompt, body.add_special_tokens)]
        for ids in seqs:
            check_token_ids(engine, ids, "prompt")
            if len(ids) > engine.max_context:
                raise bad_request(
                    f"prompt: {len(ids)} tokens exceed the model's context of {engine.max_context}", "prompt"
                )
            if body.start > len(ids):
                raise bad_request(f"start: {body.start} is past the end of a {len(ids)}-token prompt", "start")
        state.admission.enter()
        try:
            timeout = state.config.request_timeout or None
            try:
                scored = await asyncio.wait_for(engine.score(seqs, start=body.start, top_k=k), timeout)
            except TimeoutError:
                raise request_timeout(timeout) from None
        finally:
            state.admission.leave()
        tt: TokenText = state.token_texts[name]
        data = []
        for i, (ids, s) in enumerate(zip(seqs, scored, strict=True)):
            head = TokenLogprobs(ids[: body.start], [None] * body.start, [None] * body.start)
            lp = head + TokenLogprobs.of(ids[body.start :], s.logp, s.top_ids, s.top_logps, k)
            top = [
                None if v is None else [{"token_id": t, "token": tt.token_str(t), "logprob": x} for t, x in row or []]
                for v, row in zip(lp.logp, lp.top, strict=True)
            ]
            data.append(
                {
                    "index": i,
                    "object": "logprobs",
                    "token_ids": ids,
                    "tokens": [tt.token_str(t) for t in ids],
                    "logprobs": lp.logp,
                    "top_logprobs": top,
                }
            )
        n_tokens = sum(len(ids) for ids in seqs)
        usage = {"prompt_tokens": n_tokens, "completion_tokens": 0, "total_tokens": n_tokens}
        record.count(usage)
        record.finish(200)
        return JSONResponse({"object": "list", "model": name, "data": data, "usage": usage})


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request) -> dict:
    name, engine = resolve_model(request, body.model)
    if (body.prompt is None) == (body.messages is None):
        raise bad_request("tokenize: send exactly one of prompt or messages", "prompt")
    if body.messages is not None:
        ids = render_chat(engine, message_dicts(body.messages), body.add_generation_prompt)
    else:
        ids = engine.tokenizer.encode(body.prompt, add_special_tokens=body.add_special_tokens)
    tt: TokenText = request.app.state.token_texts[name]
    strs = [tt.token_str(t) for t in ids] if body.return_token_strs else None
    return {"count": len(ids), "max_model_len": engine.max_context, "tokens": ids, "token_strs": strs}


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request) -> dict:
    _, engine = resolve_model(request, body.model)
    check_token_ids(engine, body.tokens, "tokens")
    return {"prompt": engine.tokenizer.decode(body.tokens)}
