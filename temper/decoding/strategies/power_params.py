"""The request surface of strategy "power": its validated `decoding` object (PowerParams) and
the new-token budget, shared by the strategy (power.py) and the algorithms (power_mh.py,
power_smc.py, power_lookahead_sampler.py), which import this module and never each other.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from temper.decoding.strategies.base import DecodeRequest
from temper.decoding.strategies.power_lookahead import LookaheadConfig

DEFAULT_MAX_TOKENS = 3072  # T_max of the paper; the request's own max_tokens wins when smaller
MAX_MCMC_STEPS = 1000
MAX_PROPOSALS = 64
MAX_PARTICLES = 1024
MAX_LOOKAHEAD = 64  # candidates K and rollouts M per candidate
MAX_CANDIDATES = 256  # candidate blocks L of the paper's block sampler

MH_ONLY = ("mcmc_steps", "proposals", "early_stop", "early_rejection")
SMC_ONLY = ("particles", "resample_every", "ess_threshold", "ramp_tokens")
LOOKAHEAD_KNOBS = ("lookahead_k", "lookahead_m", "lookahead_h", "lookahead_threshold", "lookahead_rollout")
SAMPLER_ONLY = ("jackknife", "lookahead_candidates")  # the paper's sampler (method "lookahead")

DEFAULT_BLOCK_SIZE = 192  # Karan & Du's T/16 at T = 3072

# Look-ahead defaults: the paper's for its own sampler (K = M = 8; H and L are not stated,
# the public ports use 192 and 32); cheaper ones when look-ahead is a proposal inside MH/SMC,
# where the weights correct what a short look-ahead misses (lookahead.md §2.6).
SAMPLER_DEFAULTS = dict(k=8, m=8, h=192, threshold=1.0)
PROPOSAL_DEFAULTS = dict(k=8, m=4, h=32, threshold=0.9)
DEFAULT_EPS = 0.05


class PowerParams(BaseModel):
    """The request's `decoding` object for strategy "power" (unknown fields are a 400)."""

    model_config = ConfigDict(extra="forbid")

    # `method` and `proposal` come first: the cross-field validators below read them.
    method: Literal["mh", "smc", "lookahead"] = "mh"
    proposal: Literal["tempered", "lookahead"] = "tempered"  # mh and smc
    alpha: float = Field(default=4.0, ge=1.0)  # target p^α; proposal temperature 1/α
    # New-token budget. None = the request's max_tokens capped at DEFAULT_MAX_TOKENS; a value
    # here overrides the request's (as decoding fields do for `sample`). The context caps both.
    max_tokens: int | None = Field(default=None, ge=1)
    seed: int | None = None  # overrides the request's seed
    # mh, and the block size of the paper's sampler (1 = its token-level Algorithm 1)
    block_size: int = Field(default=DEFAULT_BLOCK_SIZE, ge=1)
    # mh
    mcmc_steps: int = Field(default=10, ge=0, le=MAX_MCMC_STEPS)  # per block; 0 = plain proposals
    proposals: int = Field(default=1, ge=1, le=MAX_PROPOSALS)  # M per step; 1 = MH, > 1 = i-SIR
    # End a chain at the first block boundary where it holds a stop (the reference's and §9's
    # `break`): cheaper, but biased, because the target's length keeps growing while that
    # chain stops being corrected. Off = exact: finished chains keep their MH steps.
    early_stop: bool = False
    # Stop a tempered proposal as soon as it can no longer be accepted: exact (the same
    # decisions as decoding it fully), fewer tokens. Needs log_w streamed by the engine.
    early_rejection: bool = True
    # smc
    particles: int = Field(default=32, ge=1, le=MAX_PARTICLES)
    resample_every: int = Field(default=64, ge=1)  # tokens between ESS checks
    ess_threshold: float = Field(default=0.5, ge=0.0, le=1.0)  # resample when ESS < this × particles
    ramp_tokens: int = Field(default=0, ge=0)  # α ramps 1 → α over these first tokens
    # look-ahead (method "lookahead", or proposal "lookahead"); None = the defaults above
    lookahead_k: int | None = Field(default=None, ge=1, le=MAX_LOOKAHEAD)
    lookahead_m: int | None = Field(default=None, ge=1, le=MAX_LOOKAHEAD)
    lookahead_h: int | None = Field(default=None, ge=1)
    lookahead_threshold: float | None = Field(default=None, gt=0.0, le=1.0)
    lookahead_rollout: Literal["q", "p"] = "q"
    lookahead_eps: float | None = Field(default=None, gt=0.0, le=1.0)  # proposal only
    jackknife: bool = True
    lookahead_candidates: int = Field(default=32, ge=1, le=MAX_CANDIDATES)

    @field_validator("alpha", "ess_threshold", "lookahead_threshold", "lookahead_eps")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("must be finite")
        return v

    # Cross-field: a knob that does not apply to the chosen method is almost certainly a
    # mistake (the client thinks it configured SMC but runs MH), so it is rejected by name.
    # Field validators only run on values the client sent, and raise at the field's own
    # location, so the 400 names it.
    @field_validator("proposal")
    @classmethod
    def _proposal(cls, v, info: ValidationInfo):
        return _only(v, info, info.data.get("method") in ("mh", "smc"), "methods 'mh' and 'smc'")

    @field_validator("block_size")
    @classmethod
    def _block(cls, v, info: ValidationInfo):
        return _only(v, info, info.data.get("method") != "smc", "methods 'mh' and 'lookahead'")

    @field_validator(*MH_ONLY)
    @classmethod
    def _mh_only(cls, v, info: ValidationInfo):
        return _only(v, info, info.data.get("method") == "mh", "method 'mh'")

    @field_validator(*SMC_ONLY)
    @classmethod
    def _smc_only(cls, v, info: ValidationInfo):
        _only(v, info, info.data.get("method") == "smc", "method 'smc'")
        if info.field_name == "ramp_tokens" and info.data.get("proposal") == "lookahead":
            raise ValueError("ramp_tokens cannot be combined with proposal 'lookahead'")
        return v

    @field_validator(*LOOKAHEAD_KNOBS)
    @classmethod
    def _lookahead(cls, v, info: ValidationInfo):
        ok = info.data.get("method") == "lookahead" or info.data.get("proposal") == "lookahead"
        _only(v, info, ok, "method 'lookahead' or proposal 'lookahead'")
        if info.field_name == "lookahead_threshold" and info.data.get("method") == "lookahead":
            _only(v, info, info.data.get("block_size", DEFAULT_BLOCK_SIZE) == 1, "method 'lookahead' with block_size 1")
        return v

    @field_validator("lookahead_eps")
    @classmethod
    def _eps(cls, v, info: ValidationInfo):
        return _only(v, info, info.data.get("proposal") == "lookahead", "proposal 'lookahead'")

    @field_validator(*SAMPLER_ONLY)
    @classmethod
    def _sampler(cls, v, info: ValidationInfo):
        _only(v, info, info.data.get("method") == "lookahead", "method 'lookahead'")
        if info.field_name == "lookahead_candidates":
            block = info.data.get("block_size", DEFAULT_BLOCK_SIZE)
            _only(v, info, block > 1, "method 'lookahead' with block_size > 1")
        return v

    @property
    def uses_lookahead(self) -> bool:
        return self.method == "lookahead" or self.proposal == "lookahead"

    def lookahead(self, max_tokens: int) -> LookaheadConfig | None:
        """The look-ahead settings with defaults filled in, or None without look-ahead."""
        if not self.uses_lookahead:
            return None
        d = SAMPLER_DEFAULTS if self.method == "lookahead" else PROPOSAL_DEFAULTS
        eps = 0.0 if self.method == "lookahead" else (self.lookahead_eps or DEFAULT_EPS)
        pick = lambda v, key: d[key] if v is None else v  # noqa: E731
        return LookaheadConfig(
            k=pick(self.lookahead_k, "k"), m=pick(self.lookahead_m, "m"), h=pick(self.lookahead_h, "h"),
            threshold=pick(self.lookahead_threshold, "threshold"), eps=eps, rollout=self.lookahead_rollout,
            max_tokens=max_tokens,
        )


def _only(v, info: ValidationInfo, ok: bool, where: str):
    if not ok:
        raise ValueError(f"{info.field_name} only applies to {where}")
    return v


def token_budget(req: DecodeRequest, params: PowerParams) -> int:
    """New tokens per response: decoding.max_tokens if given, else the request's max_tokens
    capped at DEFAULT_MAX_TOKENS; never more than the context leaves after the prompt."""
    capped = req.max_new_tokens(DEFAULT_MAX_TOKENS)  # also raises the 400 for a full context
    if params.max_tokens is None:
        return capped
    return min(params.max_tokens, req.engine.max_context - len(req.prompt))
