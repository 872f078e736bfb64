"""The look-ahead proposal r of power sampling, and the rollouts that estimate the future factor
ζ (Ji et al., arXiv 2601.21590; /work/notes/lookahead.md §2).

At a gated context c (the raw model's top token has p < `threshold`): the candidates G are the
top-K tokens of p inside the request's kept set; each non-terminal candidate v gets M rollouts
of at most H tokens from c·v (from q, weight exp Σ log_w, or from p, weight p^(α−1)), giving
log ζ̂(v); then

    r(v | c) = (1−ε)·t(v) + ε·q(v),    t(v) ∝ q(v)·ζ̂(v) on G,

so every kept token keeps mass ε·q(v) and the weight α·log p − log r stays bounded. The draw
of q that the engine made at c (it pauses there) serves the ε branch. Every token's
log_w = α·log p(y) − log r(y) under the r that drew it is kept with it, so MH ratios and SMC
weights use the proposal's actual probabilities and the target stays exactly p^α.

Rollout seeds come from (request seed, hash of c·v): r(·|c) is a fixed function of the context
within a request (the MH kernel is an ordinary one, and particles sharing a context share the
estimate); the stored per-token values keep the samplers exact even where recomputation would
not be bit-identical (auxiliary-variable view, lookahead.md §2.2).

What this is not: the MH / SMC decisions (power_mh, power_smc) or the paper's own sampler
(power_lookahead_sampler), which uses the same rollouts and candidates.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from temper.decoding.engine import TokenDraw
from temper.decoding.lookahead_math import (
    kept_count,
    log_zeta_hat,
    mixture_log_prob,
    rollout_log_weight,
    tilt_log_probs,
)
from temper.decoding.power_math import categorical, segment_sums
from temper.decoding.strategies.base import SEED_MASK
from temper.decoding.strategies.power_decode import Job, SuffixDecoder, seed_stream

ROLLOUT_TAG = 41


@dataclass(frozen=True, slots=True)
class LookaheadConfig:
    k: int  # candidates
    m: int  # rollouts per candidate
    h: int  # rollout horizon
    threshold: float  # look ahead where the raw model's top probability is below this
    eps: float  # weight of q in the mixture (proposals); 0 for the paper's sampler
    rollout: str  # "q" or "p"
    max_tokens: int  # T: rollouts never run past it


@dataclass(slots=True)
class Record:
    """r(· | c) at one gated context: candidate ids, their raw log p, log ζ̂, log Z_c (over the
    kept set), and the rollout weights [G, M] (for the paper's estimators). Terminal
    candidates have log ζ̂ = 0 and λ = 0."""

    cand: np.ndarray  # [G] int64
    cand_logp: np.ndarray  # [G] float64
    log_zeta: np.ndarray  # [G] float64
    log_z: float
    lam: np.ndarray  # [G, M]
    terminal: np.ndarray  # [G] bool
    alpha: float
    log_t: np.ndarray = field(init=False)  # [G] the tilt t ∝ q·ζ̂

    def __post_init__(self) -> None:
        # log q = α·log p − log Z_c: the constant cancels in the normalisation
        self.log_t = tilt_log_probs(self.alpha * self.cand_logp, self.log_zeta)

    def log_q(self, alpha: float, logp: float) -> float:
        return alpha * logp - self.log_z

    def log_r(self, token: int, logp: float, alpha: float, eps: float) -> float:
        hit = np.nonzero(self.cand == token)[0]
        log_t = float(self.log_t[hit[0]]) if hit.size else -np.inf
        return mixture_log_prob(log_t, self.log_q(alpha, logp), eps)

    def log_psi(self, token: int, terminal: bool) -> float:
        """The twist ψ after drawing `token` here (SMC): ζ̂(token) for a candidate, the smallest
        candidate ζ̂ for a tail token (any positive value is valid), 1 once terminal."""
        if terminal:
            return 0.0
        hit = np.nonzero(self.cand == token)[0]
        return float(self.log_zeta[hit[0]]) if hit.size else float(self.log_zeta.min())


def context_key(resp: Sequence[int]) -> int:
    """A stable 63-bit key of a context (token ids)."""
    digest = hashlib.blake2b(np.asarray(resp, dtype=np.int64).tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & SEED_MASK


class Lookahead:
    """One request's look-ahead: computes records (rollouts batched over every context asked
    for at once, each distinct context once) and draws tokens from r."""

    def __init__(self, dec: SuffixDecoder, cfg: LookaheadConfig, seed: int):
        self.dec, self.cfg = dec, cfg
        self.context_seed = seed_stream(seed, ROLLOUT_TAG)  # rollout seeds: (request seed, context)
        self.rollout_tokens = 0
        self.contexts = 0  # gated contexts looked ahead from

    def candidates(self, draw: TokenDraw) -> tuple[np.ndarray, np.ndarray]:
        """The candidates at the context a draw was made in: its top-K raw tokens inside the
        kept set (ids, log p)."""
        n = kept_count(draw.top_logps, draw.log_w, self.dec.alpha)
        return np.asarray(draw.top_ids[:n], np.int64), np.asarray(draw.top_logps[:n], np.float64)

    async def rollout_weights(self, contexts: Sequence[tuple[int, ...]]) -> np.ndarray:
        """λ [len(contexts), M]: M rollouts of at most min(H, T − |context|) tokens from each
        context, seeded by (request seed, context), all in one engine call."""
        cfg = self.cfg
        jobs = []
        for ctx in contexts:
            key, h = context_key(ctx), min(cfg.h, cfg.max_tokens - len(ctx))
            jobs += [Job(ctx, h, self.context_seed(key, j), raw=cfg.rollout == "p", cache=False) for j in range(cfg.m)]
        pieces = await self.dec.decode(jobs)
        self.rollout_tokens += sum(len(pc.tokens) for pc in pieces)
        lam = rollout_log_weight(cfg.rollout, self.dec.alpha, segment_sums([pc.logp for pc in pieces]),
                                 segment_sums([pc.log_w for pc in pieces]))
        return lam.reshape(len(contexts), cfg.m)

    async def records(self, asks: Sequence[tuple[tuple[int, ...], TokenDraw]]) -> list[Record]:
        """A record per (context, the draw made there); every rollout in one engine call, each
        distinct context once. A candidate is terminal (ζ = 1, no rollouts) when it is a stop,
        completes a stop string, or leaves no room before T."""
        draws: dict[tuple[int, ...], TokenDraw] = {}
        for resp, draw in asks:
            draws.setdefault(resp, draw)
        plans, todo = [], []
        for resp, draw in draws.items():
            cand, logp = self.candidates(draw)
            term = np.array([len(resp) + 1 >= self.cfg.max_tokens or self.dec.ends(resp + (int(v),))
                             for v in cand], dtype=bool)
            plans.append((cand, logp, term, len(todo)))
            todo += [resp + (int(v),) for v in cand[~term]]
        lam_all = await self.rollout_weights(todo) if todo else np.zeros((0, self.cfg.m))
        self.contexts += len(draws)
        made = {}
        for (resp, draw), (cand, logp, term, off) in zip(draws.items(), plans, strict=True):
            lam = np.zeros((len(cand), self.cfg.m))
            lam[~term] = lam_all[off : off + int((~term).sum())]
            made[resp] = Record(cand, logp, log_zeta_hat(lam), float(draw.log_w), lam, term, self.dec.alpha)
        return [made[resp] for resp, _ in asks]

    def gate(self, draw: TokenDraw) -> bool:
        """Look ahead at the context this draw was made in?"""
        return bool(np.exp(float(draw.top_logps[0])) < self.cfg.threshold)

    def choose(self, rec: Record, draw: TokenDraw, rng: np.random.Generator) -> tuple[int, float, float]:
        """Draw from r at a gated context: the engine's q-draw with probability ε, else a
        candidate ∝ t. Returns (token, raw log p, log_w = α·log p − log r)."""
        a, eps = self.dec.alpha, self.cfg.eps
        if rng.random() < eps:
            tok, lp = int(draw.token), float(draw.logp)
        else:
            j = int(categorical(rec.log_t[None, :], rng.random(1))[0])
            tok, lp = int(rec.cand[j]), float(rec.cand_logp[j])
        return tok, lp, a * lp - rec.log_r(tok, lp, a, eps)

    async def grow(self, tracks: Sequence[Track], ends: Sequence[int], seeds: Sequence[int | None],
                   rngs: Sequence[np.random.Generator], first: Sequence[Record | None] | None = None,
                   resident: bool = False) -> None:
        """Grow every track to ends[j] tokens (or until terminal) with r: the engine decodes
        from q and pauses at gated contexts, where the token is drawn from r. `first[j]`: the
        stored r at track j's first position (an MH cut: reused, not recomputed; None = that
        position was not gated). Tracks are updated in place."""
        T, todo, started = self.cfg.max_tokens, self._todo(tracks, ends, range(len(tracks))), set()
        while todo:
            jobs = [Job(tuple(tracks[j].resp), ends[j] - len(tracks[j].resp), seeds[j], top_logprobs=self.cfg.k,
                        resident=resident) for j in todo]

            def hook(i: int, m: int, draw: TokenDraw, finished: bool, todo=todo) -> str | None:
                j = todo[i]
                stored = first is not None and m == 1 and j not in started
                return "pause" if (first[j] is not None if stored else self.gate(draw)) else None

            pieces = await self.dec.decode(jobs, hook)
            asks, reuse = [], []
            for j, pc in zip(todo, pieces, strict=True):
                tr = tracks[j]
                n = len(pc.tokens) - (pc.end == "pause")
                tr.extend(pc.tokens[:n], pc.logp[:n], pc.log_w[:n])
                if pc.end == "pause":
                    draw = TokenDraw(pc.tokens[-1], float(pc.logp[-1]), pc.top_ids[-1], pc.top_logps[-1],
                                     float(pc.log_w[-1]))
                    use_first = first is not None and j not in started and first[j] is not None and n == 0
                    (reuse if use_first else asks).append((j, draw))
                else:
                    tr.finish(pc.end == "stop" or len(tr.resp) >= T)
                started.add(j)
            recs = await self.records([(tuple(tracks[j].resp), d) for j, d in asks])
            for (j, draw), rec in zip(asks + reuse, recs + [first[j] for j, _ in reuse], strict=True):
                tok, lp, lw = self.choose(rec, draw, rngs[j])
                tr = tracks[j]
                tr.extend([tok], [lp], [lw], rec)
                end = self.dec.ends(tr.resp) or len(tr.resp) >= T
                tr.log_psi = rec.log_psi(tok, end)
                tr.finish(end)
            todo = self._todo(tracks, ends, todo)

    @staticmethod
    def _todo(tracks, ends, among) -> list[int]:
        return [j for j in among if not tracks[j].done and len(tracks[j].resp) < ends[j]]


@dataclass(slots=True)
class Track:
    """A response being grown: tokens, raw log p, log_w under the proposal that drew each token,
    the r record of gated positions (None elsewhere), whether it is terminal, and the log twist
    ψ of its last gated position (SMC; 0 once terminal)."""

    resp: list[int] = field(default_factory=list)
    logp: list[float] = field(default_factory=list)
    log_w: list[float] = field(default_factory=list)
    rec: list[Record | None] = field(default_factory=list)
    done: bool = False
    log_psi: float = 0.0

    def extend(self, tokens, logp, log_w, rec: Record | None = None) -> None:
        self.resp += [int(t) for t in tokens]
        self.logp += [float(x) for x in logp]
        self.log_w += [float(x) for x in log_w]
        self.rec += [rec] * len(tokens)

    def finish(self, terminal: bool) -> None:
        if terminal:
            self.done, self.log_psi = True, 0.0

    def cut(self, i: int) -> Track:
        """A new track holding the first i positions of this one."""
        return Track(self.resp[:i], self.logp[:i], self.log_w[:i], self.rec[:i])
