"""The chunk shapes of streamed responses (`text_completion` and `chat.completion.chunk`), as
OpenAI and vLLM send them: a role delta first for chat, token ids and log-probs riding with the
text they belong to, the finish chunk, the usage chunk. No I/O and no event handling: the
stream writer (streaming.py) decides when each chunk goes."""

from __future__ import annotations

from typing import Any

from temper.decoding.strategies.completion import Completion
from temper.server.generation import Generation
from temper.server.logprobs import TokenLogprobs, legacy
from temper.server.responses import chat_logprobs, response_id, with_metadata
from temper.server.text import OffsetCounter, TokenText


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
