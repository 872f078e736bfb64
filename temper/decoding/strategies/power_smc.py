"""Power-SMC: sequential Monte Carlo for p(x)^α (Azizi et al., arXiv 2602.10273; research §8, §9.2),
with tempered or look-ahead proposals (/work/notes/lookahead.md §2.3).

What this is: n independent particle systems of N particles each, decoded together: every
interval between checkpoints advances every live particle of every system (one engine call
for tempered proposals; a few, with rollouts between, for look-ahead ones). A particle's log
weight grows per token by α_t·log p − log r (= log Z_t for the tempered proposal), so the
final weights target p^α. Every `resample_every` tokens each system's ESS is checked and a
system with ESS < ess_threshold·N is resampled systematically (triton_kernels.smc_resample,
tested against power_math). A system returns one particle drawn ∝ its final weight; its
log evidence log Ẑ (the log mean final weight, carried through resampling) estimates
log Σ p^α without bias in Ẑ, for any N.

Semantics that keep the target exact:
  * Stops are absorbing: a particle that drew a stop token or completed a stop string takes no
    more tokens and its weight stops growing, but it stays in the population, is resampled
    like any other and competes in the final draw. Live particles all have the same length.
  * α ramp (tempered only): interval i proposes at α_i rising 1 → α; the intermediate target
    is p(history)^α_i, so when α changes every particle gets (α_new − α_old)·log p(history)
    (power_math.ramp_reweight); the final target is p^α whatever happened.
  * Look-ahead proposals twist the intermediate targets: γ_t = p^α(x_≤t)·ψ_t with ψ_t the ζ̂
    of the particle's last gated token (1 once terminal), so a particle sent into a branch
    that only the look-ahead saw is not killed at the next resampling for being unlikely so
    far. ψ ends at 1, so the final weights are unchanged; only resampling decisions improve.
  * Resampled copies get distinct engine seeds; particles are marked `resident`, so an engine
    that can keeps their KV in place between checkpoints and copies only resampled ancestors.

What this is not: a fully adapted filter or a KV manager.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from temper.decoding.counting_engine import CountingEngine
from temper.decoding.power_math import categorical, ess, logmeanexp, ramp_alpha, ramp_reweight, segment_sums
from temper.decoding.strategies.base import DecodeRequest, request_rng, spec_seeds
from temper.decoding.strategies.power_decode import Job, SuffixDecoder
from temper.decoding.strategies.power_lookahead import Lookahead, Track
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
    """n systems of N particles as flat slots (particle j of system r is slot r·N + j): a Track
    each, log weights, log p(history) for the ramp re-weighting, resample counts."""

    def __init__(self, n: int, N: int):
        self.n, self.N = n, N
        self.tracks = [Track() for _ in range(n * N)]
        self.W = np.zeros(n * N, dtype=np.float64)  # log weight
        self.cum_logp = np.zeros(n * N, dtype=np.float64)
        self.resamples = np.zeros(n, dtype=np.int64)

    def live(self) -> np.ndarray:
        return np.array([j for j, t in enumerate(self.tracks) if not t.done], dtype=np.int64)

    def add(self, live: np.ndarray, start: list[int], old_psi: list[float]) -> None:
        """Weights after the live particles grew from `start` tokens: Σ of the new tokens'
        log_w, plus the twist's change (0 for tempered proposals)."""
        new_w = segment_sums([np.asarray(self.tracks[j].log_w[s:]) for j, s in zip(live, start, strict=True)])
        new_p = segment_sums([np.asarray(self.tracks[j].logp[s:]) for j, s in zip(live, start, strict=True)])
        psi = np.array([self.tracks[j].log_psi for j in live]) - np.asarray(old_psi)
        self.W[live] += new_w + psi
        self.cum_logp[live] += new_p

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
            kept = [self.tracks[j] for j in src]
            for d, tr in zip(dst, kept, strict=True):  # a copy each: tracks grow in place
                self.tracks[d] = tr.cut(len(tr.resp))
                self.tracks[d].done, self.tracks[d].log_psi = tr.done, tr.log_psi
            self.cum_logp[dst] = self.cum_logp[src]
            # Equal weights after resampling, at the system's log mean weight: the level keeps
            # the evidence estimate Ẑ = mean exp(W) unbiased through resampling.
            self.W[dst] = logmeanexp(Wr[r])
            self.resamples[r] += 1
        return sys_ess.tolist()

    def log_evidence(self) -> np.ndarray:
        """log Ẑ per system: the log mean final weight (unbiased Ẑ for Σ p^α over the kept set)."""
        return logmeanexp(self.W.reshape(self.n, self.N), axis=1)


async def advance(ps: Particles, live: np.ndarray, end: int, alpha: float, seeds: list, dec: SuffixDecoder,
                  la: Lookahead | None, rng: np.random.Generator, T: int) -> None:
    """Grow every live particle to `end` tokens or a stop, and weight it."""
    tracks = [ps.tracks[j] for j in live]
    start, old_psi = [len(t.resp) for t in tracks], [t.log_psi for t in tracks]
    if la is not None:
        await la.grow(tracks, [end] * len(tracks), seeds, [rng] * len(tracks), resident=True)
    else:
        jobs = [Job(tuple(t.resp), end - len(t.resp), sd, alpha=alpha, resident=True)
                for t, sd in zip(tracks, seeds, strict=True)]
        for t, pc in zip(tracks, await dec.decode(jobs), strict=True):
            t.extend(pc.tokens, pc.logp, pc.log_w)
            t.finish(pc.end == "stop" or len(t.resp) >= T)
    ps.add(live, start, old_psi)


async def smc_systems(
    req: DecodeRequest, p: PowerParams, *, n: int, max_tokens: int, seed: int | None, calls: CountingEngine,
    la: Lookahead | None = None,
) -> tuple[Particles, list, np.random.Generator]:
    """Run n particle systems to the end; returns the particles (final weights included), the
    ESS of each system at each check, and the run's RNG (for the final draw)."""
    dec = SuffixDecoder(req, p.alpha, calls)
    rng = request_rng(seed, RNG_TAG)
    ps = Particles(n, p.particles)
    ess_trace: list[list[float]] = []
    alpha_prev: float | None = None
    pos = 0
    for i, end in enumerate(checkpoints(max_tokens, p.resample_every, p.ramp_tokens)):
        live = ps.live()
        if live.size == 0:
            break
        a = ramp_alpha(end, p.alpha, p.ramp_tokens)
        if alpha_prev is not None and a != alpha_prev:
            ps.W += ramp_reweight(ps.cum_logp, alpha_prev, a)
        alpha_prev = a
        await advance(ps, live, end, a, spec_seeds(seed, live.size, INTERVAL_TAG, i), dec, la, rng, max_tokens)
        pos = end
        if pos % p.resample_every or pos >= max_tokens or not ps.live().size:
            continue  # not a check (ramp step), or nothing left to decode: the final draw decides
        u = rng.random(n, dtype=np.float32)  # one per system, resampled or not: the stream stays aligned
        ess_trace.append(ps.resample(u, p.ess_threshold))
    if alpha_prev is not None and alpha_prev != p.alpha:  # ended inside the ramp
        ps.W += ramp_reweight(ps.cum_logp, alpha_prev, p.alpha)
    return ps, ess_trace, rng


async def run_smc(
    req: DecodeRequest, p: PowerParams, *, n: int, max_tokens: int, seed: int | None, calls: CountingEngine,
    la: Lookahead | None = None,
) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[dict[str, Any]], dict[str, Any]]:
    """Run n particle systems; returns ([(tokens, logp)] per system, per-system metadata,
    run metadata)."""
    ps, ess_trace, rng = await smc_systems(req, p, n=n, max_tokens=max_tokens, seed=seed, calls=calls, la=la)
    Wr = ps.W.reshape(n, p.particles)
    pick = categorical(Wr, rng.random(n))  # [n] particle drawn ∝ final weight
    final_ess, log_z = ess(Wr), ps.log_evidence()
    outputs = []
    for r in range(n):
        tr = ps.tracks[r * p.particles + int(pick[r])]
        outputs.append((np.asarray(tr.resp, np.int64), np.asarray(tr.logp, np.float32)))
    sys_meta = [
        {"ess_trace": [t[r] for t in ess_trace], "resample_count": int(ps.resamples[r]),
         "final_ess": float(final_ess[r]), "log_evidence": float(log_z[r])}
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
        "log_evidence": float(np.mean(log_z)),  # mean over systems of log Ẑ
    }
    return outputs, sys_meta, meta
