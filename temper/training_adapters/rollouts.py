"""Rollouts: the one object a learner's loop talks to for rollouts, scores and weight updates,
whether temper runs in its process or behind HTTP.

    rollouts = Rollouts.local("path/to/model")            # Engine objects in this process
    rollouts = Rollouts.http("http://127.0.0.1:8000")      # temper, or vLLM for plain sampling
    groups = rollouts.generate(["What is 2+3?"], n=8, max_tokens=256,
                               decoding={"strategy": "power", "alpha": 4})
    groups[0].rollouts[0].token_ids, .logprobs, .finish_reason; groups[0].weight_version
    scored = rollouts.score([prompt + completion], start=len(prompt), model="teacher")
    rollouts.update_weights("ckpt/step-10")                # → the new weight version

The methods are synchronous: they run on the object's own event loop thread (see
background_loop.py), so they work from plain scripts, TRL callbacks and notebooks alike. Async
code can await `rollouts.transport`'s coroutines instead, from inside `rollouts.run(...)`.
"""

from __future__ import annotations

import os
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from temper.decoding.engine import Engine, Scored
from temper.decoding.strategies.base import StrategyOptions
from temper.training_adapters.background_loop import BackgroundLoop
from temper.training_adapters.local_transport import LocalTransport
from temper.training_adapters.prompt_input import as_prompts
from temper.training_adapters.rollout import RolloutConfig, RolloutGroup
from temper.training_adapters.transport import Transport
from temper.training_adapters.vocabulary import Vocabulary

T = TypeVar("T")


class Rollouts:
    def __init__(self, transport: Transport):
        self.transport = transport
        self._loop = BackgroundLoop()

    @classmethod
    def local(
        cls,
        models: Engine | Mapping[str, Engine] | str | os.PathLike | Mapping[str, str | os.PathLike],
        *,
        device: str = "cpu",
        dtype: str = "float32",
        options: StrategyOptions | None = None,
        frozen: Iterable[str] = (),
    ) -> Rollouts:
        """In-process: Engine objects ({name: engine} or one), or model directories to load
        ({name: path} or one path, served under its directory name). The first is the default;
        the models named in `frozen` refuse weight updates."""
        is_path = lambda x: isinstance(x, str | os.PathLike)
        if is_path(models) or (isinstance(models, Mapping) and all(is_path(v) for v in models.values())):
            return cls(
                LocalTransport.from_pretrained(models, device=device, dtype=dtype, options=options, frozen=frozen)
            )
        return cls(LocalTransport(models, options, frozen))

    @classmethod
    def http(
        cls, url: str, *, api_key: str | None = None, timeout: float = 600.0, max_concurrency: int = 64
    ) -> Rollouts:
        """Over HTTP, against a running temper (or vLLM-compatible) server."""
        from temper.training_adapters.http_transport import HTTPTransport

        return cls(HTTPTransport(url, api_key=api_key, timeout=timeout, max_concurrency=max_concurrency))

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine (over `self.transport`) on this object's loop and return its result."""
        return self._loop.run(coro)

    @staticmethod
    def config(config: RolloutConfig | None = None, **fields: Any) -> RolloutConfig:
        """A RolloutConfig from `config` with `fields` replaced (validated again)."""
        if config is None:
            return RolloutConfig(**fields)
        return RolloutConfig.model_validate({**config.model_dump(exclude_unset=True), **fields})

    def generate(
        self, prompts: Sequence[Any], config: RolloutConfig | None = None, **fields: Any
    ) -> list[RolloutGroup]:
        """n rollouts of each prompt (text, token ids or chat messages): one RolloutGroup per
        prompt, in order. Fields: RolloutConfig's (max_tokens required, n, temperature, top_p,
        top_k, seed, stop, stop_token_ids, decoding, model)."""
        cfg = self.config(config, **fields)
        return self.run(self.transport.generate(as_prompts(prompts), cfg))

    def score(
        self,
        sequences: Sequence[Sequence[int]],
        start: int | Sequence[int] = 1,
        top_k: int = 0,
        model: str | None = None,
    ) -> list[Scored]:
        """Raw log-probs of sequence[start:] under `model` (teacher and proxy scores)."""
        return self.run(self.transport.score(sequences, start, top_k, model))

    def vocabulary(self, model: str | None = None) -> Vocabulary:
        return self.run(self.transport.vocabulary(model))

    def default_model(self) -> str:
        return self.run(self.transport.default_model())

    def update_weights(self, path: str | os.PathLike, model: str | None = None) -> int:
        """Load new weights (a checkpoint directory or .safetensors file) into `model`; returns
        its new weight version. Rollouts generated after this carry that version."""
        return self.run(self.transport.update_weights(os.fspath(path), model))

    def close(self) -> None:
        try:
            self.run(self.transport.close())
        finally:
            self._loop.close()

    def __enter__(self) -> Rollouts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
