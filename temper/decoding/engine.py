"""The Engine protocol: what every decoding strategy may ask of a language model.

Token ids in, token ids out; text lives at the edges (the tokenizer is exposed for them).
An engine samples batches of suffixes from q ∝ p^α and scores sequences under p. It owns
batching, KV reuse and devices; strategies never see tensors or caches.

Per generated token a sample carries, in float32:
  logp  = log p(x_t | x_<t)               raw model log-prob (temperature 1, full vocabulary)
  logq  = log q(x_t | x_<t)               under the distribution actually sampled
  log_w = α·logp − logq                   for a pure tempered proposal this is log Z_t, the log
                                          normaliser of p^α at that position (≤ 0 for α ≥ 1)
MH acceptance and SMC weights need nothing else (research/power_sampling.md §2.3).

Log-prob alternatives (top_logprobs) come in one of two modes, per spec, as vLLM's
`--logprobs-mode`: "raw" (log_softmax of the model's logits) or "processed" (log-probs under q,
the distribution actually sampled: temperature and top-k / top-p applied, −inf outside the
kept set). Scoring is always raw.

Weights can change while an engine serves (RL training loops): `load_weights` swaps them between
steps and clears the prefix cache; `weight_version` counts the swaps.

Optional parts of the protocol (fields with defaults: an engine that ignores them is still
correct, only slower or less informative; the toy and HF engines implement all of them):
  * TokenDraw.log_w        the token's log_w streamed to the token callback (None = not
                           streamed), so a strategy can stop a proposal that can no longer be
                           accepted (power MH's early rejection) before it finishes.
  * SampleSpec.cache       False = do not keep this sample's KV for reuse once it finishes
                           (look-ahead rollouts: thousands of throw-away suffixes that would
                           evict the prefixes that matter).
  * SampleSpec.retain      token ids (e.g. an MH chain's current state while it proposes from
                           a cut of it) whose cached KV the caller will need again: the engine
                           keeps them cached (pinned) while this sample runs, so samples that
                           branch off them (rejected proposals) are evicted instead.
  * SampleSpec.resident    the caller will probably continue from prefix + tokens soon (an SMC
                           particle between two checkpoints): keep the finished sequence's KV
                           where it is for a few scheduler steps, so that a spec whose prefix is
                           exactly that sequence continues it without copying, and further such
                           specs (resampled copies) copy only that row.

This module holds the protocol and plain data types only; no engine lives here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from temper.decoding.errors import ContextLengthError

FinishReason = Literal["stop", "length", "abort"]


@dataclass(frozen=True, slots=True)
class TokenDraw:
    """One token as it is appended, for streaming: its id, raw log-prob, the top alternatives
    (in the spec's logprobs_mode, most likely first) when the spec asked for top_logprobs, its
    log-prob under the distribution sampled, and its log_w (α·logp − logq, as in Sample.log_w).
    None = the engine does not stream that value."""

    token: int
    logp: float
    top_ids: np.ndarray | None = None  # [k] int64
    top_logps: np.ndarray | None = None  # [k] float32
    log_w: float | None = None  # None: not streamed (early rejection is then skipped)
    logq: float | None = None  # None: the engine did not say (treat as unknown)


# Called by an engine for every token it appends: (spec index in the call, the draw).
# Return False to end that sequence now (stop string found, client gone); it then finishes
# with reason "stop" and keeps the token just passed.
TokenCallback = Callable[[int, TokenDraw], bool]


@dataclass(frozen=True, slots=True)
class SampleSpec:
    """One suffix to sample: continue `prefix` by up to `max_new_tokens` tokens from q ∝ p^α."""

    prefix: tuple[int, ...]
    max_new_tokens: int
    alpha: float = 1.0  # q ∝ p^alpha, i.e. temperature 1/alpha; math.inf = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off; nucleus over q (after the temperature), as vLLM
    stop_ids: tuple[int, ...] | None = None  # None = the engine's eos ids; () = never stop early
    seed: int | None = None  # per-spec; same seed + same prefix = same tokens, whatever the batch
    top_logprobs: int = 0  # also return the k most likely alternatives per generated token
    logprobs_mode: Literal["raw", "processed"] = "raw"  # what the alternatives are log-probs of
    # Hints (module docstring): they change what an engine keeps, never what it samples.
    cache: bool = True  # False: do not keep this sample's KV for reuse once it finishes
    retain: tuple[int, ...] = ()  # token ids whose cached KV the caller will need again
    resident: bool = False  # the caller will likely continue from prefix + tokens right away

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefix", tuple(int(t) for t in self.prefix))
        object.__setattr__(self, "retain", tuple(int(t) for t in self.retain))
        if len(self.prefix) == 0:
            raise ValueError("prefix: must hold at least one token id")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: must be >= 1, got {self.max_new_tokens}")
        if not (self.alpha > 0) or math.isnan(self.alpha):
            raise ValueError(f"alpha: must be > 0 (inf = greedy), got {self.alpha}")
        if self.top_k < 0:
            raise ValueError(f"top_k: must be >= 0, got {self.top_k}")
        if not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p: must be in (0, 1], got {self.top_p}")
        if self.top_logprobs < 0:
            raise ValueError(f"top_logprobs: must be >= 0, got {self.top_logprobs}")
        if self.logprobs_mode not in ("raw", "processed"):
            raise ValueError(f"logprobs_mode: must be 'raw' or 'processed', got {self.logprobs_mode!r}")

    @property
    def greedy(self) -> bool:
        return math.isinf(self.alpha)


@dataclass(slots=True)
class Sample:
    """What an engine returns for one SampleSpec."""

    tokens: list[int]  # new tokens; a stop/eos token that ended the sample is included
    logp: np.ndarray  # [T] float32
    logq: np.ndarray  # [T] float32
    log_w: np.ndarray  # [T] float32
    finish_reason: FinishReason
    top_ids: np.ndarray | None = None  # [T, k] int64, when spec.top_logprobs > 0
    top_logps: np.ndarray | None = None  # [T, k] float32, in spec.logprobs_mode
    computed_prefix_tokens: int = 0  # prefix tokens run through the model (not from cache)
    cached_prefix_tokens: int = 0  # prefix tokens whose KV came from the prefix cache
    forward_passes: int = 0  # model forward calls this sample took part in

    def __len__(self) -> int:
        return len(self.tokens)


@dataclass(slots=True)
class Scored:
    """Raw log-probs of sequence[start:] under the model (position j scores token j given <j)."""

    logp: np.ndarray  # [L - start] float32
    top_ids: np.ndarray | None = None  # [L - start, k] int64
    top_logps: np.ndarray | None = None  # [L - start, k] float32
    ranks: np.ndarray | None = None  # [L - start] int64 (ranks=True): 1 + tokens scoring higher


@dataclass(slots=True)
class EngineStats:
    """Counters since the engine started (read by metrics and benchmarks)."""

    forward_passes: int = 0
    forward_tokens: int = 0  # tokens run through the model (prefill + decode)
    generated_tokens: int = 0
    prefix_lookups: int = 0
    prefix_hit_tokens: int = 0  # prefix tokens served from the cache
    prefix_query_tokens: int = 0  # prefix tokens asked for

    @property
    def prefix_hit_rate(self) -> float:
        return self.prefix_hit_tokens / self.prefix_query_tokens if self.prefix_query_tokens else 0.0


@runtime_checkable
class Tokenizer(Protocol):
    """Text edge of an engine. Chat templates come from the model."""

    eos_ids: tuple[int, ...]
    vocab_size: int

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]: ...

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str: ...

    def apply_chat_template(
        self, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool = True
    ) -> list[int]: ...


@runtime_checkable
class Engine(Protocol):
    """A language model behind the decoding strategies (see the module docstring)."""

    name: str
    tokenizer: Tokenizer
    eos_ids: tuple[int, ...]
    max_context: int  # prefix + new tokens may not exceed this
    stats: EngineStats
    weight_version: int  # 0 at start, +1 per load_weights

    async def sample(
        self, specs: Sequence[SampleSpec], on_token: TokenCallback | None = None
    ) -> list[Sample]:
        """Sample every spec; concurrent calls share forward passes. Cancelling the awaiting
        task aborts the specs and frees their state."""
        ...

    async def score(
        self,
        sequences: Sequence[Sequence[int]],
        start: int | Sequence[int] = 1,
        top_k: int = 0,
        ranks: bool = False,
    ) -> list[Scored]:
        """Raw log-probs of sequence[start:] for each sequence (start ≥ 1); with `ranks`, each
        scored token's rank in its distribution (vLLM's: 1 + how many tokens have a higher
        log-prob)."""
        ...

    async def load_weights(self, path: str) -> None:
        """Swap in the weights of a checkpoint (a directory of .safetensors files or one file)
        between steps, clear the prefix cache and bump `weight_version`. Every name and shape
        is checked before anything changes: a ParamError naming the first mismatch leaves the
        served weights as they were."""
        ...

    async def reset_prefix_cache(self) -> bool:
        """Drop every cached prefix; True when the cache is empty afterwards."""
        ...

    async def close(self) -> None: ...


def check_fits(engine_max_context: int, spec: SampleSpec) -> None:
    """Raise ContextLengthError naming the numbers when a spec cannot fit."""
    if len(spec.prefix) >= engine_max_context:
        raise ContextLengthError(
            f"prompt: {len(spec.prefix)} tokens do not fit the model's context of "
            f"{engine_max_context} tokens (at least one new token must fit)"
        )


def score_starts(
    sequences: Sequence[Sequence[int]], start: int | Sequence[int], max_context: int
) -> list[int]:
    """Validate `score` arguments; one start per sequence (a single int applies to all)."""
    starts = [start] * len(sequences) if isinstance(start, int) else list(start)
    if len(starts) != len(sequences):
        raise ValueError("start: need one start per sequence")
    for seq, s0 in zip(sequences, starts, strict=True):
        if not 1 <= s0 <= len(seq):
            raise ValueError(f"start: must be in [1, {len(seq)}], got {s0}")
        if len(seq) > max_context:
            raise ContextLengthError(f"sequence: {len(seq)} tokens exceed the model's context of {max_context}")
    return starts
