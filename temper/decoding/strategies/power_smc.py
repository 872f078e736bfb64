"""Power-SMC: sequential Monte Carlo for p(x)^α (Azizi et al., arXiv 2602.10273; research §8, §9.2).

What this is: n independent particle systems of N particles each, all decoded together: one
engine.sample call per interval between checkpoints advances every live particle of every
system. Per token a particle's log weight grows by log_w = α_t·log p − log q (= log Z_t for the
tempered proposal at temperature 1/α_t, §2.3), so Σ log_w = log p(x)^α − log q(x) and the
weighted particles target p^α. Every `resample_every` tokens the ESS of each system is checked
and a system whose ESS < ess_threshold·N is resampled systematically (triton_kernels
.smc_resample, whose twin is tested against power_math). The output of a system is one particle
drawn ∝ its final weight.

Semantics that keep the target exact:
  * EOS is absorbing: a finished particle takes no more tokens and its weight stops growing
    (p = q = 1 after EOS), but it stays in the population, is resampled like any other, and
    competes in the final draw. Live particles all have the same length (they are sampled to
    the next checkpoint or EOS), so intervals stay in lockstep.
  * α ramp (ramp_tokens > 0): interval i proposes at exponent α_i rising 1 → α; the
    intermediate target is p(history)^α_i, so when α changes every particle — finished ones
    too — gets (α_new − α_old)·log p(history) added (power_math.ramp_reweight); a run that ends
    inside the ramp gets the last step to α, so the final target is p^α whatever happened.
    One engine call samples one exponent, so the ramp is a staircase of RAMP_STAGES steps.
  * Resampled copies get distinct engine seeds (the engine's RNG is counter-based on seed and
    position: equal seeds from an equal prefix would decode identical futures).

What this is not: a fully adapted filter (resampling before drawing x_t, possible because log_w_t
depends on the prefix only) or a KV manager; prefix reuse after resampling is the engine's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from temper.decoding.counting_engine import CountingEngine
from temper.decoding.engine import SampleSpec
from temper.decoding.power_math import (
    categorical,
    ess,
    logmeanexp,
    ramp_alpha,
    ramp_reweight,
    segment_sums,
)
from temper.decoding.strategies.base import DecodeRequest, request_rng, spec_seeds
from temper.decoding.strategies.power_params import PowerParams
from temper.triton_kernels.smc_resample import smc_resample

INTERVAL_TAG, RNG_TAG = 21, 22
RAMP_STAGES = 8  # a ramp is this many constant-α steps (each step is one engine call)


def checkpoints(max_tokens: int, resample_every: int, ramp_tokens: int) -> list[int]:
    """Interval ends, increasing, last = max_tokens: every ESS check (multiples of
    resample_every) and every step of the α staircase."""
    ends = set(range(resample_every, max_tokens, resample_every)) | {max_tokens}
    if ramp_tokens > 0:
        step = max(1, -(-ramp_tokens // RAMP_STAGES))
        ends |= {e for e in range(step, ramp_tokens, step) if e < max_tokens}
        if ramp_tokens < max_tokens:
            ends.add(ramp_tokens)
    return sorted(ends)


class Particles:
    """n systems of N particles as flat slots (particle j of system r is slot r·N + j): token
    tuples and per-interval raw log p arrays (immutable, so resampled copies share them), log
    weights, log p(history) for the ramp re-weighting, and the absorbing-EOS flags."""

    def __init__(self, n: int, N: int):
        P = n * N
        self.n, self.N = n, N
        self.tokens: list[tuple[int, ...]] = [()] * P
        self.logps: list[tuple[np.ndarray, ...]] = [()] * P  # concatenated at the end
        self.W = np.zeros(P, dtype=np.float64)  # log weight
        self.cum_logp = np.zeros(P, dtype=np.float64)
        self.done = np.zeros(P, dtype=bool)
        self.resamples = np.zeros(n, dtype=np.int64)

    def advance(self, live: np.ndarray, samples: list, stop: frozenset[int]) -> None:
        for j, smp in zip(live, samples, strict=True):
            self.tokens[j] = self.tokens[j] + tuple(smp.tokens)
            self.logps[j] = self.logps[j] + (smp.logp,)
        self.W[live] += segment_sums([smp.log_w for smp in samples])
        self.cum_logp[live] += segment_sums([smp.logp for smp in samples])
        self.done[live] = [smp.tokens[-1] in stop for smp in samples]

    def resample(self, u: np.ndarray, threshold: float) -> list[float]:
        """Systematic resampling of every system whose ESS < threshold·N; returns each
        system's ESS. u [n]: one uniform per system, resampled or not."""
        N = self.N
        Wr = self.W.reshape(self.n, N)  # a view: writes to W below show in Wr
        # Shift each system by its max before float32: the twin / kernel normalise in fp64,
        # and this keeps the relative precision of weights that sum to hundreds of nats.
        lw32 = (Wr - Wr.max(axis=1, keepdims=True)).astype(np.float32)
        res = smc_resample(torch.from_numpy(lw32), torch.from_numpy(u))
        sys_ess = res.ess.cpu().numpy().astype(np.float64)
        ancestors = res.ancestors.cpu().numpy()
        for r in np.nonzero(sys_ess < threshold * N)[0]:
            src = r * N + ancestors[r]  # [N] slots of the ancestors
            dst = r * N + np.arange(N)
            tokens_r = [self.tokens[j] for j in src]
            logps_r = [self.logps[j] for j in src]
            for d, t_, l_ in zip(dst, tokens_r, logps_r, strict=True):
                self.tokens[d], self.logps[d] = t_, l_
            self.cum_logp[dst] = self.cum_logp[src]
            self.done[dst] = self.done[src]
            # Equal weights after resampling; their common level keeps the evidence estimate
            # (log mean weight), which only matters for diagnostics.
            self.W[dst] = logmeanexp(Wr[r])
            self.resamples[r] += 1
        return sys_ess.tolist()

    def output(self, r: int, j: int) -> tuple[np.ndarray, np.ndarray]:
        slot = r * self.N + j
        lp = np.concatenate(self.logps[slot]) if self.logps[slot] else np.zeros(0, np.float32)
        return np.asarray(self.tokens[slot], dtype=np.int64), lp.astype(np.float32)


async def run_smc(
    req: DecodeRequest, p: PowerParams, *, n: int, max_tokens: int, seed: int | None, calls: CountingEngine
) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[dict[str, Any]], dict[str, Any]]:
    """Run n particle systems; returns ([(tokens, logp)] per system, per-system metadata,
    run metadata)."""
    prompt = tuple(req.prompt)
    stop_ids = req.stop_ids()
    stop = frozenset(stop_ids)
    s = req.settings
    spec_kw = dict(top_k=s.top_k_or_off, top_p=s.top_p, stop_ids=stop_ids)
    rng = request_rng(seed, RNG_TAG)
    ps = Particles(n, p.particles)
    ess_trace: list[list[float]] = []  # per check: ESS of each system
    alpha_prev: float | None = None
    pos = 0
    for i, end in enumerate(checkpoints(max_tokens, p.resample_every, p.ramp_tokens)):
        live = np.nonzero(~ps.done)[0]
        if live.size == 0:
            break
        a = ramp_alpha(end, p.alpha, p.ramp_tokens)
        if alpha_prev is not None and a != alpha_prev:
            ps.W += ramp_reweight(ps.cum_logp, alpha_prev, a)
        alpha_prev = a
        seeds = spec_seeds(seed, live.size, INTERVAL_TAG, i)
        specs = [
            SampleSpec(prefix=prompt + ps.tokens[j], max_new_tokens=end - pos, alpha=a, seed=sd, **spec_kw)
            for j, sd in zip(live, seeds, strict=True)
        ]
        ps.advance(live, await calls.sample(specs), stop)
        pos = end
        if pos % p.resample_every or pos >= max_tokens or ps.done.all():
            continue  # not a check (ramp step), or nothing left to decode: the final draw decides
        u = rng.random(n, dtype=np.float32)  # one per system, resampled or not: the stream stays aligned
        ess_trace.append(ps.resample(u, p.ess_threshold))
    if alpha_prev is not None and alpha_prev != p.alpha:  # ended inside the ramp
        ps.W += ramp_reweight(ps.cum_logp, alpha_prev, p.alpha)
    Wr = ps.W.reshape(n, p.particles)
    pick = categorical(Wr, rng.random(n))  # [n] particle drawn ∝ final weight
    final_ess = ess(Wr)
    outputs = [ps.output(r, int(pick[r])) for r in range(n)]
    sys_meta = [
        {"ess_trace": [t[r] for t in ess_trace], "resample_count": int(ps.resamples[r]),
         "final_ess": float(final_ess[r])}
        for r in range(n)
    ]
    meta = {
        "particles": p.particles,
        "resample_every": p.resample_every,
        "ess_threshold": p.ess_threshold,
        "ramp_tokens": p.ramp_tokens,
        "ess_trace": [float(np.mean(t)) for t in ess_trace],  # mean over systems, per check
        "resample_count": int(ps.resamples.sum()),  # over all systems
        "final_ess": float(final_ess.mean()),
    }
    return outputs, sys_meta, meta
