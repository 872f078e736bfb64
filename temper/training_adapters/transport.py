"""Transport: how rollouts, scores and weight updates reach a model, in-process or over HTTP.

A learner's loop speaks to the Rollouts facade (rollouts.py), which speaks to one Transport:
LocalTransport (Engine objects in this process) or HTTPTransport (a temper server, or any
vLLM-compatible one for plain sampling). Both take and return the same types, so the loop does
not know which one it has. All methods are coroutines on the transport's own event loop.

Also here: `gather_all`, the one way training_adapters runs coroutines side by side (the first
failure cancels the rest and is raised as itself, not wrapped in an ExceptionGroup).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable, Sequence
from typing import Protocol, TypeVar, runtime_checkable

from temper.decoding.engine import Scored
from temper.training_adapters.prompt_input import PromptInput
from temper.training_adapters.rollout import RolloutConfig, RolloutGroup
from temper.training_adapters.vocabulary import Vocabulary

T = TypeVar("T")


@runtime_checkable
class Transport(Protocol):
    description: str  # for messages: "in-process (demo)", "http://127.0.0.1:8000"

    async def default_model(self) -> str:
        """The model requests go to when they name none."""
        ...

    async def check(self, prompts: Sequence[PromptInput], config: RolloutConfig) -> None:
        """Every check of these prompts and settings that can be made without generating (a
        ValueError naming the prompt and field). HTTP servers check each request themselves."""
        ...

    async def generate(self, prompts: Sequence[PromptInput], config: RolloutConfig) -> list[RolloutGroup]:
        """config.n rollouts of every prompt, one RolloutGroup per prompt, in order."""
        ...

    async def score(
        self,
        sequences: Sequence[Sequence[int]],
        start: int | Sequence[int] = 1,
        top_k: int = 0,
        model: str | None = None,
    ) -> list[Scored]:
        """Raw log-probs of sequence[start:] (and the top_k alternatives) under a model."""
        ...

    async def vocabulary(self, model: str | None = None) -> Vocabulary: ...

    async def update_weights(self, path: str, model: str | None = None) -> int:
        """Load new weights from a checkpoint directory or .safetensors file; the new version."""
        ...

    async def close(self) -> None: ...


async def gather_all(aws: Iterable[Awaitable[T]]) -> list[T]:
    """Await all side by side; results in order. The first failure cancels the others and is
    raised as it is."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    if not tasks:
        return []
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for t in tasks:
            if t.done() and not t.cancelled() and t.exception() is not None:
                raise t.exception()
        return [t.result() for t in tasks]
    finally:
        for t in tasks:
            if not t.done():
                t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
