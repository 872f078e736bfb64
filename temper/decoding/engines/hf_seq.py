"""The HF engine's request bookkeeping: one SampleCall per `sample` call, one Seq per spec.

A Seq's life is one SeqStatus: WAITING (queued) → RUNNING (in a slot of the running batch) →
FINISHED (no more tokens; its KV still in its slot, parked there for a few steps when its spec
is `resident`) → RETIRED (its KV handed to the prefix cache, or dropped when it was aborted or
its spec asked for no caching). Whether its caller has been told is the call's business
(SampleCall.results), not the sequence's.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field

import numpy as np
import torch

from temper.decoding.engine import Sample, SampleSpec, TokenCallback


class SeqStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"
    RETIRED = "retired"


@dataclass(eq=False)
class SampleCall:
    """One `sample` call: its future, token callback and sequences. Cancelled when the awaiting
    task is; the scheduler then aborts its sequences before the next step."""

    future: asyncio.Future
    on_token: TokenCallback | None = None
    seqs: list[Seq] = field(default_factory=list)
    results: dict[int, Sample] = field(default_factory=dict)  # spec index -> its finished sample
    cancelled: bool = False

    def report(self, seq: Seq) -> None:
        """Record a finished sequence; resolve the future once every sequence has one."""
        if seq.index in self.results:
            return
        self.results[seq.index] = seq.result()
        if len(self.results) == len(self.seqs) and not self.future.done():
            self.future.set_result([self.results[i] for i in range(len(self.seqs))])

    def fail(self, exc: BaseException) -> None:
        self.cancelled = True
        if not self.future.done():
            self.future.set_exception(exc)


@dataclass(eq=False)
class Seq:
    """One spec in flight."""

    spec: SampleSpec
    call: SampleCall
    index: int  # position of the spec in its call
    seed: int
    limit: int  # new-token budget after clamping to the context
    stops: frozenset[int]
    status: SeqStatus = SeqStatus.WAITING
    reason: str = "length"  # finish reason, once FINISHED
    tokens: list[int] = field(default_factory=list)
    logp: list[float] = field(default_factory=list)
    logq: list[float] = field(default_factory=list)
    log_w: list[float] = field(default_factory=list)
    top_ids: list[np.ndarray] = field(default_factory=list)
    top_lps: list[np.ndarray] = field(default_factory=list)
    kv: torch.Tensor | None = None  # prefix KV between prefill and joining a batch
    kv_len: int = 0  # tokens whose KV exists (prefix + forwarded tokens)
    pending: int = 0  # the token the next decode step feeds (at position kv_len)
    slot: int | None = None  # its slot in the running batch
    parked_at: int | None = None  # engine step at which a finished resident row was parked
    pinned: int = 0  # tokens of spec.retain pinned in the prefix cache while this sequence runs
    cached_prefix: int = 0
    computed_prefix: int = 0
    forward_passes: int = 0

    @property
    def done(self) -> bool:
        """No more tokens will be drawn (FINISHED or RETIRED)."""
        return self.status in (SeqStatus.FINISHED, SeqStatus.RETIRED)

    @property
    def position(self) -> int:
        """Absolute index of the next token to sample (the RNG offset)."""
        return len(self.spec.prefix) + len(self.tokens)

    @property
    def sequence(self) -> tuple[int, ...]:
        return self.spec.prefix + tuple(self.tokens)

    def append(self, tok: int, lp: float, lq: float, lw: float) -> None:
        self.pending = tok
        self.tokens.append(tok)
        self.logp.append(lp)
        self.logq.append(lq)
        self.log_w.append(lw)
        self.forward_passes += 1

    def truncate(self, n: int) -> None:
        """Keep the first n new tokens (a callback stopped the row there)."""
        for lst in (self.tokens, self.logp, self.logq, self.log_w, self.top_ids, self.top_lps):
            del lst[n:]

    def finish(self, reason: str) -> None:
        if not self.done:
            self.status, self.reason = SeqStatus.FINISHED, reason

    def result(self) -> Sample:
        f32 = lambda x: np.asarray(x, dtype=np.float32)
        s = Sample(
            tokens=list(self.tokens),
            logp=f32(self.logp),
            logq=f32(self.logq),
            log_w=f32(self.log_w),
            finish_reason=self.reason,
            computed_prefix_tokens=self.computed_prefix,
            cached_prefix_tokens=self.cached_prefix,
            forward_passes=self.forward_passes,
        )
        if self.spec.top_logprobs:
            k = self.spec.top_logprobs
            s.top_ids = np.stack(self.top_ids).astype(np.int64) if self.top_ids else np.zeros((0, k), np.int64)
            s.top_logps = np.stack(self.top_lps).astype(np.float32) if self.top_lps else np.zeros((0, k), np.float32)
        return s
