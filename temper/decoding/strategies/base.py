"""What a decoding strategy is: a name, a pydantic `Params` model, and an async `run`.

A strategy sees one request (prompt token ids, the request's sampling settings, the engines)
and returns n completions plus metadata. It speaks only the Engine protocol: no tensors, no
caches. Per-request state lives in the request and in `run`'s locals, never on the class.

This module also holds the request/result types and the parameter-error type the server maps
to HTTP 400. The registry lives in `registry.py`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from temper.decoding.engine import Engine, TokenDraw

MAX_N = 128
MAX_TOP_LOGPROBS = 20


class ParamError(ValueError):
    """A bad request field. `param` names it (dotted, e.g. "decoding.alpha")."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param


def param_error_from(exc: ValidationError, prefix: str = "") -> ParamError:
    """The first pydantic error as a ParamError naming its field."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ()) if p != "__root__")
    param = f"{prefix}.{loc}" if prefix and loc else (prefix or loc or None)
    msg = err.get("msg", "invalid value")
    return ParamError(f"{param}: {msg}" if param else msg, param)


class SamplingSettings(BaseModel):
    """The request's own sampling fields (OpenAI names, vLLM defaults), validated once."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: int | None = Field(default=None, ge=1)  # None = up to the context
    temperature: float = Field(default=1.0, ge=0.0, le=100.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=-1)  # 0 or -1 = off (vLLM uses -1)
    n: int = Field(default=1, ge=1, le=MAX_N)
    seed: int | None = None
    stop: list[str] = Field(default_factory=list)
    stop_token_ids: list[int] = Field(default_factory=list)
    logprobs: bool = False  # return the chosen tokens' raw log-probs
    top_logprobs: int = Field(default=0, ge=0, le=MAX_TOP_LOGPROBS)

    @field_validator("temperature", "top_p")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be finite")
        return v

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: list[str]) -> list[str]:
        if len(v) > 16:
            raise ValueError("at most 16 stop sequences")
        if any(s == "" for s in v):
            raise ValueError("stop sequences must be non-empty")
        return v

    @property
    def alpha(self) -> float:
        """Proposal exponent for these settings: temperature 0 is greedy (α = inf)."""
        return math.inf if self.temperature == 0 else 1.0 / self.temperature

    @property
    def top_k_or_off(self) -> int:
        return max(self.top_k, 0)

    def updated(self, overrides: BaseModel | Mapping[str, Any]) -> SamplingSettings:
        """These settings with every field the overrides set explicitly replaced."""
        if isinstance(overrides, BaseModel):
            data = {k: getattr(overrides, k) for k in overrides.model_fields_set}
        else:
            data = dict(overrides)
        data = {k: v for k, v in data.items() if k in type(self).model_fields}
        return SamplingSettings.model_validate({**self.model_dump(), **data})


@dataclass(slots=True)
class DecodeRequest:
    """Everything a strategy may use for one request."""

    prompt: list[int]
    settings: SamplingSettings
    engine: Engine
    engines: Mapping[str, Engine] = field(default_factory=dict)  # every served model by name
    # Streaming sink for strategies whose tokens are final as they are sampled: (choice index,
    # the draw). Returning False asks the strategy to stop that choice (the client went away).
    on_token: Callable[[int, TokenDraw], bool] | None = None
    prompt_text: str | None = None  # the question as text, when the edge had it
    # Server-wide strategy options (e.g. "synthesis_template"), set by server flags.
    options: Mapping[str, Any] = field(default_factory=dict)

    def max_new_tokens(self, cap: int | None = None) -> int:
        """The new-token budget: settings.max_tokens, else what the context leaves, capped."""
        room = self.engine.max_context - len(self.prompt)
        if room < 1:
            raise ParamError(
                f"prompt: {len(self.prompt)} tokens leave no room in the model's context of "
                f"{self.engine.max_context} tokens",
                "prompt",
            )
        want = self.settings.max_tokens if self.settings.max_tokens is not None else room
        if cap is not None:
            want = min(want, cap)
        return min(want, room)

    def stop_ids(self) -> tuple[int, ...]:
        return tuple(dict.fromkeys((*self.engine.eos_ids, *self.settings.stop_token_ids)))


@dataclass(slots=True)
class Completion:
    """One returned choice."""

    tokens: list[int]
    finish_reason: str  # "stop" | "length" | "abort"
    logp: np.ndarray | None = None  # [T] raw log-probs of `tokens`
    top_ids: np.ndarray | None = None  # [T, k]
    top_logps: np.ndarray | None = None  # [T, k]
    text: str | None = None  # set when the strategy cut the text itself (stop strings)
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class StrategyResult:
    completions: list[Completion]
    completion_tokens: int  # every token the request generated (all proposals, rollouts...)
    extra_prompt_tokens: int = 0  # prompts the strategy built itself (e.g. anchor prompts)
    metadata: dict[str, Any] = field(default_factory=dict)


class Strategy(ABC):
    """Base class: subclasses set `name` and `Params` and implement `run`."""

    name: ClassVar[str]
    Params: ClassVar[type[BaseModel]]
    streams_tokens: ClassVar[bool] = False  # tokens are final when sampled (token streaming)
    # Strategies that build their output out of several sampled answers ignore the settings'
    # n-way sampling semantics and document their own meaning of n.

    def parse(self, raw: Mapping[str, Any]) -> BaseModel:
        """Validate the request's `decoding` object (minus "strategy") into Params."""
        try:
            return self.Params.model_validate(dict(raw))
        except ValidationError as exc:
            raise param_error_from(exc, "decoding") from None

    @abstractmethod
    async def run(self, req: DecodeRequest, params: Any) -> StrategyResult: ...


def derive_seed(seed: int | None, *path: int) -> int | None:
    """A 63-bit seed for a sub-stream (choice i, chain j, ...) of a request seed; None stays
    None so unseeded requests stay random."""
    if seed is None:
        return None
    state = np.random.SeedSequence([seed & (2**64 - 1), *path]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & (2**63 - 1)


def request_rng(seed: int | None, *path: int) -> np.random.Generator:
    """The numpy generator a strategy uses for its own choices (cuts, uniforms)."""
    if seed is None:
        return np.random.default_rng()
    return np.random.default_rng([seed & (2**64 - 1), *path])
