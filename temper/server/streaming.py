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
from temper.server.errors import CLIENT_GONE
from temper.server.logprobs import TokenLogprobs, kept, legacy
from temper.server.metrics import RequestRecord
from temper.server.prompts import Generation
from temper.server.responses import (
    WEIGHT_VERSION_HEADER,
    chat_logprobs,
    decoding_field,
    response_id,
    weight_version,
    with_metadata,
)
from temper.server.runner import (
    DoneEvent,
    EchoEvent,
    Heartbeat,
    Runner,
    RunOutput,
    Stream,
    TokenEvent,
    strategy_error,
    usage,
)
from temper.server.text import ChoiceText, IncrementalDetokenizer, OffsetCounter, TokenText

log = logging.getLogger(__name__)

DONE = "data: [DONE]\n\n"
HEARTBEAT = ": heartbeat\n\n"


def sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


class ChunkWriter:
    """A route's chunk shapes: every chunk is `base` (id, object, created, model...) plus its
    choices. Subclasses implement delta and final; each returns the chunks to send, possibly
    none. `entries` are the chunk's tokens with their log-probs: the log-probs go out when the
    request asked for them, the token ids when it asked for those (return_token_ids)."""

    def __init__(self, gen: Generation, tt: TokenText, base: dict[str, Any]):
        self.gen = gen
        self.tt = tt
        self.base = base
        self.include_usage = gen.include_usage
        self.seen: set[int] = set()  # choices that have sent their first chunk

    def chunk(self, choice: dict, **extra: Any) -> dict:
        out = {**self.base, "choices": [choice], **extra}
        if self.include_usage:
            out["usage"] = None
        return out

    def first(self, index: int) -> bool:
        """True once per choice: for what only its first chunk carries."""
        if index in self.seen:
            return False
        self.seen.add(index)
        return True

    def prompt_ids(self, index: int) -> list[int]:
        run = self.gen.runs[min(index // max(self.gen.stride, 1), len(self.gen.runs) - 1)]
        return list(run.req.prompt)

    def logprobs(self, entries: TokenLogprobs | None) -> TokenLogprobs | None:
        return entries if self.gen.logprobs is not None else None

    def token_ids(self, choice: dict, entries: TokenLogprobs | None) -> dict:
        if self.gen.return_token_ids:
            choice["token_ids"] = list(entries.tokens) if entries is not None else []
        return choice

    def final_chunk(self, choice: dict, c: Completion, decoding: dict) -> dict:
        return self.chunk(with_metadata(choice, c), decoding=decoding)

    def delta(self, index: int, text: str, entries: TokenLogprobs | None) -> list[dict]:
        raise NotImplementedError

    def final(self, index: int, text: str, entries: TokenLogprobs | None, c: Completion, decoding: dict) -> list[dict]:
        """The choice's last chunks (finish_reason: c's); entries: those no earlier chunk sent."""
        raise NotImplementedError

    def usage(self, usage: dict, decoding: dict, version: int) -> dict:
        return {**self.base, "choices": [], "usage": usage, "weight_version": version, "decoding": decoding}


class CompletionChunks(ChunkWriter):
    """Chunk shapes of a streamed text_completion; a choice's first chunk carries its prompt's
    token ids when they are asked for (vLLM's)."""

    def __init__(self, gen: Generation, tt: TokenText):
        rid, created = response_id(gen)
        super().__init__(gen, tt, {"id": rid, "object": "text_completion", "created": created, "model": gen.model})
        # text_offset per choice counted over every entry it sent (echo, deltas, final) in one
        # pass, so the chunks' offsets are exactly the non-streamed response's
        self.offsets: dict[int, OffsetCounter] = {}

    def _choice(self, index: int, text: str, entries: TokenLogprobs | None, reason: str | None) -> dict:
        logprobs, lp = None, self.logprobs(entries)
        if lp is not None:
            counter = self.offsets.setdefault(index, OffsetCounter(self.tt.tokenizer))
            logprobs = legacy(self.tt, lp, offsets=counter.take(lp.tokens), as_ids=self.gen.as_ids)
        choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": reason}
        if self.first(index) and self.gen.return_token_ids:
            choice["prompt_token_ids"] = self.prompt_ids(index)
        return self.token_ids(choice, entries)

    def delta(self, index, text, entries):
        return [self.chunk(self._choice(index, text, entries, None))]

    def final(self, index, text, entries, c: Completion, decoding):
        return [self.final_chunk(self._choice(index, text, entries, c.finish_reason), c, decoding)]


class ChatChunks(ChunkWriter):
    """Chunk shapes of a streamed chat.completion: a role delta first for every choice (with
    the prompt's token ids at the top level when they are asked for, as vLLM sends them)."""

    def __init__(self, gen: Generation, tt: TokenText):
        rid, created = response_id(gen)
        base = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": gen.model}
        super().__init__(gen, tt, {**base, "system_fingerprint": None})

    def _opening(self, index: int) -> list[dict]:
        if not self.first(index):
            return []
        delta = {"role": "assistant", "content": ""}
        extra = {"prompt_token_ids": self.prompt_ids(index)} if self.gen.return_token_ids else {}
        return [self.chunk({"index": index, "delta": delta, "logprobs": None, "finish_reason": None}, **extra)]

    def _choice(self, index: int, delta: dict, entries: TokenLogprobs | None, reason: str | None) -> dict:
        lp = chat_logprobs(self.gen, self.tt, self.logprobs(entries))
        return self.token_ids({"index": index, "delta": delta, "logprobs": lp, "finish_reason": reason}, entries)

    def delta(self, index, text, entries):
        return self._opening(index) + [self.chunk(self._choice(index, {"content": text}, entries, None))]

    def final(self, index, text, entries, c: Completion, decoding):
        choice = self._choice(index, {"content": text} if text else {}, entries, c.finish_reason)
        return self._opening(index) + [self.final_chunk(choice, c, decoding)]


def chunk_writer(gen: Generation, tt: TokenText) -> ChunkWriter:
    return (ChatChunks if gen.kind == "chat" else CompletionChunks)(gen, tt)


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
