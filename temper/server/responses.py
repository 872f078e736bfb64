"""The response builder: RunOutputs → an OpenAI JSON body (`text_completion` or
`chat.completion`), field for field OpenAI's, plus temper's `decoding` field (the strategy's
metadata) on the body and on each choice that has its own. Pure: no engine calls, no I/O.
The streamed shapes are streaming.py's; both take the shared pieces from here.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Sequence
from typing import Any

from fastapi.responses import Response

from temper.decoding.strategies.completion import Completion
from temper.server.logprobs import TokenLogprobs, chat_content, legacy, prompt_logprobs
from temper.server.prompts import Generation
from temper.server.runner import RunOutput, usage
from temper.server.text import TokenText

OBJECTS = {"completion": "text_completion", "chat": "chat.completion"}
ID_PREFIX = {"completion": "cmpl", "chat": "chatcmpl"}
WEIGHT_VERSION_HEADER = "X-Weight-Version"  # the weights that produced a response (RL trainers)


async def json_response(payload: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    """A JSON response rendered off the event loop: long outputs (thousands of tokens with
    log-probs, a tokenised megabyte) take tens of milliseconds to serialise."""
    body = await asyncio.to_thread(json.dumps, payload, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return Response(body.encode(), media_type="application/json", headers=headers)


def response_id(gen: Generation) -> tuple[str, int]:
    """The response id (vLLM's: from the client's request_id when it sent one) and creation time."""
    return f"{ID_PREFIX[gen.kind]}-{gen.request_id or uuid.uuid4().hex}", int(time.time())


def decoding_field(gen: Generation, outputs: Sequence[RunOutput]) -> dict[str, Any]:
    """The response's `decoding` field: the strategy's metadata (one entry per prompt when a
    completions request had several)."""
    name = gen.strategy.name
    if len(outputs) == 1:
        return {"strategy": name, **outputs[0].result.metadata, "cost": gen.cost}
    return {"strategy": name, "cost": gen.cost, "prompts": [dict(o.result.metadata) for o in outputs]}


def weight_version(outputs: Sequence[RunOutput]) -> int:
    """The weight version every output of a request shares (the server never updates weights
    while a request runs)."""
    return max((o.weight_version for o in outputs), default=0)


def with_metadata(choice: dict[str, Any], c: Completion) -> dict[str, Any]:
    """A response choice plus its completion's own strategy metadata, when it has any."""
    if c.metadata:
        choice["decoding"] = c.metadata
    return choice


def chat_logprobs(gen: Generation, tt: TokenText, lp: TokenLogprobs | None) -> dict | None:
    return {"content": chat_content(tt, lp, gen.as_ids)} if lp is not None else None


def choice_body(gen: Generation, tt: TokenText, index: int, c: Completion, text: str, lp: TokenLogprobs | None) -> dict:
    if gen.kind == "chat":
        choice = {
            "index": index,
            "message": {"role": "assistant", "content": text},
            "logprobs": chat_logprobs(gen, tt, lp),
            "finish_reason": c.finish_reason,
        }
    else:
        choice = {
            "index": index,
            "text": text,
            "logprobs": legacy(tt, lp, as_ids=gen.as_ids) if lp is not None else None,
            "finish_reason": c.finish_reason,
        }
    if gen.return_token_ids:
        choice["token_ids"] = [int(t) for t in c.tokens]
    return with_metadata(choice, c)


def output_choices(gen: Generation, tt: TokenText, o: RunOutput, first_index: int) -> list[dict]:
    """One prompt run's choices. An echoed prompt leads each choice's text and log-probs
    (vLLM leaves its text out when token ids are returned: they say what the prompt was)."""
    echo_text, echo_lp = o.echo if o.echo is not None else ("", None)
    if gen.return_token_ids:
        echo_text = ""
    prompt_lp = (
        prompt_logprobs(tt, o.run.req.prompt, o.prompt_scored, gen.prompt_logprobs or 0) if o.prompt_scored else None
    )
    out = []
    for c, (text, lp) in zip(o.result.completions, o.choices, strict=True):
        if echo_lp is not None and lp is not None:
            lp = echo_lp + lp
        choice = choice_body(gen, tt, first_index + len(out), c, echo_text + text, lp)
        if gen.kind == "completion":
            if gen.return_token_ids:
                choice["prompt_token_ids"] = list(o.run.req.prompt)
            if prompt_lp is not None:
                choice["prompt_logprobs"] = prompt_lp
        out.append(choice)
    return out


def response_body(gen: Generation, tt: TokenText, outputs: Sequence[RunOutput]) -> dict[str, Any]:
    """The whole JSON body. Choices are numbered prompt by prompt, n each (vLLM's order)."""
    choices: list[dict] = []
    for o in outputs:
        choices += output_choices(gen, tt, o, len(choices))
    rid, created = response_id(gen)
    body = {
        "id": rid,
        "object": OBJECTS[gen.kind],
        "created": created,
        "model": gen.model,
        "choices": choices,
        "usage": usage(outputs),
        "system_fingerprint": None,
        "weight_version": weight_version(outputs),
        "decoding": decoding_field(gen, outputs),
    }
    if gen.kind == "chat":  # vLLM puts a chat's prompt fields at the top level
        (o,) = outputs
        if gen.return_token_ids:
            body["prompt_token_ids"] = list(o.run.req.prompt)
        if o.prompt_scored is not None:
            body["prompt_logprobs"] = prompt_logprobs(tt, o.run.req.prompt, o.prompt_scored, gen.prompt_logprobs or 0)
    return body
