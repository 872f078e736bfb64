"""Server-sent events for stream=true: real token streaming where tokens are final when sampled,
honest heartbeats where they are not.

- Strategies with `streams_tokens` (sample) get an `on_token` sink: each token becomes a chunk
  as the engine draws it (text only once it decodes cleanly; stop strings held back), with the
  log-probs of the tokens whose text it sends (StreamedChoice), as vLLM does.
- Other strategies (power, synthesis...) run to the end while `: heartbeat` SSE comments keep the
  connection alive, then their final text goes out in per-token chunks.
- Then the finish chunk per choice, the usage chunk when asked, and `data: [DONE]`.

A client that disconnects cancels the generator (Starlette), which cancels the strategy tasks,
which abort their engine sequences. Chunk shapes belong to the routes (a ChunkWriter).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import numpy as np
from starlette.responses import StreamingResponse

from temper.decoding.engine import TokenDraw, Tokenizer
from temper.decoding.strategies.base import Completion
from temper.server.errors import CLIENT_GONE, request_timeout
from temper.server.logprobs import TokenLogprobs, choice_outputs
from temper.server.metrics import RequestRecord
from temper.server.serving import Job, decoding_field, start, stop, strategy_error, usage, with_metadata
from temper.server.text import ChoiceText, IncrementalDetokenizer, TokenText

log = logging.getLogger(__name__)

DONE = "data: [DONE]\n\n"
HEARTBEAT = ": heartbeat\n\n"


def sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


class ChunkWriter:
    """A route's chunk shapes: every chunk is `base` (id, object, created, model...) plus its
    choices. Routes implement delta and final; each returns the chunks to send, possibly none."""

    def __init__(self, base: dict[str, Any], tt: TokenText, include_usage: bool):
        self.base = base
        self.tt = tt
        self.include_usage = include_usage

    def chunk(self, choice: dict, **extra: Any) -> dict:
        out = {**self.base, "choices": [choice], **extra}
        if self.include_usage:
            out["usage"] = None
        return out

    def final_chunk(self, choice: dict, c: Completion, decoding: dict) -> dict:
        return self.chunk(with_metadata(choice, c), decoding=decoding)

    def delta(self, index: int, text: str, lp: TokenLogprobs | None) -> list[dict]:
        raise NotImplementedError

    def final(self, index: int, text: str, lp: TokenLogprobs | None, c: Completion, decoding: dict) -> list[dict]:
        """The choice's last chunks (finish_reason: c's); lp holds the entries no earlier chunk sent."""
        raise NotImplementedError

    def usage(self, usage: dict, decoding: dict) -> dict:
        return {**self.base, "choices": [], "usage": usage, "decoding": decoding}


class SSEResponse(StreamingResponse):
    """A text/event-stream response that runs `on_close` however it ends, even when the client
    left before the body started (so in-flight slots are always given back)."""

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None]):
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self._on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


def replay(
    tokenizer: Tokenizer, c: Completion, final_text: str, lp: TokenLogprobs | None
) -> Iterator[tuple[str, TokenLogprobs | None]]:
    """A finished completion as (text piece, its tokens' log-probs) per token, clipped to the
    final text; the last piece carries whatever text and log-probs remain."""
    detok, sent, lp_from = IncrementalDetokenizer(tokenizer), "", 0
    for j, tok in enumerate(c.tokens):
        piece = detok.push(tok)
        if not piece:
            continue
        if not final_text.startswith(sent + piece):
            break
        yield piece, (lp[lp_from : j + 1] if lp is not None else None)
        sent, lp_from = sent + piece, j + 1
    rest = final_text[len(sent) :]
    tail = lp[lp_from:] if lp is not None else None
    if rest or (tail is not None and tail.tokens):
        yield rest, tail


class StreamedChoice:
    """A choice streamed as the engine draws it: its text, and the log-prob entries (k given)
    of tokens whose text has not gone out yet. An entry rides with the chunk that sends the
    first character of its token's text (its text_offset), so a chunk's entries always point
    into its own text: tokens of a held-back partial character or possible stop string wait
    with their text, tokens without text (eos) wait for the final chunk, and tokens a stop
    string cuts away never go (as `kept` drops them from non-streamed responses)."""

    def __init__(self, tokenizer: Tokenizer, stops: Sequence[str], k: int | None):
        self.text = ChoiceText(tokenizer, stops)
        self.k = k
        self.waiting: list[tuple[int, TokenLogprobs]] = []  # (text offset, entry), in order
        self.sent = 0  # entries sent so far: the final chunk sends the completion's others
        # draws without the top alternatives asked for (an engine that finds them only at the
        # end): from then on the final chunk sends the entries, from the finished completion
        self.live = k is not None

    def push(self, draw: TokenDraw) -> tuple[str, TokenLogprobs | None]:
        offset = len(self.text.text)  # the text decoded so far, as text_offsets counts it
        piece = self.text.push(draw.token)
        if self.live and self.k and (draw.top_ids is None or draw.top_logps is None):
            self.live = False
        if self.live:
            top = (draw.top_ids[None], draw.top_logps[None]) if self.k else (None, None)
            entry = TokenLogprobs.of([draw.token], np.array([draw.logp]), *top, k=self.k or 0)
            self.waiting.append((offset, entry))
        if not piece or self.k is None:
            return piece, None
        n = 0
        while n < len(self.waiting) and self.waiting[n][0] < self.text.sent:
            n += 1
        out = TokenLogprobs([], [], [])
        for _, entry in self.waiting[:n]:
            out += entry
        del self.waiting[:n]
        self.sent += n
        return piece, out

    def finish(self, final_text: str, lp: TokenLogprobs | None) -> tuple[str, TokenLogprobs | None]:
        """The text and entries left to send, given the completion's final text and entries."""
        return self.text.finish(final_text), (lp[self.sent :] if lp is not None else None)


async def stream_jobs(
    jobs: Sequence[Job],
    writer: ChunkWriter,
    *,
    record: RequestRecord,
    heartbeat: float,
    timeout: float | None,
    logprobs_k: int | None,
    preamble: Sequence[dict] = (),
) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    engine = jobs[0].req.engine
    tokenizer = engine.tokenizer
    events: deque[tuple[str, int, TokenDraw | None]] = deque()
    ready = asyncio.Event()

    def push(kind: str, a: int, b: TokenDraw | None = None) -> None:
        events.append((kind, a, b))
        ready.set()

    owner: dict[int, Job] = {}  # streamed choice index -> its job
    for job in jobs:
        if job.strategy.streams_tokens:
            base = job.prompt_index * job.stride
            owner.update({base + i: job for i in range(job.stride)})
            # engines call this on the event loop; True = keep sampling (cancellation stops us)
            job.req.on_token = lambda i, draw, base=base: push("tok", base + i, draw) or True
    tasks = start(jobs)
    for j, t in enumerate(tasks):
        t.add_done_callback(lambda _t, j=j: push("done", j))
    deadline = loop.time() + timeout if timeout else None
    streams: dict[int, StreamedChoice] = {}
    results: list = [None] * len(jobs)
    overflow = len(jobs) * max(j.stride for j in jobs)  # numbering for surplus choices
    status = CLIENT_GONE
    try:
        for chunk in preamble:
            yield sse(chunk)
        pending = len(jobs)
        while pending:
            if not events:
                ready.clear()
                wait = heartbeat if deadline is None else min(heartbeat, deadline - loop.time())
                try:
                    if wait <= 0:
                        raise TimeoutError
                    await asyncio.wait_for(ready.wait(), wait)
                except TimeoutError:
                    if deadline is not None and loop.time() >= deadline:
                        raise request_timeout(timeout) from None
                    yield HEARTBEAT
                continue
            kind, a, b = events.popleft()
            if kind == "tok":
                if a not in streams:
                    # the strategy's settings as it runs them (its params may set other stops)
                    job = owner.get(a, jobs[0])
                    streams[a] = StreamedChoice(tokenizer, job.req.settings.stop, logprobs_k)
                piece, piece_lp = streams[a].push(b)
                if piece:
                    record.first_token()
                    for chunk in writer.delta(a, piece, piece_lp):
                        yield sse(chunk)
                continue
            pending -= 1
            job = jobs[a]
            result = results[a] = tasks[a].result()  # a failed strategy raises here
            meta = {"strategy": job.strategy.name, **result.metadata}
            outputs = await choice_outputs(engine, job.req.prompt, result.completions, logprobs_k)
            for i, (c, (final_text, lp)) in enumerate(zip(result.completions, outputs, strict=True)):
                if i < job.stride:
                    index = job.prompt_index * job.stride + i
                else:
                    index, overflow = overflow, overflow + 1
                if index in streams:  # streamed token by token: send what is left
                    rest, tail = streams[index].finish(final_text, lp)
                    chunks = writer.final(index, rest, tail, c, meta)
                else:
                    chunks = []
                    for piece, piece_lp in replay(tokenizer, c, final_text, lp):
                        record.first_token()
                        chunks += writer.delta(index, piece, piece_lp)
                    chunks += writer.final(index, "", None, c, meta)
                for chunk in chunks:
                    yield sse(chunk)
        totals = usage(jobs, results)
        record.count(totals)
        if writer.include_usage:
            yield sse(writer.usage(totals, decoding_field(jobs, results)))
        status = 200
        yield DONE
    except Exception as exc:
        # headers are gone: the error travels as an event, as vLLM sends it
        err = strategy_error(exc)
        status = err.status
        if status >= 500:  # a bug: logged as the error handler logs a non-streamed one
            log.error("streamed request failed", exc_info=exc)
        yield sse(err.body())
        yield DONE
    finally:
        stop(tasks)
        record.finish(status)
