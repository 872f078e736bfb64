"""SamplingSettings: a request's own sampling fields (OpenAI names, vLLM defaults), validated once.

Every strategy reads its request's settings from here; `sample` (and any strategy that lets a
`decoding` object override them) declares its overrides with `overrides_model`, so each field,
its type and its bounds are written down exactly once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator
from pydantic.fields import FieldInfo

MAX_N = 128
MAX_STOPS = 16


class SamplingSettings(BaseModel):
    """The request's own sampling fields. Unknown fields are an error (they come from code)."""

    # allow_inf_nan=False: NaN or inf is "must be a finite number", not a failed bound
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    max_tokens: int | None = Field(default=None, ge=1)  # None = up to the context
    temperature: float = Field(default=1.0, ge=0.0, le=100.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=-1)  # 0 or -1 = off (vLLM uses -1)
    n: int = Field(default=1, ge=1, le=MAX_N)
    seed: int | None = None
    stop: list[str] = Field(default_factory=list)
    stop_token_ids: list[int] = Field(default_factory=list)
    ignore_eos: bool = False  # only stop_token_ids (and max_tokens) end a choice
    logprobs: bool = False  # return the chosen tokens' log-probs
    top_logprobs: int = Field(default=0, ge=0)  # alternatives per token (the server caps it)
    # What log-probs are reported (vLLM's --logprobs-mode): "raw" model log-probs, or
    # "processed", those of the distribution actually sampled (temperature, top-k/top-p).
    logprobs_mode: Literal["raw", "processed"] = "raw"

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: list[str]) -> list[str]:
        if len(v) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop sequences")
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
        """These settings with every field the overrides set explicitly replaced (fields the
        settings do not have are ignored), validated again."""
        if isinstance(overrides, BaseModel):
            data = {k: getattr(overrides, k) for k in overrides.model_fields_set}
        else:
            data = dict(overrides)
        data = {k: v for k, v in data.items() if k in type(self).model_fields}
        return SamplingSettings.model_validate({**self.model_dump(), **data})


def overrides_model(name: str, fields: tuple[str, ...], doc: str) -> type[BaseModel]:
    """A pydantic model whose fields are the named SamplingSettings fields, each optional (None
    = keep the request's value) with the same type and bounds. Unknown fields are an error."""
    spec: dict[str, Any] = {}
    for f in fields:
        info = SamplingSettings.model_fields[f]
        spec[f] = (info.annotation | None, FieldInfo.merge_field_infos(info, default=None, default_factory=None))
    model = create_model(name, __config__=ConfigDict(extra="forbid", allow_inf_nan=False), __doc__=doc, **spec)
    model.model_rebuild()
    return model
