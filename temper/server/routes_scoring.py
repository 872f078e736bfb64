"""POST /v1/logprobs: raw per-token log-probs of given text or token ids under a served model
(teacher and prompt log-probs for training clients), through the runner like every route that
does engine work.

  request  {"model", "prompt": text | [texts] | ids | [[ids]], "top_logprobs": k, "start": 1}
  response {"object": "list", "model", "data": [{"index", "object": "logprobs", "token_ids",
            "tokens", "logprobs": [null for positions < start, then floats],
            "top_logprobs": [null | [{"token_id", "token", "logprob"}]]}], "usage"}
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from fastapi import APIRouter, Request
from fastapi.responses import Response

from temper.decoding.engine import Scored
from temper.server.errors import bad_request
from temper.server.logprobs import TokenLogprobs
from temper.server.prompts import encode_prompts
from temper.server.protocol import LogprobsRequest
from temper.server.responses import WEIGHT_VERSION_HEADER, json_response
from temper.server.state import ServerState
from temper.server.text import TokenText

router = APIRouter()


def check_scoring(body: LogprobsRequest, seqs: Sequence[list[int]], max_context: int, max_logprobs: int) -> None:
    k = body.top_logprobs
    if k < 0 or (max_logprobs != -1 and k > max_logprobs):
        cap = "" if max_logprobs == -1 else f", at most this server's --max-logprobs {max_logprobs}"
        raise bad_request(f"top_logprobs: must be >= 0{cap}; got {k}", "top_logprobs")
    for ids in seqs:
        if len(ids) > max_context:
            raise bad_request(f"prompt: {len(ids)} tokens exceed the model's context of {max_context}", "prompt")
        if body.start > len(ids):
            raise bad_request(f"start: {body.start} is past the end of a {len(ids)}-token prompt", "start")


def scored_entry(tt: TokenText, i: int, ids: list[int], s: Scored, start: int, k: int) -> dict:
    head = TokenLogprobs(ids[:start], [None] * start, [None] * start)
    lp = head + TokenLogprobs.of(ids[start:], s.logp, s.top_ids, s.top_logps, k)
    top = [
        None if v is None else [{"token_id": t, "token": tt.token_str(t), "logprob": x} for t, x in row or []]
        for v, row in zip(lp.logp, lp.top, strict=True)
    ]
    return {
        "index": i,
        "object": "logprobs",
        "token_ids": ids,
        "tokens": [tt.token_str(t) for t in ids],
        "logprobs": lp.logp,
        "top_logprobs": top,
    }


@router.post("/v1/logprobs")
async def score(body: LogprobsRequest, request: Request) -> Response:
    state: ServerState = request.app.state.temper
    with state.metrics.record().failures() as record:
        record.strategy = "score"
        name, engine = state.model(body.model)
        record.model = name
        prompts = await asyncio.to_thread(encode_prompts, engine, body.prompt, body.add_special_tokens)
        seqs = [ids for ids, _ in prompts]
        check_scoring(body, seqs, engine.max_context, state.config.max_logprobs)

        async def work() -> tuple[int, list[Scored]]:  # runs holding the weights: one version
            return engine.weight_version, await engine.score(seqs, start=body.start, top_k=body.top_logprobs)

        ((version, scored),) = await state.runner.call(request, name, lambda: [work()])
        tt = state.token_texts[name]
        data = [
            scored_entry(tt, i, ids, s, body.start, body.top_logprobs)
            for i, (ids, s) in enumerate(zip(seqs, scored, strict=True))
        ]
        n_tokens = sum(len(ids) for ids in seqs)
        usage = {"prompt_tokens": n_tokens, "completion_tokens": 0, "total_tokens": n_tokens}
        record.count(usage)
        record.finish(200)
        body = {"object": "list", "model": name, "data": data, "usage": usage, "weight_version": version}
        return await json_response(body, {WEIGHT_VERSION_HEADER: str(version)})
