"""Blockwise Metropolis-Hastings for power sampling, exact version (research/power_sampling.md §9.1).

What this is: n independent chains targeting π ∝ p^α over responses of at most `max_tokens`
tokens, run batched: every extension and every MH step of all n chains and their M proposals is
ONE engine.sample call, so chains share forward passes and the engine's prefix cache serves
each proposal's prefix (nothing here recomputes or even sees KV).

The fixes over the Karan & Du reference (§3.4–3.6), and why they make the chain exact:
  * Fixed logical length. Block k's intermediate target π_k lives on states of length t_k = k·B
    (capped at max_tokens). A response that emitted EOS is padded to t_k with an absorbing PAD
    whose p = q = 1, i.e. log_w = 0; so a short proposal is compared with the *whole* current
    suffix, and short and long states are points of one fixed-length space (the reference
    compares against a truncated current suffix and lets the length shrink: biased).
  * Cut uniform over all t_k positions, earlier blocks included. Both states of a move have the
    same length, so the cut probabilities 1/t_k cancel. A cut in the padding of the current
    state is an identity move (valid: the cut-i move is then a π-invariant kernel on the states
    sharing x[:i], and the identity on the rest).
  * Suffix resampled from q ∝ p^α up to t_k or EOS; log r = Σ log_w(proposed suffix) −
    Σ log_w(current suffix), padding counting 0.
  * M > 1 proposals at one cut: the next state is drawn among current + M ∝ exp(Σ log_w)
    (i-SIR); M = 1 is plain MH. The decision is `triton_kernels.mh_accept` (the rule of
    `power_math.choose_next`; its twin is tested against it).
  * A finished chain keeps making its MH steps in later blocks unless `early_stop`: stopping it
    would freeze a π_k sample while the other chains move on to π_K, which is not π_K.

What this is not: the parameters (power_params.py), the completions (power.py) or the math
(power_math).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from temper.decoding.counting_engine import CountingEngine
from temper.decoding.engine import Sample, SampleSpec
from temper.decoding.power_math import block_lengths
from temper.decoding.strategies.base import DecodeRequest, request_rng, spec_seeds
from temper.decoding.strategies.power_params import PowerParams
from temper.triton_kernels.mh_accept import mh_accept

# Seed-path tags: engine seeds are derive_seed(seed, tag, block, step); the strategy's own
# cuts and uniforms come from request_rng(seed, RNG_TAG). Distinct tags = independent streams.
EXTEND_TAG, STEP_TAG, RNG_TAG = 11, 12, 13


class Chains:
    """n chains as fixed-width arrays over response positions [0, T): tokens, raw logp and log_w
    per position, true length (positions ≥ length are padding: log_w there is 0), done = the
    state holds a stop token (its last real token)."""

    def __init__(self, n: int, T: int):
        self.tok = np.zeros((n, T), dtype=np.int64)
        self.logp = np.zeros((n, T), dtype=np.float32)
        self.log_w = np.zeros((n, T), dtype=np.float32)
        self.length = np.zeros(n, dtype=np.int64)
        self.done = np.zeros(n, dtype=bool)

    def prefix(self, prompt: tuple[int, ...], b: int, cut: int) -> tuple[int, ...]:
        return prompt + tuple(self.tok[b, :cut].tolist())

    def write(self, rows: np.ndarray, starts: np.ndarray, samples: list[Sample], stop: frozenset[int]) -> None:
        """Chain rows[i] := its first starts[i] tokens + samples[i]; everything after is padding.
        rows are distinct. Vectorised over rows: exactness tests move 10⁴ chains a step."""
        if len(rows) == 0:
            return
        starts = np.asarray(starts, dtype=np.int64)
        seg, pos = scatter_index(starts, [len(smp.tokens) for smp in samples])
        keep = np.arange(self.tok.shape[1])[None, :] < starts[:, None]  # [R, T] the kept prefix
        for arr in (self.tok, self.logp, self.log_w):  # absorbing padding: log Z = 0 after
            arr[rows] = np.where(keep, arr[rows], 0)
        r = np.asarray(rows)[seg]
        self.tok[r, pos] = np.concatenate([np.asarray(smp.tokens, dtype=np.int64) for smp in samples])
        self.logp[r, pos] = np.concatenate([smp.logp for smp in samples])
        self.log_w[r, pos] = np.concatenate([smp.log_w for smp in samples])
        self.length[rows] = starts + np.array([len(smp.tokens) for smp in samples], dtype=np.int64)
        self.done[rows] = [bool(smp.tokens) and smp.tokens[-1] in stop for smp in samples]


def scatter_index(starts, lens) -> tuple[np.ndarray, np.ndarray]:
    """For segments i of lens[i] values placed at positions starts[i]...: the segment id and
    the position of every value of the concatenation, both [Σ lens] int64."""
    lens = np.asarray(lens, dtype=np.int64)
    seg = np.repeat(np.arange(len(lens)), lens)
    first = np.cumsum(lens) - lens  # offset of each segment in the concatenation
    pos = np.asarray(starts, dtype=np.int64)[seg] + np.arange(int(lens.sum())) - first[seg]
    return seg, pos


class MHRun:
    """One request's n chains and what moving them needs (engine, seeds, RNG, counters)."""

    def __init__(self, req: DecodeRequest, p: PowerParams, n: int, max_tokens: int, seed: int | None,
                 calls: CountingEngine):
        self.prompt = tuple(req.prompt)
        stop_ids = req.stop_ids()
        self.stop = frozenset(stop_ids)
        s = req.settings
        self.spec_kw = dict(alpha=p.alpha, top_k=s.top_k_or_off, top_p=s.top_p, stop_ids=stop_ids)
        self.p, self.n, self.seed, self.calls = p, n, seed, calls
        self.ch = Chains(n, max_tokens)
        self.frozen = np.zeros(n, dtype=bool)  # early_stop: chains that ended at a block boundary
        self.rng = request_rng(seed, RNG_TAG)
        self.accepted = np.zeros(n, dtype=np.int64)  # accepted moves per chain (proposal chosen)
        self.attempted = np.zeros(n, dtype=np.int64)  # real (non-identity) moves per chain

    async def extend(self, k: int, t: int) -> None:
        """A live chain has length exactly t_{k-1}; grow it to t_k (or EOS) from q. This only
        proposes a π_k start; the MH steps correct it towards π_k."""
        ch = self.ch
        grow = np.nonzero(~ch.done & ~self.frozen & (ch.length < t))[0]
        seeds = spec_seeds(self.seed, len(grow), EXTEND_TAG, k)
        specs = [
            SampleSpec(prefix=ch.prefix(self.prompt, b, int(ch.length[b])), max_new_tokens=int(t - ch.length[b]),
                       seed=sd, **self.spec_kw)
            for b, sd in zip(grow, seeds, strict=True)
        ]
        ch.write(grow, ch.length[grow], await self.calls.sample(specs), self.stop)

    async def step(self, k: int, t: int, step: int) -> None:
        """One MH (M = 1) or i-SIR (M > 1) move of every chain at a cut uniform over [0, t)."""
        ch, M = self.ch, self.p.proposals
        # Drawn for all n chains every step, so a seeded run's draws do not depend on which
        # chains happen to be active.
        cut = self.rng.integers(0, t, size=self.n)
        u = 1.0 - self.rng.random(self.n)  # (0, 1]: log u is finite
        act = np.nonzero((cut < ch.length) & ~self.frozen)[0]  # cut in padding: identity move
        if act.size == 0:
            return
        A = act.size
        seeds = spec_seeds(self.seed, A * M, STEP_TAG, k, step)
        specs = [
            SampleSpec(prefix=ch.prefix(self.prompt, b, int(cut[b])), max_new_tokens=int(t - cut[b]),
                       seed=seeds[a * M + m], **self.spec_kw)
            for a, b in enumerate(act)
            for m in range(M)
        ]
        samples = await self.calls.sample(specs)  # sample j = chain act[j // M], proposal j % M
        # Proposals laid out at absolute positions like the current state: [A, M, t], the
        # cut's prefix positions left 0 (the suffix sums start at the cut).
        lens = np.array([len(smp.tokens) for smp in samples], dtype=np.int64)  # [A·M]
        starts = np.repeat(cut[act], M)  # [A·M]
        seg, pos = scatter_index(starts, lens)
        prop_w = np.zeros((A * M, t), dtype=np.float32)
        prop_w[seg, pos] = np.concatenate([smp.log_w for smp in samples])
        # The dispatcher runs the Triton kernel for CUDA tensors; these are host arrays, so
        # the torch twin decides here (same rule as power_math.choose_next, tested equal).
        res = mh_accept(
            torch.from_numpy(np.ascontiguousarray(ch.log_w[act, :t])),
            torch.from_numpy(ch.length[act]),
            torch.from_numpy(cut[act]),
            torch.from_numpy(prop_w.reshape(A, M, t)),
            torch.from_numpy((starts + lens).reshape(A, M)),
            torch.from_numpy(u[act].astype(np.float32)),
        )
        choice = res.choice.cpu().numpy()  # [A] in 0..M, 0 = keep current
        moved = np.nonzero(choice)[0]
        ch.write(act[moved], cut[act[moved]], [samples[a * M + choice[a] - 1] for a in moved], self.stop)
        self.accepted[act] += choice > 0
        self.attempted[act] += 1

    def rate(self, b: int | None = None) -> float | None:
        att = int(self.attempted.sum() if b is None else self.attempted[b])
        acc = int(self.accepted.sum() if b is None else self.accepted[b])
        return acc / att if att else None


async def run_mh(
    req: DecodeRequest, p: PowerParams, *, n: int, max_tokens: int, seed: int | None, calls: CountingEngine
) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[dict[str, Any]], dict[str, Any]]:
    """Run n chains; returns ([(tokens, logp)] per chain, per-chain metadata, run metadata)."""
    run = MHRun(req, p, n, max_tokens, seed, calls)
    per_block: list[float | None] = []
    for k, t in enumerate(block_lengths(max_tokens, p.block_size)):
        await run.extend(k, t)
        acc0, att0 = int(run.accepted.sum()), int(run.attempted.sum())
        for step in range(p.mcmc_steps):
            await run.step(k, t, step)
        att = int(run.attempted.sum()) - att0
        per_block.append((int(run.accepted.sum()) - acc0) / att if att else None)
        if p.early_stop:
            run.frozen |= run.ch.done
            if run.frozen.all():
                break
    ch = run.ch
    outputs = [(ch.tok[b, : ch.length[b]].copy(), ch.logp[b, : ch.length[b]].copy()) for b in range(n)]
    chain_meta = [{"acceptance_rate": run.rate(b), "moves": int(run.attempted[b])} for b in range(n)]
    meta = {
        "block_size": p.block_size,
        "mcmc_steps": p.mcmc_steps,
        "proposals": p.proposals,
        "blocks": len(per_block),
        "acceptance_rate_per_block": per_block,
        "acceptance_rate": run.rate(),
    }
    return outputs, chain_meta, meta
