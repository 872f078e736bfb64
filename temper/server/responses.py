"""The response builder: RunOutputs → an OpenAI JSON body (`text_completion` or
`chat.completion`), field for field OpenAI's, plus temper's `decoding` field (the strategy's
metadata) on the body and on each choice that has its own. Pure: no engine calls, no I/O.
The streamed shapes are streaming.py's; both take the shared pieces from here.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

from temper.decoding.strategies.completion import Completion
from temper.server.logprobs import TokenLogprobs, chat_content, legacy
from temper.server.prompts import Generation
from temper.server.runner import RunOutput, usage
from temper.server.text import TokenText

OBJECTS = {"completion": "text_completion", "chat": "chat.completion"}
ID_PREFIX = {"completion": "cmpl", "chat": "chatcmpl"}


def response_id(gen: Generation) -> tuple[str, int]:
    """A fresh response id and creation time for a generation."""
    return f"{ID_PREFIX[gen.kind]}-{uuid.uuid4().hex}", int(time.time())


def decoding_field(gen: Generation, outputs: Sequence[RunOutput]) -> dict[str, Any]:
    """The response's `decoding` field: the strategy's metadata (one entry per prompt when a
    completions request had several)."""
    name = gen.strategy.name
    if len(outputs) == 1:
        return {"strategy": name, **outputs[0].result.metadata}
    return {"strategy": name, "prompts": [dict(o.result.metadata) for o in outputs]}


def with_metadata(choice: dict[str, Any], c: Completion) -> dict[str, Any]:
    """A response choice plus its completion's own strategy metadata, when it has any."""
    if c.metadata:
        choice["decoding"] = c.metadata
    return choice


def chat_logprobs(tt: TokenText, lp: TokenLogprobs | None) -> dict | None:
    return {"content": chat_content(tt, lp)} if lp is not None else None


def choice_body(gen: Generation, tt: TokenText, index: int, c: Completion, text: str, lp: TokenLogprobs | None) -> dict:
    if gen.kind == "chat":
        choice = {
            "index": index,
            "message": {"role": "assistant", "content": text},
            "logprobs": chat_logprobs(tt, lp),
            "finish_reason": c.finish_reason,
        }
    else:
        choice = {
            "index": index,
            "text": text,
            "logprobs": legacy(tt, lp) if lp is not None else None,
            "finish_reason": c.finish_reason,
        }
    return with_metadata(choice, c)


def response_body(gen: Generation, tt: TokenText, outputs: Sequence[RunOutput]) -> dict[str, Any]:
    """The whole JSON body. Choices are numbered prompt by prompt, n each (vLLM's order); an
    echoed prompt leads each of its choices' text and log-probs."""
    choices = []
    for o in outputs:
        echo_text, echo_lp = o.echo if o.echo is not None else ("", None)
        for c, (text, lp) in zip(o.result.completions, o.choices, strict=True):
            if echo_lp is not None and lp is not None:
                lp = echo_lp + lp
            choices.append(choice_body(gen, tt, len(choices), c, echo_text + text, lp))
    rid, created = response_id(gen)
    return {
        "id": rid,
        "object": OBJECTS[gen.kind],
        "created": created,
        "model": gen.model,
        "choices": choices,
        "usage": usage(outputs),
        "system_fingerprint": None,
        "decoding": decoding_field(gen, outputs),
    }
