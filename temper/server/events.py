"""What a streamed request's work reports while it runs (tokens as drawn, echoed prompts, runs
that end, heartbeats) and the queue the runner reads them from, on the event loop only."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

from temper.decoding.engine import TokenDraw
from temper.server.generation import Generation, PromptRun
from temper.server.run_output import Part, RunOutput


@dataclass(frozen=True, slots=True)
class TokenEvent:
    choice: int  # the choice's index in the response
    draw: TokenDraw


@dataclass(frozen=True, slots=True)
class EchoEvent:
    run: PromptRun
    part: Part  # the echoed prompt (completions with echo), sent before its choices' tokens


@dataclass(frozen=True, slots=True)
class DoneEvent:
    output: RunOutput


@dataclass(frozen=True, slots=True)
class Heartbeat:
    pass


Event = TokenEvent | EchoEvent | DoneEvent | Heartbeat


class EventQueue:
    """Where a streamed request's tasks leave their events for `Runner.events` (event loop only)."""

    def __init__(self) -> None:
        self.queue: deque[Event] = deque()
        self.ready = asyncio.Event()
        self.failed: list[BaseException] = []

    def push(self, event: Event) -> bool:
        self.queue.append(event)
        self.ready.set()
        return True  # engines call token sinks on the event loop: keep sampling

    def pop(self) -> Event | None:
        return self.queue.popleft() if self.queue else None

    def sink(self, gen: Generation, run: PromptRun):
        """The token callback of a run whose strategy streams tokens, numbering its choices."""
        if not run.strategy.streams_tokens:
            return None
        base = run.index * gen.stride
        return lambda i, draw: self.push(TokenEvent(base + i, draw))

    def done(self, t: asyncio.Task) -> None:
        if t.cancelled():
            return
        if t.exception() is not None:
            self.failed.append(t.exception())
            self.ready.set()
        else:
            self.push(DoneEvent(t.result()))
