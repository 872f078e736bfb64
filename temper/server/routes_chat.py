"""POST /v1/chat/completions: messages through the model's own chat template (never flattened
into a transcript by us), OpenAI's `chat.completion` bodies and chunks, plus `decoding`."""

from __future__ import annotations

import time
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import Response

from temper.decoding.engine import Engine
from temper.decoding.strategies.base import Completion, StrategyResult
from temper.server.errors import bad_request
from temper.server.logprobs import TokenLogprobs, chat_content, choice_outputs
from temper.server.metrics import RequestRecord
from temper.server.protocol import ChatCompletionRequest, ChatMessage
from temper.server.respond import StreamPlan, respond
from temper.server.serving import (
    check_prompt,
    make_jobs,
    recorded,
    reject_unsupported,
    resolve_model,
    response_body,
    sampling_settings,
    with_metadata,
)
from temper.server.streaming import ChunkWriter
from temper.server.text import TokenText

router = APIRouter()

ROLES = {"system", "user", "assistant", "tool", "developer"}


def message_dicts(messages: list[ChatMessage]) -> list[dict[str, str]]:
    """Messages as the chat template wants them: role and text content (text parts joined)."""
    out = []
    for i, m in enumerate(messages):
        if m.role not in ROLES:
            raise bad_request(f"messages.{i}.role: unknown role {m.role!r}", f"messages.{i}.role")
        content = m.content
        if isinstance(content, list):
            parts = []
            for p in content:
                if p.type != "text" or p.text is None:
                    raise bad_request(
                        f"messages.{i}.content: only text parts are supported, got {p.type!r}", f"messages.{i}.content"
                    )
                parts.append(p.text)
            content = "".join(parts)
        d = {"role": "system" if m.role == "developer" else m.role, "content": content or ""}
        if m.name:
            d["name"] = m.name
        out.append(d)
    return out


def render_chat(engine: Engine, messages: list[dict[str, str]], add_generation_prompt: bool) -> list[int]:
    try:
        return engine.tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
    except Exception as exc:  # jinja errors from templates that refuse a message order
        raise bad_request(f"messages: the model's chat template rejected them: {exc}", "messages") from None


def _logprobs(tt: TokenText, lp: TokenLogprobs | None) -> dict | None:
    return {"content": chat_content(tt, lp)} if lp is not None else None


class ChatChunks(ChunkWriter):
    """Chunk shapes of a streamed chat.completion: a role delta first for every choice."""

    def __init__(self, rid: str, created: int, model: str, tt: TokenText, include_usage: bool):
        base = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model}
        super().__init__({**base, "system_fingerprint": None}, tt, include_usage)
        self.seen: set[int] = set()

    def _opening(self, index: int) -> list[dict]:
        if index in self.seen:
            return []
        self.seen.add(index)
        delta = {"role": "assistant", "content": ""}
        return [self.chunk({"index": index, "delta": delta, "logprobs": None, "finish_reason": None})]

    def delta(self, index, text, lp):
        choice = {"index": index, "delta": {"content": text}, "logprobs": _logprobs(self.tt, lp), "finish_reason": None}
        return self._opening(index) + [self.chunk(choice)]

    def final(self, index, text, lp, c: Completion, decoding):
        delta = {"content": text} if text else {}
        choice = {"index": index, "delta": delta, "logprobs": _logprobs(self.tt, lp), "finish_reason": c.finish_reason}
        return self._opening(index) + [self.final_chunk(choice, c, decoding)]


@router.post("/v1/chat/completions")
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
    record = RequestRecord(request.app.state.metrics)
    with recorded(record):
        name, engine = resolve_model(request, body.model)
        record.model = name
        reject_unsupported(body)
        if body.top_logprobs is not None and not body.logprobs and body.top_logprobs > 0:
            raise bad_request("top_logprobs: requires logprobs to be true", "top_logprobs")
        max_tokens, alias = body.max_tokens, "max_tokens"
        if body.max_completion_tokens is not None:
            max_tokens, alias = body.max_completion_tokens, "max_completion_tokens"
        k = (body.top_logprobs or 0) if body.logprobs else None
        settings = sampling_settings(
            body, max_tokens=max_tokens, logprobs=k is not None, top_logprobs=k or 0, aliases={"max_tokens": alias}
        )
        messages = message_dicts(body.messages)
        ids = render_chat(engine, messages, body.add_generation_prompt)
        check_prompt(engine, ids, settings.max_tokens, "messages")
        question = next((m["content"] for m in reversed(messages) if m["role"] == "user"), None)
        jobs = make_jobs(request, engine, [(ids, question)], settings, body.decoding)
        record.strategy = jobs[0].strategy.name
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        tt: TokenText = request.app.state.token_texts[name]

        async def build(results: list[StrategyResult]) -> dict:
            (job,), (result,) = jobs, results
            outputs = await choice_outputs(engine, job.req.prompt, result.completions, k)
            choices = [
                with_metadata(
                    {
                        "index": i,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": _logprobs(tt, lp),
                        "finish_reason": c.finish_reason,
                    },
                    c,
                )
                for i, (c, (text, lp)) in enumerate(zip(result.completions, outputs, strict=True))
            ]
            return response_body("chat.completion", rid, created, name, choices, jobs, results)

        plan = None
        if body.stream:
            plan = StreamPlan(ChatChunks(rid, created, name, tt, body.include_usage()), k)
        return await respond(request, jobs, record, build, plan)
