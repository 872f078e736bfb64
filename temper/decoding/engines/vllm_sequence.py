"""SeqState: one spec of a VLLMEngine.sample call in flight, on the caller's side.

It folds vLLM's outputs for its request into tokens and per-token logp / logq / log_w (through
vllm_params.decode_tokens), runs the token callback with the HF engine's semantics (False ends
the sequence at that token, reason "stop"), takes the scoring pass's numbers when it needed one
(Tier 1's raw logp, top-k alternatives), and builds the Sample. No vLLM engine state here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from temper.decoding.engine import Sample, SampleSpec, Scored, TokenCallback, TokenDraw
from temper.decoding.engines.vllm_params import decode_tokens, processed_alternatives


@dataclass(eq=False)
class SeqState:
    spec: SampleSpec
    rid: str  # the vLLM request id
    stops: frozenset[int]
    deferred: bool  # needs the scoring pass before its callbacks can run
    tokens: list[int] = field(default_factory=list)
    logp: list[float] = field(default_factory=list)
    logq: list[float] = field(default_factory=list)
    log_w: list[float] = field(default_factory=list)
    reason: str = "length"
    cut: bool = False  # a callback ended it
    done: bool = False  # vLLM's stream for it has ended
    cached: int = 0  # prefix tokens vLLM found in its prefix cache
    top: Scored | None = None

    def fold(self, out, *, tier: int, sentinel: int | None, vocab_size: int, on_token: TokenCallback | None,
             index: int) -> bool:
        """Append one vLLM RequestOutput (FINAL_ONLY: the whole sample; DELTA: the new tokens).
        Returns True when the callback ended the sequence in this output."""
        if self.cut:
            return False  # outputs that were in flight when a callback stopped it
        if not self.tokens:
            self.cached = out.num_cached_tokens or 0
        o = out.outputs[0]
        new = list(o.token_ids)
        offset = 0 if len(o.logprobs) == len(new) else len(self.tokens)  # cumulative logprobs, if ever
        lp, lq, lw = decode_tokens(self.spec, new, o.logprobs, offset, tier=tier, sentinel=sentinel,
                                   vocab_size=vocab_size)
        for j, tok in enumerate(new):
            self.tokens.append(tok)
            self.logp.append(lp[j])
            self.logq.append(lq[j])
            self.log_w.append(lw[j])
            if on_token is None:
                continue
            # log_w is known now on Tier 2 (NaN until the scoring pass on Tier 1: not streamed)
            draw = TokenDraw(tok, lp[j], log_w=None if math.isnan(lw[j]) else lw[j], logq=lq[j])
            if not on_token(index, draw):
                self.cut, self.reason = True, "stop"
                return True
        if o.finish_reason is not None:  # "stop" (a stop id, kept as the last token), "length", "abort"
            self.reason = o.finish_reason if o.finish_reason in ("stop", "length") else "abort"
        return False

    def apply_scores(self, sc: Scored, tier: int) -> None:
        """The scoring pass's raw log-probs: Tier 1 gets logp and log_w = α·logp − logq."""
        if tier == 1 and not self.spec.greedy:
            self.logp = sc.logp.tolist()
            self.log_w = (self.spec.alpha * sc.logp.astype(np.float64) - np.asarray(self.logq)).tolist()
        if self.spec.top_logprobs:
            k = self.spec.top_logprobs
            tops = sc.top_logps[:, :k]
            if self.spec.logprobs_mode == "processed" and not self.spec.greedy:
                tops = processed_alternatives(self.spec, sc.top_ids[:, :k], tops, np.asarray(self.log_w))
            self.top = Scored(sc.logp, sc.top_ids[:, :k], tops)

    def deliver(self, index: int, on_token: TokenCallback) -> None:
        """Deferred callbacks, token by token, with the same stop semantics."""
        for j, tok in enumerate(self.tokens):
            top = (self.top.top_ids[j], self.top.top_logps[j]) if self.top is not None else (None, None)
            draw = TokenDraw(tok, float(self.logp[j]), *top, log_w=float(self.log_w[j]), logq=float(self.logq[j]))
            if not on_token(index, draw):
                n = j + 1
                self.tokens, self.logp, self.logq, self.log_w = (
                    self.tokens[:n], self.logp[:n], self.logq[:n], self.log_w[:n])
                if self.top is not None:
                    self.top = Scored(self.top.logp[:n], self.top.top_ids[:n], self.top.top_logps[:n])
                self.reason = "stop"
                return

    def result(self) -> Sample:
        arr = [np.asarray(x, dtype=np.float32) for x in (self.logp, self.logq, self.log_w)]
        s = Sample(list(self.tokens), *arr, finish_reason=self.reason,
                   computed_prefix_tokens=len(self.spec.prefix) - self.cached, cached_prefix_tokens=self.cached,
                   forward_passes=len(self.tokens))
        if self.top is not None:
            s.top_ids, s.top_logps = self.top.top_ids, self.top.top_logps
        return s
