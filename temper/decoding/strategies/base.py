"""What a decoding strategy is: a name, a pydantic `Params` model, and an async `run`.

A strategy sees one request (prompt token ids, the request's sampling settings, the engines,
the server's strategy options) and returns n completions plus metadata. It speaks only the
Engine protocol: no tensors, no caches. Per-request state lives in `run`'s locals, never on the
class and never written back to the request.

Also here: the request type (DecodeRequest), the server-wide options every strategy may read
(StrategyOptions, typed and validated once) and the seed helpers. The result types live in
`completion.py`, the sampling settings in `settings.py`, the registry in `registry.py`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ValidationError

from temper.decoding.engine import Engine, TokenCallback
from temper.decoding.errors import ParamError, param_error_from
from temper.decoding.strategies.completion import StrategyResult
from temper.decoding.strategies.settings import SamplingSettings
from temper.decoding.synthesis_prompt import check_template

DEFAULT_MAX_SEQUENCES = 4096
SEED_MASK = 2**63 - 1


@dataclass(frozen=True, slots=True)
class StrategyOptions:
    """Server-wide strategy options, validated once when the server starts."""

    # Most sequences one request may keep in flight (n × particles, n × proposals...).
    max_sequences: int = DEFAULT_MAX_SEQUENCES
    # The synthesis anchor's prompt template (text or preset name); None = the strategy's own.
    synthesis_template: str | None = None

    def __post_init__(self) -> None:
        if self.max_sequences < 1:
            raise ParamError(f"max_sequences: must be >= 1, got {self.max_sequences}", "max_sequences")
        if self.synthesis_template is not None:
            check_template(self.synthesis_template, "synthesis_template")


@dataclass(frozen=True, slots=True)
class DecodeRequest:
    """Everything a strategy may use for one request (never modified once built)."""

    prompt: list[int]
    settings: SamplingSettings
    engine: Engine
    engines: Mapping[str, Engine] = field(default_factory=dict)  # every served model by name
    prompt_text: str | None = None  # the question as text, when the edge had it
    options: StrategyOptions = field(default_factory=StrategyOptions)

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
        """The token ids that end a choice: the engine's eos ids (unless ignore_eos) and the
        request's stop_token_ids."""
        eos = () if self.settings.ignore_eos else self.engine.eos_ids
        return tuple(dict.fromkeys((*eos, *self.settings.stop_token_ids)))


class Strategy(ABC):
    """Base class: subclasses set `name` and `Params` and implement `run`."""

    name: ClassVar[str]
    Params: ClassVar[type[BaseModel]]
    streams_tokens: ClassVar[bool] = False  # tokens are final when sampled (token streaming)

    def parse(self, raw: Mapping[str, Any]) -> BaseModel:
        """Validate the request's `decoding` object (minus "strategy") into Params, strictly
        (JSON's 1 is not true, "4" is not 4.0: what the OpenAPI schema documents)."""
        try:
            return self.Params.model_validate(dict(raw), strict=True)
        except ValidationError as exc:
            raise param_error_from(exc, "decoding") from None

    @classmethod
    def json_schemas(cls) -> list[dict[str, Any]]:
        """JSON schemas of this strategy's `decoding` object (its Params), one per variant that
        the OpenAPI document should tell apart (most strategies have one)."""
        return [cls.Params.model_json_schema()]

    def settings(self, settings: SamplingSettings, params: BaseModel) -> SamplingSettings:
        """The sampling settings this strategy runs the request with (what `n` choices come
        back, which stop strings apply). Strategies whose Params override settings say so."""
        return settings

    def check(self, req: DecodeRequest, params: Any) -> None:
        """Every check of one request that needs no engine work (ParamError naming the field).
        The server calls it before a request is admitted, so a streamed request that cannot
        run is a 400 like an unstreamed one; `run` calls it too, for in-process callers."""
        return None

    def sampled_logprobs(self, params: Any) -> bool:
        """Whether the completions carry `logq`, the log-probs of the per-token distribution
        their tokens were drawn from (vLLM's processed log-probs). Strategies whose output is
        chosen over whole responses (power sampling) have none."""
        return False

    def cost(self, req: DecodeRequest, params: Any) -> int:
        """Worst-case tokens this request may generate (every proposal, particle, rollout and
        look-ahead included), known before it runs: the server admits requests by it and
        refuses those above its limit. The default is plain sampling's: n × the token budget."""
        return req.settings.n * req.max_new_tokens()

    def cost_knob(self, params: Any) -> str:
        """The request field that scales `cost` most: what a client over the server's limit
        should lower (the 400 names it)."""
        return "max_tokens"

    @abstractmethod
    async def run(
        self, req: DecodeRequest, params: Any, on_token: TokenCallback | None = None
    ) -> StrategyResult:
        """Run one request. `on_token` (only for strategies with `streams_tokens`) receives
        (choice index, draw) for every token as it becomes final; returning False stops that
        choice (the client went away)."""


def derive_seed(seed: int | None, *path: int) -> int | None:
    """A 63-bit seed for a sub-stream (choice i, chain j, ...) of a request seed; None stays
    None so unseeded requests stay random."""
    if seed is None:
        return None
    state = np.random.SeedSequence([seed & (2**64 - 1), *path]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & SEED_MASK


def spec_seeds(seed: int | None, count: int, *path: int) -> list[int | None]:
    """`count` distinct engine seeds for one engine call, from one derived base.

    Why distinct: the engines' RNG is counter-based on (seed, absolute position), so two specs
    with one seed and one prefix draw identical tokens (two proposals from one cut, two copies
    of a resampled particle). Why base + i rather than derive_seed per spec: it costs ~10 µs a
    call and exactness tests run 10⁵ specs per step; the engine hashes the seed, so adjacent
    seeds are unrelated streams, and random 63-bit bases make overlaps between calls negligible.
    """
    base = derive_seed(seed, *path)
    if base is None:
        return [None] * count
    return [(base + i) & SEED_MASK for i in range(count)]


def request_rng(seed: int | None, *path: int) -> np.random.Generator:
    """The numpy generator a strategy uses for its own choices (cuts, uniforms)."""
    if seed is None:
        return np.random.default_rng()
    return np.random.default_rng([seed & (2**64 - 1), *path])
