"""How the power strategies ask the engine for suffixes: one place that turns "continue this
response" jobs into SampleSpecs and the engine's samples back into Pieces.

Why one place: every power method (MH proposals, SMC particles, look-ahead rollouts and
candidates) must end a suffix at the same points for the target to be p^α of what the user
gets, so they all decode through here:
  * a stop token or a stop string ends a suffix and is absorbing: the response is terminal at
    the token whose decoded text first contains a stop string (detected over the whole response
    text, so a stop string straddling the point a suffix starts from is found; the text after
    it is cut when the completion is built);
  * `hook(job, decoded, draw, finished)` sees every token as it is drawn (with its streamed
    log_w and top alternatives) and may end the suffix there: "abandon" (an MH proposal that can
    no longer be accepted) or "pause" (a look-ahead proposal must choose the token at a gated
    context itself; the token just drawn there is a draw of q and is kept for that choice).

What this is not: any decision of a sampler (power_mh, power_smc, power_lookahead decide).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from temper.decoding.counting_engine import CountingEngine
from temper.decoding.engine import SampleSpec, TokenDraw
from temper.decoding.strategies.base import SEED_MASK, DecodeRequest, derive_seed
from temper.decoding.strategies.stops import StopWatch

M64 = 2**64 - 1


def seed_stream(seed: int | None, tag: int):
    """A function path → 63-bit engine seed for the sub-streams `tag` of a request seed (None
    stays None: unseeded requests stay random). One SeedSequence derivation per request, then
    splitmix64 over Python's hash of the path (deterministic for ints) per call: chains,
    proposals and rollouts ask for a seed at every engine call, and derive_seed costs ~40 µs."""
    base = derive_seed(seed, tag)

    def at(*path: int) -> int | None:
        if base is None:
            return None
        z = (hash((base, *path)) + 0x9E3779B97F4A7C15) & M64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return (z ^ (z >> 31)) & SEED_MASK

    return at


# hook(job index, tokens decoded so far, the draw, whether the suffix ends at it) → None to go
# on, or the reason to end the suffix here ("abandon" or "pause").
Hook = Callable[[int, int, TokenDraw, bool], str | None]


@dataclass(frozen=True, slots=True)
class Job:
    """Continue response `resp` (tokens after the prompt) by up to `max_new` tokens."""

    resp: tuple[int, ...]
    max_new: int
    seed: int | None
    alpha: float | None = None  # None = the run's α (an SMC α ramp passes its current step)
    raw: bool = False  # sample the raw model, untruncated (look-ahead p-rollouts)
    top_logprobs: int = 0
    cache: bool = True
    resident: bool = False
    retain: tuple[int, ...] = ()  # response tokens whose KV the caller will need again


@dataclass(slots=True)
class Piece:
    """What a job became. `end`: "stop" (a stop token or string: the response is terminal),
    "length" (max_new reached), "abandon" or "pause" (a hook ended it at its last token)."""

    tokens: list[int]
    logp: np.ndarray  # [T] float32 raw log-probs
    log_w: np.ndarray  # [T] float32 α·logp − logq under the tempered proposal
    end: str
    top_ids: np.ndarray | None = None  # [T, k] when the job asked for top_logprobs
    top_logps: np.ndarray | None = None


class SuffixDecoder:
    """One request's view of the engine for power sampling (prompt, α, truncation, stops)."""

    def __init__(self, req: DecodeRequest, alpha: float, calls: CountingEngine):
        s = req.settings
        self.prompt = tuple(req.prompt)
        self.alpha = float(alpha)
        self.stop_ids = req.stop_ids()
        self.stop_set = frozenset(self.stop_ids)
        self.stops = [x for x in s.stop if x]
        self.top_k, self.top_p = s.top_k_or_off, s.top_p
        self.tokenizer = req.engine.tokenizer
        self.calls = calls

    def watch(self, resp: Sequence[int]) -> StopWatch | None:
        """A stop-string detector already holding the tail of `resp` (None without stop strings)."""
        if not self.stops:
            return None
        w = StopWatch(self.tokenizer, self.stops)
        w.tokens = list(resp[-w.window :])
        return w

    def ends(self, resp: Sequence[int]) -> bool:
        """Does `resp` end at its last token (a stop token, or a stop string first completed
        there)? Valid states never hold a stop before their last token, so a stop string found
        in the tail was completed by the last token."""
        if not resp:
            return False
        if resp[-1] in self.stop_set:
            return True
        w = self.watch(resp[:-1])
        return w is not None and w.push(resp[-1])

    def spec(self, job: Job) -> SampleSpec:
        return SampleSpec(
            prefix=self.prompt + job.resp,
            max_new_tokens=job.max_new,
            alpha=1.0 if job.raw else self.alpha if job.alpha is None else job.alpha,
            # raw rollouts sample p itself: their weight is (α−1)·Σ log p over the full vocabulary
            top_k=0 if job.raw else self.top_k,
            top_p=1.0 if job.raw else self.top_p,
            stop_ids=self.stop_ids,
            seed=job.seed,
            top_logprobs=job.top_logprobs,
            cache=job.cache,
            resident=job.resident,
            retain=(self.prompt + job.retain) if job.retain else (),
        )

    async def decode(self, jobs: Sequence[Job], hook: Hook | None = None) -> list[Piece]:
        """Run every job in one engine call; returns one Piece per job."""
        if not jobs:
            return []
        watches = [self.watch(j.resp) for j in jobs]
        decoded = [0] * len(jobs)
        ended: list[str | None] = [None] * len(jobs)

        def on_token(i: int, draw: TokenDraw) -> bool:
            decoded[i] += 1
            w = watches[i]
            if w is not None and w.push(draw.token):
                ended[i] = "stop"  # absorbing: the engine ends it here, like a stop token
            finished = ended[i] is not None or draw.token in self.stop_set or decoded[i] >= jobs[i].max_new
            if hook is not None:
                why = hook(i, decoded[i], draw, finished)
                if why is not None:
                    ended[i] = why
            return ended[i] is None

        need_cb = hook is not None or any(w is not None for w in watches)
        samples = await self.calls.sample([self.spec(j) for j in jobs], on_token if need_cb else None)
        out = []
        for smp, why in zip(samples, ended, strict=True):
            if why is None:
                why = "stop" if smp.tokens and smp.tokens[-1] in self.stop_set else "length"
            out.append(Piece(list(smp.tokens), smp.logp, smp.log_w, why, smp.top_ids, smp.top_logps))
        return out
