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
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from fastapi import Request

from temper.decoding.engine import Scored, TokenDraw
from temper.decoding.errors import ParamError
from temper.decoding.strategies.completion import StrategyResult, fill_logprobs
from temper.server.errors import (
    APIError,
    ClientGone,
    aborted,
    as_api_error,
    bad_request,
    queue_full,
    request_timeout,
    shutting_down,
)
from temper.server.logprobs import TokenLogprobs, choice_logprobs, echo_logprobs
from temper.server.prompts import Generation, PromptRun
from temper.server.weights import Pause, WeightGate

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
    weight_version: int  # of the weights that produced it (constant while a request runs)
    echo: Part | None = None  # the echoed prompt, for a JSON completions request with echo
    prompt_scored: Scored | None = None  # the prompt's own raw log-probs, for prompt_logprobs


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
    """One request's place in flight and its cost; released exactly once."""

    def __init__(self, admission: Admission, cost: int):
        self._admission: Admission | None = admission
        self.cost = cost

    def release(self) -> None:
        if self._admission is not None:
            self._admission.in_flight -= 1
            self._admission.tokens -= self.cost
            self._admission = None


class Admission:
    """Requests in flight, bounded by count (`limit`) and by their summed worst-case tokens
    (`token_limit`; a request alone is always admitted); beyond either, 429 with Retry-After."""

    def __init__(self, limit: int, retry_after: int, token_limit: int | None = None):
        self.limit = limit
        self.retry_after = retry_after
        self.token_limit = token_limit
        self.in_flight = 0
        self.tokens = 0  # summed cost of the requests in flight

    def enter(self, cost: int = 0) -> Slot:
        over_tokens = self.token_limit is not None and self.in_flight and self.tokens + cost > self.token_limit
        if self.in_flight >= self.limit or over_tokens:
            raise queue_full(self.limit, self.retry_after, self.token_limit if over_tokens else None)
        self.in_flight += 1
        self.tokens += cost
        return Slot(self, cost)


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
    text = run.text if run.text is not None else await asyncio.to_thread(gen.engine.tokenizer.decode, run.req.prompt)
    lp = await echo_logprobs(gen.engine, run.req.prompt, gen.logprobs) if gen.logprobs is not None else None
    return text, lp


async def execute(gen: Generation, run: PromptRun, on_token=None, *, echo: bool = False) -> RunOutput:
    """Run one prompt's strategy, then give its completions the log-probs the response needs
    (and, with `echo`, work out the echoed prompt too)."""
    version = gen.engine.weight_version
    result = await run.run(on_token)
    if gen.logprobs is not None and not gen.processed:
        await fill_logprobs(gen.engine, run.req.prompt, result.completions, gen.logprobs)
    # detokenising (text, offsets) off the event loop: a long output takes milliseconds
    choices = await asyncio.to_thread(choice_logprobs, gen.engine, result.completions, gen.logprobs, gen.processed)
    out = RunOutput(run, result, choices, version, await echo_part(gen, run) if echo else None)
    if gen.prompt_logprobs is not None:
        (out.prompt_scored,) = await gen.engine.score([run.req.prompt], start=1, top_k=gen.prompt_logprobs, ranks=True)
    return out


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


class Scope:
    """One admitted request's running work on a model, so /pause?mode=abort can cancel it."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.tasks: list[asyncio.Task] = []
        self.aborted: APIError | None = None  # why the server cancelled it (/pause, shutdown)
        self.holding = False  # holds the model's weights (WeightGate.acquire_shared)
        self.wake: asyncio.Event | None = None  # set on abort: a stream waiting for events sees it

    def abort(self, why: APIError) -> None:
        self.aborted = why
        _stop(self.tasks)
        if self.wake is not None:
            self.wake.set()


class Runner:
    def __init__(
        self,
        admission: Admission,
        timeout: float | None,
        heartbeat: float,
        gates: Mapping[str, WeightGate],
        pause: Pause,
    ):
        self.admission = admission
        self.timeout = timeout or None
        self.heartbeat = heartbeat
        self.gates = gates
        self.pause = pause
        self._scopes: set[Scope] = set()
        self.closing = False

    @property
    def in_flight(self) -> int:
        return self.admission.in_flight

    def abort_all(self) -> int:
        """Cancel every running request (they answer 503); returns how many there were."""
        running = [s for s in self._scopes if s.holding]
        for scope in running:
            scope.abort(aborted())
        return len(running)

    def shutdown(self) -> int:
        """The server is stopping: cancel every request, running or waiting, with a 503 (a
        final error event when streaming), and refuse new ones. Returns how many there were."""
        self.closing = True
        self.pause.resume()  # requests held by /pause wake up, and see they are cancelled
        scopes = list(self._scopes)
        for scope in scopes:
            scope.abort(shutting_down())
        return len(scopes)

    async def drain(self) -> None:
        """Return once no request holds any model's weights (new ones may be waiting)."""
        while any(s.holding for s in self._scopes):
            await asyncio.sleep(0.01)

    async def _enter(self, scope: Scope) -> None:
        """Wait while the server is paused, then hold the model's weights (shared) for as long
        as the work runs (until _leave), so no weight update lands in the middle of a response."""
        if self.closing:
            raise shutting_down()
        self._scopes.add(scope)
        await self.pause.wait_running()
        await self.gates[scope.model].acquire_shared(scope)
        if scope.aborted:
            raise scope.aborted

    def _leave(self, scope: Scope) -> None:
        """Cancel what still runs and give the weights back; never waits."""
        _stop(scope.tasks)
        self._scopes.discard(scope)
        self.gates[scope.model].release_shared(scope)

    async def call(
        self, request: Request, model: str, work: Callable[[], Sequence[Awaitable[T]]], cost: int = 0
    ) -> list[T]:
        """Admit (by count and `cost`), then run the awaitables `work()` makes concurrently on
        `model`; cancel all of them if one fails, the client leaves, or the server's request
        timeout passes."""
        slot = self.admission.enter(cost)
        watcher = asyncio.ensure_future(_disconnected(request))
        deadline = self._deadline()
        scope = Scope(model)
        try:
            await self._within(deadline, self._enter(scope))
            scope.tasks = _start(work())
            everything = asyncio.gather(*scope.tasks)
            everything.add_done_callback(_retrieve)
            await self._within(deadline, asyncio.wait({everything, watcher}, return_when=asyncio.FIRST_COMPLETED))
            if scope.aborted:
                raise scope.aborted
            if everything.done():
                try:
                    return everything.result()
                except Exception as exc:
                    raise strategy_error(exc) from exc
            raise ClientGone()
        finally:
            watcher.cancel()
            self._leave(scope)
            slot.release()

    async def run(self, request: Request, gen: Generation) -> list[RunOutput]:
        """Every prompt run of a JSON request, with its echo when asked for."""
        work = lambda: [execute(gen, run, echo=gen.echo) for run in gen.runs]
        return await self.call(request, gen.model, work, gen.cost)

    async def open_stream(self, gen: Generation) -> Stream:
        """Admit a streamed request and take its model's weights before any byte goes out, so
        a 429 or 504 is a real HTTP status and the headers can name the weight version."""
        slot = self.admission.enter(gen.cost)
        stream = Stream(slot, Scope(gen.model), self._deadline(), self)
        try:
            await self._within(stream.deadline, self._enter(stream.scope))
        except BaseException:
            stream.close()
            raise
        return stream

    def _deadline(self) -> float | None:
        return asyncio.get_running_loop().time() + self.timeout if self.timeout else None

    async def events(self, gen: Generation, stream: Stream) -> AsyncIterator[Event]:
        """A streamed request's events, as they happen: echoes first, tokens of the strategies
        that stream them, each prompt run's output when it ends, heartbeats while nothing
        happens. Raises APIError on a failure or the timeout. Closing the iterator (the client
        left) cancels the work; the stream's close() gives back its slot and weights."""
        scope, deadline = stream.scope, stream.deadline
        events = EventQueue()
        scope.wake = events.ready
        try:
            if gen.echo:
                parts = await self._within(deadline, asyncio.gather(*(echo_part(gen, r) for r in gen.runs)))
                for run, part in zip(gen.runs, parts, strict=True):
                    yield EchoEvent(run, part)
            scope.tasks = _start(execute(gen, run, events.sink(gen, run)) for run in gen.runs)
            for t in scope.tasks:
                t.add_done_callback(events.done)
            pending = len(scope.tasks)
            while pending:
                if scope.aborted:
                    raise scope.aborted
                event = events.pop()
                if event is None:
                    if events.failed:
                        raise strategy_error(events.failed[0])
                    if not await self._wait(events.ready, deadline):
                        yield Heartbeat()
                    continue
                pending -= isinstance(event, DoneEvent)
                yield event
        finally:
            _stop(scope.tasks)

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
        ready.clear()
        try:
            if wait <= 0:
                raise TimeoutError
            await asyncio.wait_for(ready.wait(), wait)
            return True
        except TimeoutError:
            if deadline is not None and loop.time() >= deadline:
                raise request_timeout(self.timeout) from None
            return False


class Stream:
    """An admitted streamed request: its slot, its hold on the model's weights, its deadline."""

    def __init__(self, slot: Slot, scope: Scope, deadline: float | None, runner: Runner):
        self.slot, self.scope, self.deadline, self._runner = slot, scope, deadline, runner

    def close(self) -> None:
        """Give everything back; idempotent, never waits."""
        self._runner._leave(self.scope)
        self.slot.release()


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
