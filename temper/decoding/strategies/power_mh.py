"""Blockwise Metropolis-Hastings / i-SIR for power sampling, exact (research/power_sampling.md §9.1,
/work/notes/lookahead.md §2.4, §3).

What this is: n independent chains targeting π ∝ p^α over responses of at most `max_tokens`
tokens. Each chain is its own asyncio task making its own engine calls; the engine's
continuous batching lets chains share forward passes, and no chain waits for another's
longest proposal.

Block k's intermediate target π_k lives on responses that end in a stop (a stop token or a
stop string: absorbing) within t_k = k·B tokens, and on unfinished responses of exactly t_k
tokens. One move of a chain in state x (real length ℓ(x), stop included):
  * cut i uniform over [0, ℓ(x)) — over the response's real length, so a finished 300-token
    answer in a 3,072-token block moves at every step;
  * M suffixes from x[:i] up to t_k (or a stop), drawn from the proposal: tempered q, or the
    look-ahead r (power_lookahead.py) whose per-token log_w = α·log p − log r were stored
    with every token, the current state's included (so the reverse move costs nothing);
  * M = 1: accept iff log u < Σ log_w(y_i:) − Σ log_w(x_i:) + log ℓ(x) − log ℓ(y)
    (power_math.mh_log_accept: the last two terms are the Hastings factor of the
    length-dependent cut); M > 1: i-SIR, the next state drawn ∝ exp(Σ log_w − log ℓ) among
    current + proposals, by Gumbel-max.
Early rejection (tempered proposals, α ≥ 1): u (and the Gumbel noise) are drawn before the
proposal is decoded and the engine streams each token's log_w; a proposal whose best possible
outcome can no longer win is stopped at once (power_math.mh_reject_bound). The decision is
the one full decoding would make, with fewer tokens.

A finished chain keeps making its moves in later blocks unless `early_stop` (biased: it
freezes a π_k sample while the target grows to π_K).

What this is not: the parameters (power_params.py), the completions (power.py) or the math
(power_math).
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import numpy as np

from temper.decoding.counting_engine import CountingEngine
from temper.decoding.engine import TokenDraw
from temper.decoding.power_math import block_lengths, gumbel, isir_scores, mh_log_accept, mh_reject_bound
from temper.decoding.strategies.base import DecodeRequest, request_rng
from temper.decoding.strategies.power_decode import Job, Piece, SuffixDecoder, seed_stream
from temper.decoding.strategies.power_lookahead import Lookahead, Track
from temper.decoding.strategies.power_params import PowerParams

# Seed-path tags: engine seeds are seed_stream(seed, tag)(chain, block, step, ...); a chain's own
# cuts and uniforms come from request_rng(seed, RNG_TAG, chain). Distinct tags = independent streams.
EXTEND_TAG, STEP_TAG, RNG_TAG = 11, 12, 13
LOGW_SLACK = 1e-6  # per remaining token: the engine's fp32 log_w can exceed 0 by rounding


class MHRun:
    """What every chain of one request shares: the decoder, the look-ahead (or None), knobs."""

    def __init__(self, req: DecodeRequest, p: PowerParams, max_tokens: int, seed: int | None,
                 calls: CountingEngine, la: Lookahead | None):
        self.p, self.seed, self.T, self.la = p, seed, max_tokens, la
        self.dec = SuffixDecoder(req, p.alpha, calls)
        self.early_rejection = p.early_rejection and la is None
        self.extend_seed, self.step_seed = seed_stream(seed, EXTEND_TAG), seed_stream(seed, STEP_TAG)


class MHChain:
    """One chain: its state (a Track), its RNG and its counters."""

    def __init__(self, run: MHRun, b: int, state: Track | None = None):
        self.run, self.b = run, b
        self.x = state if state is not None else Track()
        self.rng = request_rng(run.seed, RNG_TAG, b)
        self.frozen = False
        self.accepted: dict[int, int] = {}  # per block
        self.moves: dict[int, int] = {}
        self.abandoned = 0
        self.blocks = 0  # blocks this chain took part in

    async def extend(self, k: int, t: int) -> None:
        """Grow an unfinished state (length t_{k-1}) to t_k or a stop: a π_k start that the
        moves then correct."""
        x, run = self.x, self.run
        if x.done or self.frozen or len(x.resp) >= t:
            return
        seed = run.extend_seed(self.b, k)
        if run.la is not None:
            await run.la.grow([x], [t], [seed], [self.rng])
            return
        pc = (await run.dec.decode([Job(tuple(x.resp), t - len(x.resp), seed)]))[0]
        x.extend(pc.tokens, pc.logp, pc.log_w)
        x.finish(pc.end == "stop" or len(x.resp) >= run.T)

    async def step(self, k: int, t: int, s: int) -> None:
        """One MH (M = 1) or i-SIR (M > 1) move."""
        run, x, M = self.run, self.x, self.run.p.proposals
        # Drawn every step whatever happens, so a seeded chain's stream never depends on outcomes.
        v, log_u = self.rng.random(), math.log(1.0 - self.rng.random())
        g = [float(x) for x in gumbel(1.0 - self.rng.random(M + 1))]
        if self.frozen:
            return
        L = len(x.resp)
        i = min(int(v * L), L - 1)
        cur = math.fsum(x.log_w[i:])
        seeds = [run.step_seed(self.b, k, s, m) for m in range(M)]
        if run.la is not None:
            props = [x.cut(i) for _ in range(M)]
            await run.la.grow(props, [t] * M, seeds, [self.rng] * M, first=[x.rec[i]] * M)
            sums = [math.fsum(y.log_w[i:]) for y in props]
        else:
            pieces = await self.propose(i, t, cur, log_u, g, seeds)
            props = [self.tempered(i, pc) for pc in pieces]
            sums = [None if pc.end == "abandon" else math.fsum(pc.log_w.tolist()) for pc in pieces]
        nxt = self.decide(cur, L, sums, [len(y.resp) if y is not None else 0 for y in props], log_u, g)
        self.moves[k] = self.moves.get(k, 0) + 1
        if nxt > 0:
            self.x = props[nxt - 1]
            self.accepted[k] = self.accepted.get(k, 0) + 1

    def tempered(self, i: int, pc: Piece) -> Track | None:
        if pc.end == "abandon":
            self.abandoned += 1
            return None
        y = self.x.cut(i)
        y.extend(pc.tokens, pc.logp, pc.log_w)
        y.finish(pc.end == "stop" or len(y.resp) >= self.run.T)
        return y

    @staticmethod
    def decide(cur: float, L: int, sums: list[float | None], lens: list[int], log_u: float, g: list[float]) -> int:
        """0 = keep the current state, m = proposal m (1-based). Abandoned proposals (None) lose."""
        if len(sums) == 1:
            return int(sums[0] is not None and log_u < float(mh_log_accept(cur, L, sums[0], lens[0])))
        scores = [float(isir_scores(cur, L)) + g[0]]
        scores += [-math.inf if sm is None else float(isir_scores(sm, n)) + g[m + 1]
                   for m, (sm, n) in enumerate(zip(sums, lens, strict=True))]
        return max(range(len(scores)), key=scores.__getitem__)

    async def propose(self, i: int, t: int, cur: float, log_u: float, g: list[float],
                      seeds: list[int | None]) -> list[Piece]:
        """M tempered suffixes from x[:i], each stopped as soon as it can no longer win."""
        run, x, M, L = self.run, self.x, len(seeds), len(self.x.resp)
        jobs = [Job(tuple(x.resp[:i]), t - i, sd, retain=tuple(x.resp)) for sd in seeds]
        total = [0.0] * M
        best = [float(isir_scores(cur, L)) + g[0]]  # i-SIR: the best known final score

        def hook(m: int, n: int, draw: TokenDraw, finished: bool) -> str | None:
            if draw.log_w is None:
                return None
            total[m] += draw.log_w
            if finished:
                best[0] = max(best[0], float(isir_scores(total[m], i + n)) + g[m + 1])
                return None
            slack = LOGW_SLACK * (t - i - n)
            if M == 1:
                return "abandon" if float(mh_reject_bound(total[m], cur, L, i, n, slack)) <= log_u else None
            # the best score this proposal can still reach, against the best one already known
            return "abandon" if float(isir_scores(total[m], i + n + 1)) + slack + g[m + 1] <= best[0] else None

        # without early rejection no hook at all: the engine then makes no per-token callback
        return await run.dec.decode(jobs, hook if run.early_rejection else None)

    async def run_blocks(self, blocks: list[int]) -> None:
        p = self.run.p
        for k, t in enumerate(blocks):
            self.blocks = k + 1
            await self.extend(k, t)
            for s in range(p.mcmc_steps):
                await self.step(k, t, s)
            if p.early_stop and self.x.done:
                self.frozen = True
                break


async def run_mh(
    req: DecodeRequest, p: PowerParams, *, n: int, max_tokens: int, seed: int | None, calls: CountingEngine,
    la: Lookahead | None = None,
) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[dict[str, Any]], dict[str, Any]]:
    """Run n chains as concurrent tasks; returns ([(tokens, logp)] per chain, per-chain
    metadata, run metadata)."""
    run = MHRun(req, p, max_tokens, seed, calls, la)
    blocks = block_lengths(max_tokens, p.block_size)
    chains = [MHChain(run, b) for b in range(n)]
    await asyncio.gather(*(c.run_blocks(blocks) for c in chains))
    outputs = [(np.asarray(c.x.resp, np.int64), np.asarray(c.x.logp, np.float32)) for c in chains]
    chain_meta = [{"acceptance_rate": rate(c.accepted.values(), c.moves.values()), "moves": sum(c.moves.values())}
                  for c in chains]
    per_block = [rate([c.accepted.get(k, 0) for c in chains], [c.moves.get(k, 0) for c in chains])
                 for k in range(max(c.blocks for c in chains))]
    meta = {
        "block_size": p.block_size,
        "mcmc_steps": p.mcmc_steps,
        "proposals": p.proposals,
        "early_rejection": run.early_rejection,
        "blocks": len(per_block),
        "acceptance_rate_per_block": per_block,
        "acceptance_rate": rate([sum(c.accepted.values()) for c in chains], [sum(c.moves.values()) for c in chains]),
        "abandoned_proposals": sum(c.abandoned for c in chains),
    }
    return outputs, chain_meta, meta


def rate(acc, att) -> float | None:
    a, m = sum(acc), sum(att)
    return a / m if m else None
