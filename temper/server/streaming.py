"""The stream writer: the runner's events for a stream=true request → server-sent events.

Real token streaming where tokens are final when sampled, honest heartbeats where they are not:
- Strategies with `streams_tokens` (sample) stream: each token becomes a chunk as the engine
  draws it (text only once it decodes cleanly; stop strings held back), with the log-probs of
  the tokens whose text it sends (StreamedChoice), as vLLM does.
- Other strategies (power, synthesis...) run to the end while `: heartbeat` SSE comments keep the
  connection alive, then their final text goes out in per-token chunks.
- Then the finish chunk per choice, the usage chunk when asked, and `data: [DONE]`.
- A failure after the headers went out travels as an error event, as vLLM sends it.

A client that disconnects cancels the generator (Starlette), which closes the runner's event
stream, which cancels the strategy tasks, which abort their engine sequences. The chunk shapes
of both routes are here (ChunkWriter and its two subclasses); the JSON bodies are responses.py's.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import numpy as np
from starlette.responses import StreamingResponse

from temper.decoding.engine import TokenDraw, Tokenizer
from temper.decoding.strategies.completion import Completion
from temper.server.chunks import chunk_writer
from temper.server.errors import CLIENT_GONE, strategy_error
from temper.server.events import DoneEvent, EchoEvent, Heartbeat, TokenEvent
from temper.server.generation import Generation
from temper.server.logprobs import TokenLogprobs, kept
from temper.server.metrics import RequestRecord
from temper.server.responses import (
    WEIGHT_VERSION_HEADER,
    decoding_field,
    weight_version,
)
from temper.server.run_output import RunOutput, usage
from temper.server.runner import Runner, Stream
from temper.server.text import ChoiceText, IncrementalDetokenizer, TokenText

log = logging.getLogger(__name__)

DONE = "data: [DONE]\n\n"
HEARTBEAT = ": heartbeat\n\n"


def sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


class SSEResponse(StreamingResponse):
    """A text/event-stream response that runs `on_close` however it ends, even when the client
    left before the body started (so in-flight slots are always given back)."""

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None], headers: dict[str, str]):
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers}
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
    """A choice streamed as the engine draws it: its text, and the entries (token id and, k
    given, log-probs: raw, or under q when `processed`) of tokens whose text has not gone out
    yet. An entry rides with the chunk that sends the first character of its token's text (its
    text_offset), so a chunk's entries always point into its own text: tokens of a held-back
    partial character or possible stop string wait with their text, tokens without text (eos)
    wait for the final chunk, and tokens a stop string cuts away never go (as `kept` drops
    them from non-streamed responses)."""

    def __init__(self, tokenizer: Tokenizer, stops: Sequence[str], k: int | None, processed: bool = False):
        self.text = ChoiceText(tokenizer, stops)
        self.k = k
        self.processed = processed
        self.waiting: list[tuple[int, TokenLogprobs]] = []  # (text offset, entry), in order
        self.sent = 0  # entries sent so far: the final chunk sends the completion's others
        # draws without what was asked for (the top alternatives, or logq when processed): from
        # then on the final chunk sends the entries, from the finished completion
        self.live = True

    def push(self, draw: TokenDraw) -> tuple[str, TokenLogprobs | None]:
        offset = len(self.text.text)  # the text decoded so far, as text_offsets counts it
        piece = self.text.push(draw.token)
        value = draw.logq if self.processed else draw.logp
        if self.live and ((self.k and (draw.top_ids is None or draw.top_logps is None)) or value is None):
            self.live = False
        if self.live:
            top = (draw.top_ids[None], draw.top_logps[None]) if self.k else (None, None)
            entry = TokenLogprobs.of([draw.token], np.array([value]), *top, k=self.k or 0)
            self.waiting.append((offset, entry))
        if not piece:
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


class StreamWriter:
    """One streamed response: turns the runner's events into SSE text."""

    def __init__(self, gen: Generation, tt: TokenText, record: RequestRecord):
        self.gen = gen
        self.tt = tt
        self.record = record
        self.writer = chunk_writer(gen, tt)
        self.streams: dict[int, StreamedChoice] = {}  # choices streamed token by token
        self.overflow = len(gen.runs) * gen.stride  # numbering for surplus choices
        self.outputs: list[RunOutput] = []

    def token(self, ev: TokenEvent) -> list[dict]:
        if ev.choice not in self.streams:
            stops = self.gen.runs[0].req.settings.stop
            self.streams[ev.choice] = StreamedChoice(self.tt.tokenizer, stops, self.gen.logprobs, self.gen.processed)
        piece, piece_lp = self.streams[ev.choice].push(ev.draw)
        if not piece:
            return []
        self.record.first_token()
        return self.writer.delta(ev.choice, piece, piece_lp)

    def echo(self, ev: EchoEvent) -> list[dict]:
        text, lp = ev.part
        base = ev.run.index * self.gen.stride
        return [c for i in range(self.gen.stride) for c in self.writer.delta(base + i, text, lp)]

    def done(self, out: RunOutput) -> list[dict]:
        """The rest of a finished run's choices: what streaming did not send, or all of it."""
        self.outputs.append(out)
        meta = {"strategy": self.gen.strategy.name, **out.result.metadata}
        chunks: list[dict] = []
        for i, (c, (final_text, lp)) in enumerate(zip(out.result.completions, out.choices, strict=True)):
            if lp is None:  # no log-probs asked for: the entries still carry the token ids
                lp = TokenLogprobs.of(c.tokens, None)[: kept(self.tt.tokenizer, c, final_text)]
            if i < self.gen.stride:
                index = out.run.index * self.gen.stride + i
            else:
                index, self.overflow = self.overflow, self.overflow + 1
            if index in self.streams:  # streamed token by token: send what is left
                rest, tail = self.streams[index].finish(final_text, lp)
                chunks += self.writer.final(index, rest, tail, c, meta)
                continue
            for piece, piece_lp in replay(self.tt.tokenizer, c, final_text, lp):
                self.record.first_token()
                chunks += self.writer.delta(index, piece, piece_lp)
            chunks += self.writer.final(index, "", None, c, meta)
        return chunks

    def end(self) -> list[dict]:
        """After every run: the usage chunk when asked for (the usage also goes to the metrics)."""
        totals = usage(self.outputs)
        self.record.count(totals)
        if not self.writer.include_usage:
            return []
        ordered = sorted(self.outputs, key=lambda o: o.run.index)
        return [self.writer.usage(totals, decoding_field(self.gen, ordered), weight_version(ordered))]


async def write_stream(
    runner: Runner, stream: Stream, gen: Generation, tt: TokenText, record: RequestRecord
) -> AsyncIterator[str]:
    """The SSE text of one streamed request, from the runner's events."""
    out = StreamWriter(gen, tt, record)
    status = CLIENT_GONE
    try:
        async for ev in runner.events(gen, stream):
            if isinstance(ev, Heartbeat):
                yield HEARTBEAT
                continue
            if isinstance(ev, TokenEvent):
                chunks = out.token(ev)
            elif isinstance(ev, EchoEvent):
                chunks = out.echo(ev)
            else:
                assert isinstance(ev, DoneEvent)
                chunks = out.done(ev.output)
            for chunk in chunks:
                yield sse(chunk)
        for chunk in out.end():
            yield sse(chunk)
        status = 200
        yield DONE
    except Exception as exc:
        # headers are gone: the error travels as an event, as vLLM sends it
        err = strategy_error(exc)
        status = err.status
        if status == 500:  # a bug: logged as the error handler logs a non-streamed one
            log.error("streamed request failed", exc_info=exc)
        elif status > 500:
            log.warning("streamed request ended: %d %s", status, err.message)
        yield sse(err.body())
        yield DONE
    finally:
        record.finish(status)


async def stream_response(runner: Runner, gen: Generation, tt: TokenText, record: RequestRecord) -> SSEResponse:
    """Admit the request, then answer with SSE; the stream holds the request's slot and its
    model's weights until it ends, however it ends."""
    stream = await runner.open_stream(gen)

    def close() -> None:
        stream.close()
        record.finish(CLIENT_GONE)  # a no-op when the stream already recorded its end

    headers = {WEIGHT_VERSION_HEADER: str(gen.engine.weight_version)}
    return SSEResponse(write_stream(runner, stream, gen, tt, record), on_close=close, headers=headers)
