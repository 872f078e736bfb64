"""What a rollout request asks for (RolloutConfig) and what comes back (RolloutGroup: one
prompt's n Rollouts), the same whichever transport produced them.

A Rollout carries its completion token ids, text, finish reason and `logprobs`: the per-token
log-probs under the distribution the tokens were sampled from (temperature, top-k and top-p
applied), which importance-sampling losses and the OPD reverse KL need. In-process they come
from the engine (Completion.logq) and only the `sample` strategy has them (power sampling and
the rollout strategies do not draw each token from one known distribution): other strategies
leave them None. Over HTTP they are the server's `logprobs`, which are the sampled
distribution's when the server runs with `--logprobs-mode processed_logprobs` (temper, vLLM;
at temperature 1 without top-k/top-p both modes agree).

A RolloutGroup also carries the prompt's token ids and the weight version that produced it
(None when the server does not report one), so a learner can drop stale rollouts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import ConfigDict, model_validator

from temper.decoding.strategies.settings import SamplingSettings, overrides_model

_Sampling = overrides_model(
    "RolloutSampling",
    ("max_tokens", "temperature", "top_p", "top_k", "n", "seed", "stop", "stop_token_ids"),
    "Sampling fields of a rollout request (None = the engine's or server's default).",
)


class RolloutConfig(_Sampling):
    """One rollout request's settings, for every prompt of it. `max_tokens` is required:
    servers and engines differ in their defaults. `decoding` picks a temper strategy
    ({"strategy": "power", ...}); None is plain sampling. `model` names a served model (None:
    the transport's default)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    decoding: dict[str, Any] | None = None
    model: str | None = None

    @model_validator(mode="after")
    def _required(self) -> RolloutConfig:
        if self.max_tokens is None:
            raise ValueError("max_tokens: required for rollouts (servers differ in their defaults)")
        if self.decoding is not None and not isinstance(self.decoding.get("strategy", "sample"), str):
            raise ValueError("decoding.strategy: must be a string")
        return self

    @property
    def count(self) -> int:
        return self.n if self.n is not None else 1

    @property
    def strategy(self) -> str:
        return (self.decoding or {}).get("strategy", "sample")

    def sampling_fields(self) -> dict[str, Any]:
        """The sampling fields that were set (the rest stay the engine's or server's defaults)."""
        return {k: getattr(self, k) for k in _Sampling.model_fields if getattr(self, k) is not None}

    def settings(self) -> SamplingSettings:
        return SamplingSettings(**self.sampling_fields())

    def with_seed(self, seed: int | None) -> RolloutConfig:
        return self.model_copy(update={"seed": seed})


def json_floats(values: np.ndarray | None) -> list[float | None] | None:
    """float32 values as the shortest decimals that read back to the same float32 (JSON has no
    infinities or NaN: those become null)."""
    if values is None:
        return None
    return [float(str(np.float32(x))) if math.isfinite(x) else None for x in np.asarray(values, np.float32)]


def float_array(values: Sequence[float | None] | None) -> np.ndarray | None:
    if values is None:
        return None
    return np.asarray([np.nan if v is None else v for v in values], dtype=np.float32)


@dataclass(slots=True)
class Rollout:
    token_ids: list[int]
    text: str
    finish_reason: str  # "stop" | "length" | "abort"
    logprobs: np.ndarray | None = None  # [T] float32 under the sampled distribution (see module)
    metadata: dict[str, Any] = field(default_factory=dict)  # the strategy's, for this choice

    def to_json(self) -> dict[str, Any]:
        out = {
            "text": self.text,
            "token_ids": list(self.token_ids),
            "logprobs": json_floats(self.logprobs),
            "finish_reason": self.finish_reason,
        }
        if self.metadata:
            out["metadata"] = self.metadata
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Rollout:
        return cls(
            token_ids=list(obj["token_ids"]),
            text=obj["text"],
            finish_reason=obj["finish_reason"],
            logprobs=float_array(obj.get("logprobs")),
            metadata=dict(obj.get("metadata") or {}),
        )


@dataclass(slots=True)
class RolloutGroup:
    """One prompt's rollouts."""

    prompt_token_ids: list[int]
    rollouts: list[Rollout]
    model: str
    weight_version: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)  # the strategy's, for this prompt

    @property
    def completion_tokens(self) -> int:
        return sum(len(r.token_ids) for r in self.rollouts)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "weight_version": self.weight_version,
            "prompt_token_ids": list(self.prompt_token_ids),
            "rollouts": [r.to_json() for r in self.rollouts],
            "metadata": self.metadata,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> RolloutGroup:
        return cls(
            prompt_token_ids=list(obj["prompt_token_ids"]),
            rollouts=[Rollout.from_json(r) for r in obj["rollouts"]],
            model=obj["model"],
            weight_version=obj.get("weight_version"),
            metadata=dict(obj.get("metadata") or {}),
        )
