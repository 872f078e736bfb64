"""ToyEngine: an analytic autoregressive model over a tiny vocabulary, behind the Engine protocol.

It exists for exactness tests: `ToyModel.enumerate` gives p(x) and the normalised p(x)^α over
every response up to a length T, so a strategy's empirical distribution can be compared with
the exact target. Sampling goes through the same `tempered_sample` as the real engines, so the
bookkeeping (logp, logq, log_w, seeds) is the production code path. Not a language model:
no tokenizer worth the name (token i prints as a letter), no KV cache (nothing to cache).
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from temper.decoding.engine import (
    EngineStats,
    Sample,
    SampleSpec,
    Scored,
    TokenCallback,
    TokenDraw,
    check_fits,
    score_starts,
)
from temper.decoding.errors import ParamError
from temper.triton_kernels.tempered_sample import kept_mask, tempered_sample


@dataclass
class ToyModel:
    """p(next | context) over `vocab_size` tokens; the last id is EOS.

    Either random (logits drawn from a hash of the whole context, scaled by `sharpness`, with
    `eos_logit` added to EOS) or given by an explicit `table` of next-token probabilities keyed
    by the response so far (contexts missing from the table are uniform).
    """

    vocab_size: int = 4
    seed: int = 0
    sharpness: float = 2.0
    eos_logit: float = 0.0
    table: Mapping[tuple[int, ...], Sequence[float]] | None = None
    prompt_len: int = 1  # the table is keyed by context[prompt_len:]
    _memo: dict[tuple[int, ...], np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def eos_id(self) -> int:
        return self.vocab_size - 1

    def logprobs(self, context: tuple[int, ...]) -> np.ndarray:
        """log p(· | context) as float64 [V] (memoised)."""
        lp = self._memo.get(context)
        if lp is None:
            if self.table is not None:
                probs = self.table.get(context[self.prompt_len :])
                if probs is None:
                    probs = np.full(self.vocab_size, 1.0 / self.vocab_size)
                with np.errstate(divide="ignore"):
                    logits = np.log(np.asarray(probs, dtype=np.float64))
            else:
                digest = hashlib.blake2b(repr((self.seed, context)).encode(), digest_size=8).digest()
                rng = np.random.default_rng(int.from_bytes(digest, "little"))
                logits = self.sharpness * rng.standard_normal(self.vocab_size)
                logits[self.eos_id] += self.eos_logit
            lp = logits - np.logaddexp.reduce(logits)
            self._memo[context] = lp
        return lp

    def enumerate(
        self, prompt: Sequence[int], max_len: int, alpha: float = 1.0
    ) -> dict[tuple[int, ...], tuple[float, float]]:
        """Every response of at most `max_len` tokens (ending in EOS, or cut at max_len) →
        (p(x), p(x)^α / Σ p^α). Exact, by depth-first enumeration."""
        out: dict[tuple[int, ...], float] = {}

        def walk(resp: tuple[int, ...], logp: float) -> None:
            if len(resp) == max_len:
                out[resp] = logp
                return
            lp = self.logprobs(tuple(prompt) + resp)
            for v in range(self.vocab_size):
                if lp[v] == -np.inf:
                    continue
                if v == self.eos_id:
                    out[resp + (v,)] = logp + lp[v]
                else:
                    walk(resp + (v,), logp + lp[v])

        walk((), 0.0)
        keys = list(out)
        logps = np.array([out[k] for k in keys])
        pw = alpha * logps
        pw = np.exp(pw - np.logaddexp.reduce(pw))
        return {k: (float(np.exp(lp)), float(w)) for k, lp, w in zip(keys, logps, pw, strict=True)}


class ToyTokenizer:
    """Token i ↔ the letter chr(ord('a') + i); EOS prints as nothing."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size
        self.eos_ids = (vocab_size - 1,)

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        ids = [ord(c) - ord("a") for c in text if 0 <= ord(c) - ord("a") < self.vocab_size - 1]
        return ids or [0]  # engines need a non-empty prefix; unknown text maps to token 0

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return "".join("" if i in self.eos_ids else chr(ord("a") + int(i)) for i in ids)

    def apply_chat_template(self, messages, *, add_generation_prompt: bool = True) -> list[int]:
        return self.encode("".join(m.get("content", "") for m in messages))


class ToyEngine:
    """Engine protocol over a ToyModel; every call is one batch of vectorised steps."""

    def __init__(self, model: ToyModel | None = None, name: str = "toy", max_context: int = 4096):
        self.model = model or ToyModel()
        self.name = name
        self.tokenizer = ToyTokenizer(self.model.vocab_size)
        self.eos_ids = (self.model.eos_id,)
        self.max_context = max_context
        self.stats = EngineStats()
        self.calls = 0  # sample() calls, for tests that count engine round trips
        self.weight_version = 0

    async def sample(
        self, specs: Sequence[SampleSpec], on_token: TokenCallback | None = None
    ) -> list[Sample]:
        self.calls += 1
        for spec in specs:
            check_fits(self.max_context, spec)
        B = len(specs)
        seqs = [list(s.prefix) for s in specs]
        limit = [min(s.max_new_tokens, self.max_context - len(s.prefix)) for s in specs]
        stops = [set(self.eos_ids if s.stop_ids is None else s.stop_ids) for s in specs]
        alpha = torch.tensor([s.alpha for s in specs], dtype=torch.float32)
        seed = torch.tensor([s.seed if s.seed is not None else secrets.randbits(63) for s in specs])
        top_k = torch.tensor([s.top_k for s in specs], dtype=torch.int64)
        top_p = torch.tensor([s.top_p for s in specs], dtype=torch.float32)
        out = [Sample([], [], [], [], "length") for _ in specs]  # lists until the end
        live = list(range(B))
        while live:
            await asyncio.sleep(0)  # let other tasks (and cancellation) in between steps
            logits = torch.from_numpy(
                np.stack([self.model.logprobs(tuple(seqs[i])) for i in live]).astype(np.float32)
            )
            idx = torch.tensor(live)
            offset = torch.tensor([len(seqs[i]) for i in live])
            r = tempered_sample(logits, alpha[idx], seed[idx], offset, top_k[idx], top_p[idx])
            self.stats.forward_passes += 1
            self.stats.forward_tokens += len(live)
            still = []
            for j, i in enumerate(live):
                tok = int(r.token[j])
                seqs[i].append(tok)
                o = out[i]
                o.tokens.append(tok)
                o.logp.append(float(r.logp[j]))
                o.logq.append(float(r.logq[j]))
                o.log_w.append(float(r.log_w[j]))
                o.forward_passes += 1
                draw = TokenDraw(tok, o.logp[-1], logq=o.logq[-1])
                go_on = on_token(i, draw) if on_token is not None else True
                if tok in stops[i] or not go_on:
                    o.finish_reason = "stop"
                elif len(o.tokens) < limit[i]:
                    still.append(i)
            live = still
        self.stats.generated_tokens += sum(len(o.tokens) for o in out)
        for o, spec in zip(out, specs, strict=True):
            o.logp, o.logq, o.log_w = (np.asarray(x, dtype=np.float32) for x in (o.logp, o.logq, o.log_w))
            o.computed_prefix_tokens = len(spec.prefix)
            if spec.top_logprobs:
                o.top_ids, o.top_logps = self._top(spec, o.tokens, spec.top_logprobs)
        return out

    def _top(self, spec: SampleSpec, tokens: list[int], k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k best alternatives per generated token, raw or under q (spec.logprobs_mode)."""
        ctx = list(spec.prefix)
        ids, lps = [], []
        for t in tokens:
            lp = self.model.logprobs(tuple(ctx))
            if spec.logprobs_mode == "processed" and not spec.greedy:
                lp = self._processed(lp, spec)
            order = np.argsort(-lp, kind="stable")[:k]
            ids.append(order)
            lps.append(lp[order])
            ctx.append(t)
        return np.asarray(ids, dtype=np.int64), np.asarray(lps, dtype=np.float32)

    @staticmethod
    def _processed(lp: np.ndarray, spec: SampleSpec) -> np.ndarray:
        """log q(· | context): α·log p over the spec's kept set (the engines' shared rule)."""
        scaled = torch.from_numpy(spec.alpha * lp).float()[None]
        keep = kept_mask(scaled, torch.tensor([spec.top_k]), torch.tensor([spec.top_p]))
        if keep is not None:
            scaled = torch.where(keep, scaled, torch.full_like(scaled, -torch.inf))
        return torch.log_softmax(scaled.double(), dim=-1)[0].numpy()

    async def score(
        self,
        sequences: Sequence[Sequence[int]],
        start: int | Sequence[int] = 1,
        top_k: int = 0,
        ranks: bool = False,
    ) -> list[Scored]:
        starts = score_starts(sequences, start, self.max_context)
        out = []
        for seq, s0 in zip(sequences, starts, strict=True):
            lps = [self.model.logprobs(tuple(seq[:j])) for j in range(s0, len(seq))]
            logp = np.array([lp[seq[j]] for lp, j in zip(lps, range(s0, len(seq)), strict=True)], dtype=np.float32)
            sc = Scored(logp)
            if top_k:
                order = [np.argsort(-lp, kind="stable")[:top_k] for lp in lps]
                sc.top_ids = np.asarray(order, dtype=np.int64).reshape(len(lps), top_k)
                sc.top_logps = np.asarray(
                    [lp[o] for lp, o in zip(lps, order, strict=True)], dtype=np.float32
                ).reshape(len(lps), top_k)
            if ranks:
                sc.ranks = np.array(
                    [int((lp >= lp[seq[j]]).sum()) for lp, j in zip(lps, range(s0, len(seq)), strict=True)],
                    dtype=np.int64,
                )
            out.append(sc)
        return out

    async def load_weights(self, path: str) -> None:
        raise ParamError("path: the toy engine has no weights to load", "path")

    async def reset_prefix_cache(self) -> bool:
        return True  # nothing is cached

    async def close(self) -> None:
        return None
