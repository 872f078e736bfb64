"""The runner: the one place engine work runs for a request, whatever route and response shape.

It admits requests (a bounded count in flight, 429 beyond), runs a Generation's prompt runs
(strategy → engine, then the log-probs its response needs) under the server's timeout while
watching the client's connection, and hands the results back as RunOutputs: all at once for a
JSON body (`run`), or as a stream of events for SSE (`events`). Scoring routes use `call`.

It knows no response shapes (responses.py, streaming.py) and no request bodies (prompts.py).
Per-request state lives in locals and the objects it returns; it only counts slots in flight.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from fastapi import Request

from temper.decoding.engine import TokenDraw
from temper.decoding.errors import ParamError
from temper.decoding.strategies.completion import StrategyResult, fill_logprobs
from temper.server.errors import APIError, ClientGone, as_api_error, bad_request, queue_full, request_timeout
from temper.server.logprobs import TokenLogprobs, choice_logprobs, echo_logprobs
from temper.server.prompts import Generation, PromptRun

log = logging.getLogger(__name__)
T = TypeVar("T")

Part = tuple[str, TokenLogprobs | None]  # a text and, when asked for, its tokens' log-probs


@dataclass(slots=True)
class RunOutput:
    """A finished prompt run: the strategy's result and, per completion, its final text and
    the log-prob entries to report."""

    run: PromptRun
    result: StrategyResult
    choices: list[Part]
    echo: Part | None = None  # the echoed prompt, for a JSON completions request with echo


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


class Slot:
    """One request's place in flight; released exactly once."""

    def __init__(self, admission: Admission):
        self._admission: Admission | None = admission

    def release(self) -> None:
        if self._admission is not None:
            self._admission.in_flight -= 1
            self._admission = None


class Admission:
    """A bounded count of requests in flight; beyond `limit`, 429 with Retry-After."""

    def __init__(self, limit: int, retry_after: int):
        self.limit = limit
        self.retry_after = retry_after
        self.in_flight = 0

    def enter(self) -> Slot:
        if self.in_flight >= self.limit:
            raise queue_full(self.limit, self.retry_after)
        self.in_flight += 1
        return Slot(self)


def usage(outputs: Sequence[RunOutput]) -> dict[str, int]:
    """OpenAI usage: every prompt token (the request's and those a strategy fed itself) and
    every generated token (proposals, rollouts and anchor answers included)."""
    prompt = sum(len(o.run.req.prompt) + o.result.extra_prompt_tokens for o in outputs)
    completion = sum(o.result.completion_tokens for o in outputs)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def strategy_error(exc: BaseException) -> APIError:
    """A failure as an HTTP error: a strategy's ValueErrors come from request values its Params
    could not check (400); anything else unknown is a bug (500)."""
    if isinstance(exc, ValueError) and not isinstance(exc, ParamError) and not isinstance(exc, APIError):
        log.warning("strategy rejected the request: %s", exc)
        return bad_request(str(exc), getattr(exc, "param", None))
    return as_api_error(exc)


async def echo_part(gen: Generation, run: PromptRun) -> Part:
    """The echoed prompt of a completions request: its text and, k given, its log-probs."""
    text = run.text if run.text is not None else gen.engine.tokenizer.decode(run.req.prompt)
    lp = await echo_logprobs(gen.engine, run.req.prompt, gen.logprobs) if gen.logprobs is not None else None
    return text, lp


async def execute(gen: Generation, run: PromptRun, on_token=None, *, echo: bool = False) -> RunOutput:
    """Run one prompt's strategy, then give its completions the log-probs the response needs
    (and, with `echo`, work out the echoed prompt too)."""
    result = await run.run(on_token)
    if gen.logprobs is not None:
        await fill_logprobs(gen.engine, run.req.prompt, result.completions, gen.logprobs)
    choices = choice_logprobs(gen.engine, result.completions, gen.logprobs)
    return RunOutput(run, result, choices, await echo_part(gen, run) if echo else None)


def _retrieve(task: asyncio.Future) -> None:
    # cancelled work may still end in an exception nobody awaits; read it so asyncio stays quiet
    if not task.cancelled():
        task.exception()


def _start(coros) -> list[asyncio.Task]:
    tasks = [asyncio.ensure_future(c) for c in coros]
    for t in tasks:
        t.add_done_callback(_retrieve)
    return tasks


def _stop(tasks: Sequence[asyncio.Future]) -> None:
    """Cancel unfinished work (engine.sample aborts its sequences and frees their cache)."""
    for t in tasks:
        if not t.done():
            t.cancel()


async def _disconnected(request: Request) -> None:
    # the body is already read, so the next ASGI message is the disconnect (or end of response)
    while (await request.receive())["type"] != "http.disconnect":
        pass


class Runner:
    def __init__(self, admission: Admission, timeout: float | None, heartbeat: float):
        self.admission = admission
        self.timeout = timeout or None
        self.heartbeat = heartbeat

    @property
    def in_flight(self) -> int:
        return self.admission.in_flight

    async def call(self, request: Request, work: Callable[[], Sequence[Awaitable[T]]]) -> list[T]:
        """Admit, then run the awaitables `work()` makes concurrently; cancel all of them if one
        fails, the client leaves, or the server's request timeout passes."""
        slot = self.admission.enter()
        tasks = _start(work())
        everything = asyncio.gather(*tasks)
        watcher = asyncio.ensure_future(_disconnected(request))
        try:
            done, _ = await asyncio.wait(
                {everything, watcher}, timeout=self.timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if everything in done:
                try:
                    return everything.result()
                except Exception as exc:
                    raise strategy_error(exc) from exc
            if watcher in done:
                raise ClientGone()
            raise request_timeout(self.timeout)
        finally:
            watcher.cancel()
            _stop(tasks)
            everything.add_done_callback(_retrieve)
            slot.release()

    async def run(self, request: Request, gen: Generation) -> list[RunOutput]:
        """Every prompt run of a JSON request, with its echo when asked for."""
        return await self.call(request, lambda: [execute(gen, run, echo=gen.echo) for run in gen.runs])

    async def events(self, gen: Generation) -> AsyncIterator[Event]:
        """A streamed request's events, as they happen: echoes first, tokens of the strategies
        that stream them, each prompt run's output when it ends, heartbeats while nothing
        happens. Raises APIError on a failure or the timeout. The caller holds the slot;
        closing the iterator (the client left) cancels the work."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout if self.timeout else None
        queue: deque[Event] = deque()
        ready = asyncio.Event()

        def push(event: Event) -> bool:
            queue.append(event)
            ready.set()
            return True  # engines call this on the event loop: keep sampling

        def sink(run: PromptRun):
            if not run.strategy.streams_tokens:
                return None
            base = run.index * gen.stride
            return lambda i, draw: push(TokenEvent(base + i, draw))

        tasks: list[asyncio.Task] = []
        try:
            if gen.echo:
                parts = await self._within(deadline, asyncio.gather(*(echo_part(gen, r) for r in gen.runs)))
                for run, part in zip(gen.runs, parts, strict=True):
                    yield EchoEvent(run, part)
            tasks = _start(execute(gen, run, sink(run)) for run in gen.runs)
            failed: list[BaseException] = []

            def done(t: asyncio.Task) -> None:
                if t.cancelled():
                    return
                if t.exception() is not None:
                    failed.append(t.exception())
                    ready.set()
                else:
                    push(DoneEvent(t.result()))

            for t in tasks:
                t.add_done_callback(done)
            pending = len(tasks)
            while pending:
                if not queue:
                    if failed:
                        raise strategy_error(failed[0])
                    ready.clear()
                    if not await self._wait(ready, deadline):
                        yield Heartbeat()
                    continue
                event = queue.popleft()
                pending -= isinstance(event, DoneEvent)
                yield event
        finally:
            _stop(tasks)

    async def _within(self, deadline: float | None, aw: Awaitable[T]) -> T:
        wait = None if deadline is None else max(deadline - asyncio.get_running_loop().time(), 0)
        try:
            return await asyncio.wait_for(aw, wait)
        except TimeoutError:
            raise request_timeout(self.timeout) from None

    async def _wait(self, ready: asyncio.Event, deadline: float | None) -> bool:
        """Wait for an event up to the heartbeat interval: False = a heartbeat is due. Past the
        deadline, the request times out."""
        loop = asyncio.get_running_loop()
        wait = self.heartbeat if deadline is None else min(self.heartbeat, deadline - loop.time())
        try:
            if wait <= 0:
                raise TimeoutError
            await asyncio.wait_for(ready.wait(), wait)
            return True
        except TimeoutError:
            if deadline is not None and loop.time() >= deadline:
                raise request_timeout(self.timeout) from None
            return False
