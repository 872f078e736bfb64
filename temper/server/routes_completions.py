"""POST /v1/completions: text or token-id prompts (one or many), echo, legacy log-probs.

Several prompts run concurrently, each its own strategy run; choices are numbered like vLLM
(prompt by prompt, n each). Response bodies follow OpenAI's `text_completion` schema plus a
`decoding` field with the strategy's metadata.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

from fastapi import APIRouter, Request
from fastapi.responses import Response

from temper.decoding.engine import Engine
from temper.decoding.strategies.base import Completion, StrategyResult
from temper.server.errors import bad_request
from temper.server.logprobs import TokenLogprobs, choice_outputs, legacy
from temper.server.metrics import RequestRecord
from temper.server.protocol import CompletionRequest
from temper.server.respond import StreamPlan, respond
from temper.server.serving import (
    Job,
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
from temper.server.text import OffsetCounter, TokenText

router = APIRouter()

MAX_PROMPTS = 256


def encode_prompts(engine: Engine, prompt, add_special_tokens: bool = True) -> list[tuple[list[int], str | None]]:
    """(token ids, text or None) per prompt, whichever of OpenAI's four prompt forms was sent."""
    if isinstance(prompt, str):
        prompts = [prompt]
    elif not prompt:
        raise bad_request("prompt: must not be empty", "prompt")
    elif isinstance(prompt[0], int):
        prompts = [prompt]
    else:
        prompts = list(prompt)
    if any(p == "" for p in prompts):
        raise bad_request("prompt: must not be empty", "prompt")
    if len(prompts) > MAX_PROMPTS:
        raise bad_request(f"prompt: at most {MAX_PROMPTS} prompts per request", "prompt")
    encode = lambda text: engine.tokenizer.encode(text, add_special_tokens=add_special_tokens)
    return [(encode(p), p) if isinstance(p, str) else ([int(t) for t in p], None) for p in prompts]


async def echo_logprobs(engine: Engine, prompt: Sequence[int], k: int) -> TokenLogprobs:
    """The prompt's own log-probs; the first token has none."""
    head = TokenLogprobs([prompt[0]], [None], [None])
    if len(prompt) < 2:
        return head
    (scored,) = await engine.score([list(prompt)], start=1, top_k=k)
    return head + TokenLogprobs.of(prompt[1:], scored.logp, scored.top_ids, scored.top_logps, k)


class CompletionChunks(ChunkWriter):
    """Chunk shapes of a streamed text_completion."""

    def __init__(self, rid: str, created: int, model: str, tt: TokenText, include_usage: bool):
        base = {"id": rid, "object": "text_completion", "created": created, "model": model}
        super().__init__(base, tt, include_usage)
        # text_offset per choice counted over every entry it sent (echo, deltas, final) in one
        # pass, so the chunks' offsets are exactly the non-streamed response's
        self.offsets: dict[int, OffsetCounter] = {}

    def _choice(self, index: int, text: str, lp: TokenLogprobs | None, reason: str | None) -> dict:
        logprobs = None
        if lp is not None:
            counter = self.offsets.setdefault(index, OffsetCounter(self.tt.tokenizer))
            logprobs = legacy(self.tt, lp, offsets=counter.take(lp.tokens))
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": reason}

    def delta(self, index, text, lp):
        return [self.chunk(self._choice(index, text, lp, None))]

    def final(self, index, text, lp, c: Completion, decoding):
        return [self.final_chunk(self._choice(index, text, lp, c.finish_reason), c, decoding)]


@router.post("/v1/completions")
async def create_completion(body: CompletionRequest, request: Request) -> Response:
    record = RequestRecord(request.app.state.metrics)
    with recorded(record):
        name, engine = resolve_model(request, body.model)
        record.model = name
        reject_unsupported(body)
        k = body.logprobs
        settings = sampling_settings(
            body,
            max_tokens=body.max_tokens,
            logprobs=k is not None,
            top_logprobs=k or 0,
            aliases={"top_logprobs": "logprobs"},
        )
        prompts = encode_prompts(engine, body.prompt)
        for ids, _ in prompts:
            check_prompt(engine, ids, settings.max_tokens, "prompt")
        jobs = make_jobs(request, engine, prompts, settings, body.decoding)
        record.strategy = jobs[0].strategy.name
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        tt: TokenText = request.app.state.token_texts[name]

        async def echo_parts(job: Job) -> tuple[str, TokenLogprobs | None]:
            if not body.echo:
                return "", None
            text = prompts[job.prompt_index][1] or engine.tokenizer.decode(job.req.prompt)
            lp = await echo_logprobs(engine, job.req.prompt, k) if k is not None else None
            return text, lp

        async def build(results: list[StrategyResult]) -> dict:
            choices = []
            for job, result in zip(jobs, results, strict=True):
                echo_text, echo_lp = await echo_parts(job)
                outputs = await choice_outputs(engine, job.req.prompt, result.completions, k)
                for c, (text, lp) in zip(result.completions, outputs, strict=True):
                    logprobs = None
                    if lp is not None:
                        logprobs = legacy(tt, echo_lp + lp if echo_lp is not None else lp)
                    choice = {
                        "index": len(choices),
                        "text": echo_text + text,
                        "logprobs": logprobs,
                        "finish_reason": c.finish_reason,
                    }
                    choices.append(with_metadata(choice, c))
            return response_body("text_completion", rid, created, name, choices, jobs, results)

        plan = None
        if body.stream:
            writer = CompletionChunks(rid, created, name, tt, body.include_usage())

            async def echoes() -> list[dict]:
                """Every choice's echoed prompt, first in its stream."""
                chunks = []
                for job in jobs:
                    echo_text, echo_lp = await echo_parts(job)
                    for i in range(job.stride):
                        chunks += writer.delta(job.prompt_index * job.stride + i, echo_text, echo_lp)
                return chunks

            plan = StreamPlan(writer, k, echoes if body.echo else None)
        return await respond(request, jobs, record, build, plan)
