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

from temper.decoding.engine import SampleSpec
from temper.decoding.power_math import (
    categorical,
    ess,
    logmeanexp,
    ramp_alpha,
    ramp_reweight,
    segment_sums,
)
from temper.decoding.strategies.base import DecodeRequest, request_rng
from temper.decoding.strategies.power import EngineCalls, PowerParams, spec_seeds
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


async def run_smc(
    req: DecodeRequest, p: PowerParams, *, n: int, max_tokens: int, seed: int | None, calls: EngineCalls
) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[dict[str, Any]], dict[str, Any]]:
    """Run n particle systems; returns ([(tokens, logp)] per system, per-system metadata,
    run metadata)."""
    prompt = tuple(req.prompt)
    stop_ids = req.stop_ids()
    stop = frozenset(stop_ids)
    s = req.settings
    N = p.particles
    P = n * N  # particle j of system r is slot r·N + j
    spec_kw = dict(top_k=s.top_k_or_off, top_p=s.top_p, stop_ids=stop_ids)
    rng = request_rng(seed, RNG_TAG)

    tokens: list[tuple[int, ...]] = [()] * P  # immutable, so resampled copies may share them
    logps: list[tuple[np.ndarray, ...]] = [()] * P  # raw log p per interval (concatenated at the end)
    W = np.zeros(P, dtype=np.float64)  # log weight
    cum_logp = np.zeros(P, dtype=np.float64)  # log p(history), for the ramp re-weighting
    done = np.zeros(P, dtype=bool)
    ess_trace: list[list[float]] = []  # per check: ESS of each system
    resamples = np.zeros(n, dtype=np.int64)
    alpha_prev: float | None = None
    pos = 0

    for i, end in enumerate(checkpoints(max_tokens, p.resample_every, p.ramp_tokens)):
        live = np.nonzero(~done)[0]
        if live.size == 0:
            break
        a = ramp_alpha(end, p.alpha, p.ramp_tokens)
        if alpha_prev is not None and a != alpha_prev:
            W += ramp_reweight(cum_logp, alpha_prev, a)
        alpha_prev = a
        seeds = spec_seeds(seed, live.size, INTERVAL_TAG, i)
        specs = [
            SampleSpec(prefix=prompt + tokens[j], max_new_tokens=end - pos, alpha=a, seed=sd, **spec_kw)
            for j, sd in zip(live, seeds, strict=True)
        ]
        samples = await calls.sample(specs)
        for j, smp in zip(live, samples, strict=True):
            tokens[j] = tokens[j] + tuple(smp.tokens)
            logps[j] = logps[j] + (smp.logp,)
        W[live] += segment_sums([smp.log_w for smp in samples])
        cum_logp[live] += segment_sums([smp.logp for smp in samples])
        done[live] = [smp.tokens[-1] in stop for smp in samples]
        pos = end
        if pos % p.resample_every or pos >= max_tokens or done.all():
            continue  # not a check (ramp step), or nothing left to decode: the final draw decides
        # Shift each system by its max before float32: the twin / kernel normalise in fp64,
        # and this keeps the relative precision of weights that sum to hundreds of nats.
        Wr = W.reshape(n, N)  # a view: writes to W below show in Wr
        lw32 = (Wr - Wr.max(axis=1, keepdims=True)).astype(np.float32)
        u = rng.random(n, dtype=np.float32)  # one per system, resampled or not: the stream stays aligned
        res = smc_resample(torch.from_numpy(lw32), torch.from_numpy(u))
        sys_ess = res.ess.cpu().numpy().astype(np.float64)
        ancestors = res.ancestors.cpu().numpy()
        ess_trace.append(sys_ess.tolist())
        for r in np.nonzero(sys_ess < p.ess_threshold * N)[0]:
            src = r * N + ancestors[r]  # [N] slots of the ancestors
            dst = r * N + np.arange(N)
            tokens_r = [tokens[j] for j in src]
            logps_r = [logps[j] for j in src]
            for d, t_, l_ in zip(dst, tokens_r, logps_r, strict=True):
                tokens[d], logps[d] = t_, l_
            cum_logp[dst] = cum_logp[src]
            done[dst] = done[src]
            # Equal weights after resampling; their common level keeps the evidence estimate
            # (log mean weight), which only matters for diagnostics.
            W[dst] = logmeanexp(Wr[r])
            resamples[r] += 1

    if alpha_prev is not None and alpha_prev != p.alpha:  # ended inside the ramp
        W += ramp_reweight(cum_logp, alpha_prev, p.alpha)
    Wr = W.reshape(n, N)
    pick = categorical(Wr, rng.random(n))  # [n] particle drawn ∝ final weight
    final_ess = ess(Wr)
    outputs = []
    for r in range(n):
        j = r * N + int(pick[r])
        lp = np.concatenate(logps[j]) if logps[j] else np.zeros(0, np.float32)
        outputs.append((np.asarray(tokens[j], dtype=np.int64), lp.astype(np.float32)))
    sys_meta = [
        {"ess_trace": [t[r] for t in ess_trace], "resample_count": int(resamples[r]),
         "final_ess": float(final_ess[r])}
        for r in range(n)
    ]
    meta = {
        "particles": N,
        "resample_every": p.resample_every,
        "ess_threshold": p.ess_threshold,
        "ramp_tokens": p.ramp_tokens,
        "ess_trace": [float(np.mean(t)) for t in ess_trace],  # mean over systems, per check
        "resample_count": int(resamples.sum()),  # over all systems
        "final_ess": float(final_ess.mean()),
    }
    return outputs, sys_meta, meta
