"""The request surface of strategy "power": its validated `decoding` object (PowerParams) and
the new-token budget, shared by the strategy (power.py) and both algorithms (power_mh.py,
power_smc.py), which import this module and never each other.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from temper.decoding.strategies.base import DecodeRequest

DEFAULT_MAX_TOKENS = 3072  # T_max of the paper; the request's own max_tokens wins when smaller
MAX_MCMC_STEPS = 1000
MAX_PROPOSALS = 64
MAX_PARTICLES = 1024

MH_ONLY = ("block_size", "mcmc_steps", "proposals", "early_stop")
SMC_ONLY = ("particles", "resample_every", "ess_threshold", "ramp_tokens")


class PowerParams(BaseModel):
    """The request's `decoding` object for strategy "power" (unknown fields are a 400)."""

    model_config = ConfigDict(extra="forbid")

    # `method` comes first: the cross-field validators below read it from info.data.
    method: Literal["mh", "smc"] = "mh"
    alpha: float = Field(default=4.0, ge=1.0)  # target p^α; proposal temperature 1/α
    # New-token budget. None = the request's max_tokens capped at DEFAULT_MAX_TOKENS; a value
    # here overrides the request's (as decoding fields do for `sample`). The context caps both.
    max_tokens: int | None = Field(default=None, ge=1)
    seed: int | None = None  # overrides the request's seed
    # mh
    block_size: int = Field(default=192, ge=1)
    mcmc_steps: int = Field(default=10, ge=0, le=MAX_MCMC_STEPS)  # per block; 0 = plain tempered sampling
    proposals: int = Field(default=1, ge=1, le=MAX_PROPOSALS)  # M per step; 1 = MH, > 1 = i-SIR
    # End a chain at the first block boundary where it holds EOS (the reference's and §9's
    # `break`): cheaper, but biased, because the target's length keeps growing while that
    # chain stops being corrected. Off = exact: finished chains keep their MH steps.
    early_stop: bool = False
    # smc
    particles: int = Field(default=32, ge=1, le=MAX_PARTICLES)
    resample_every: int = Field(default=64, ge=1)  # tokens between ESS checks
    ess_threshold: float = Field(default=0.5, ge=0.0, le=1.0)  # resample when ESS < this × particles
    ramp_tokens: int = Field(default=0, ge=0)  # α ramps 1 → α over these first tokens

    @field_validator("alpha", "ess_threshold")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be finite")
        return v

    # Cross-field: a knob of the other method is almost certainly a mistake (the client thinks
    # it configured SMC but runs MH), so it is rejected by name. Field validators only run on
    # values the client sent, and raise at the field's own location, so the 400 names it.
    @field_validator(*MH_ONLY)
    @classmethod
    def _mh_only(cls, v, info: ValidationInfo):
        if info.data.get("method") == "smc":
            raise ValueError(f"{info.field_name} only applies to method 'mh'")
        return v

    @field_validator(*SMC_ONLY)
    @classmethod
    def _smc_only(cls, v, info: ValidationInfo):
        if info.data.get("method", "mh") == "mh":
            raise ValueError(f"{info.field_name} only applies to method 'smc'")
        return v



def token_budget(req: DecodeRequest, params: PowerParams) -> int:
    """New tokens per response: decoding.max_tokens if given, else the request's max_tokens
    capped at DEFAULT_MAX_TOKENS; never more than the context leaves after the prompt."""
    capped = req.max_new_tokens(DEFAULT_MAX_TOKENS)  # also raises the 400 for a full context
    if params.max_tokens is None:
        return capped
    return min(params.max_tokens, req.engine.max_context - len(req.prompt))
