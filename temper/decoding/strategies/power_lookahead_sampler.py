"""method "lookahead": the MCMC-free sampler of Ji et al., "Scalable Power Sampling"
(arXiv 2601.21590; /work/notes/lookahead.md §1). Approximate, not exact: documented as biased.

Each response is built left to right by estimating the power conditional
π(x_t | c) ∝ p(x_t | c)^α · ζ(c, x_t) with rollouts (power_lookahead.Lookahead) and drawing
from the estimate p̂ (with the jackknife correction by default, lookahead_math.power_conditional):
  * block_size 1 (the paper's Algorithm 1): at every context whose top raw probability is
    below `lookahead_threshold` (1 = everywhere, the paper), the candidates are the top-K
    tokens of p in the kept set; the last position (and any ungated one) is drawn from q;
  * block_size B > 1 (Algorithm 2, the paper's experiments): per block, L candidate blocks of
    B tokens are drawn (from q, or from p with lookahead_rollout "p"), the K most likely
    distinct ones by raw log p are kept and scored by p^α(block)·ζ̂(block); the last block
    has no room for rollouts, so it is drawn ∝ p^α(block) among the candidates.

Biases, none of which vanish by running longer (lookahead.md §1.8): tokens outside the top-K
get no mass; rollouts of H tokens estimate the power mass of the next H tokens only; the
block variant keeps candidates by likelihood without correcting their inclusion probability;
ratio estimates are biased O(1/M) (O(1/M²) with the jackknife). What the paper leaves open
and how this implementation decides: candidate blocks are de-duplicated; negative jackknife
entries are clipped and renormalised (p̂ if none stays positive); rollouts stop at stop
tokens and stop strings like responses do, and never run past max_tokens.

What this is not: an exact sampler (use method "mh" or "smc" with proposal "lookahead").
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from temper.decoding.counting_engine import CountingEngine
from temper.decoding.engine import TokenDraw
from temper.decoding.lookahead_math import power_conditional
from temper.decoding.power_math import categorical
from temper.decoding.strategies.base import DecodeRequest, request_rng, spec_seeds
from temper.decoding.strategies.power_decode import Job, SuffixDecoder
from temper.decoding.strategies.power_lookahead import Lookahead, Track
from temper.decoding.strategies.power_params import PowerParams

TOKEN_TAG, BLOCK_TAG, RNG_TAG = 51, 52, 53


class LookaheadSampler:
    def __init__(self, p: PowerParams, dec: SuffixDecoder, la: Lookahead, T: int, seed: int | None):
        self.p, self.dec, self.la, self.T, self.seed = p, dec, la, T, seed

    def pick(self, log_base: np.ndarray, lam: np.ndarray, rng: np.random.Generator) -> int:
        probs = power_conditional(log_base, lam, self.p.jackknife)
        with np.errstate(divide="ignore"):
            return int(categorical(np.log(probs)[None, :], rng.random(1))[0])

    async def tokens(self, b: int) -> Track:
        """Algorithm 1: one response, token by token."""
        dec, la, T, tr = self.dec, self.la, self.T, Track()
        rng, seed = request_rng(self.seed, RNG_TAG, b), spec_seeds(self.seed, 1, TOKEN_TAG, b)[0]
        while not tr.done and len(tr.resp) < T:
            start = len(tr.resp)

            def hook(i: int, m: int, draw: TokenDraw, finished: bool, start=start) -> str | None:
                # the context of this draw has start + m − 1 tokens; the last position is drawn from q
                return "pause" if start + m < T and la.gate(draw) else None

            pc = (await dec.decode([Job(tuple(tr.resp), T - start, seed, top_logprobs=la.cfg.k)], hook))[0]
            n = len(pc.tokens) - (pc.end == "pause")
            tr.extend(pc.tokens[:n], pc.logp[:n], pc.log_w[:n])
            if pc.end != "pause":
                tr.finish(pc.end == "stop" or len(tr.resp) >= T)
                break
            draw = TokenDraw(pc.tokens[-1], float(pc.logp[-1]), pc.top_ids[-1], pc.top_logps[-1], float(pc.log_w[-1]))
            rec = (await la.records([(tuple(tr.resp), draw)]))[0]
            j = self.pick(dec.alpha * rec.cand_logp, rec.lam, rng)
            tr.extend([int(rec.cand[j])], [float(rec.cand_logp[j])], [0.0], rec)
            tr.finish(dec.ends(tr.resp) or len(tr.resp) >= T)
        return tr

    async def blocks(self, b: int) -> Track:
        """Algorithm 2: one response, block by block."""
        dec, la, T, p, tr = self.dec, self.la, self.T, self.p, Track()
        rng = request_rng(self.seed, RNG_TAG, b)
        for k, s in enumerate(range(0, T, p.block_size)):
            if tr.done:
                break
            size = min(p.block_size, T - s)
            seeds = spec_seeds(self.seed, p.lookahead_candidates, BLOCK_TAG, b, k)
            raw = la.cfg.rollout == "p"
            pieces = await dec.decode([Job(tuple(tr.resp), size, sd, raw=raw) for sd in seeds])
            uniq = {tuple(pc.tokens): pc for pc in pieces}  # de-duplicated, first occurrence kept
            cands = sorted(uniq.values(), key=lambda pc: -float(np.sum(pc.logp, dtype=np.float64)))[: la.cfg.k]
            term = np.array([pc.end == "stop" or s + len(pc.tokens) >= T for pc in cands])
            lam = np.zeros((len(cands), la.cfg.m))
            live = [tuple(tr.resp) + tuple(pc.tokens) for pc, t in zip(cands, term, strict=True) if not t]
            if live:
                lam[~term] = await la.rollout_weights(live)
            base = dec.alpha * np.array([np.sum(pc.logp, dtype=np.float64) for pc in cands])
            pc = cands[self.pick(base, lam, rng)]
            tr.extend(pc.tokens, pc.logp, np.zeros(len(pc.tokens)))
            tr.finish(pc.end == "stop" or len(tr.resp) >= T)
        return tr


async def run_lookahead(
    req: DecodeRequest, p: PowerParams, *, n: int, max_tokens: int, seed: int | None, calls: CountingEngine,
    la: Lookahead,
) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[dict[str, Any]], dict[str, Any]]:
    """n independent responses, each its own task; returns ([(tokens, logp)], per-response
    metadata, run metadata)."""
    sampler = LookaheadSampler(p, la.dec, la, max_tokens, seed)
    one = sampler.tokens if p.block_size == 1 else sampler.blocks
    tracks = await asyncio.gather(*(one(b) for b in range(n)))
    outputs = [(np.asarray(t.resp, np.int64), np.asarray(t.logp, np.float32)) for t in tracks]
    meta = {"block_size": p.block_size, "jackknife": p.jackknife, "biased": True}
    if p.block_size > 1:
        meta["lookahead_candidates"] = p.lookahead_candidates
    return outputs, [{} for _ in tracks], meta
