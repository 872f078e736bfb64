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


@dataclass(eq=False)
class _Call:
    """One `sample` call in flight: its specs' state, its callback, its future."""

    specs: Sequence[SampleSpec]
    on_token: TokenCallback | None
    future: asyncio.Future
    seqs: list[list[int]]  # prefix + tokens so far, per spec
    out: list[Sample]
    live: set[int]
    cancelled: bool = False


class ToyEngine:
    """Engine protocol over a ToyModel, with continuous batching like a real engine: every
    step draws one token for every live sequence of every call in flight (one vectorised
    `tempered_sample`), so concurrent callers (power chains running as their own tasks) share
    steps. The KV hints (cache, retain, resident) are no-ops: there is no KV."""

    def __init__(self, model: ToyModel | None = None, name: str = "toy", max_context: int = 4096):
        self.model = model or ToyModel()
        self.name = name
        self.tokenizer = ToyTokenizer(self.model.vocab_size)
        self.eos_ids = (self.model.eos_id,)
        self.max_context = max_context
        self.stats = EngineStats()
        self.calls = 0  # sample() calls, for tests that count engine round trips
        self.weight_version = 0
        self.steps = 0  # batched decode steps
        self._calls: list[_Call] = []
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None

    async def sample(
        self, specs: Sequence[SampleSpec], on_token: TokenCallback | None = None
    ) -> list[Sample]:
        self.calls += 1
        for spec in specs:
            check_fits(self.max_context, spec)
        if not specs:
            return []
        self._ensure_worker()
        call = _Call(
            specs, on_token, asyncio.get_running_loop().create_future(),
            [list(s.prefix) for s in specs], [Sample([], [], [], [], "length", [], []) for _ in specs],
            set(range(len(specs))),
        )
        self._calls.append(call)
        self._wake.set()
        try:
            return await call.future
        except asyncio.CancelledError:
            call.cancelled = True
            raise

    def _ensure_worker(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is not None and self._loop is loop and not self._task.done():
            return
        self._calls = []  # a new event loop: calls of the old one are dead
        self._loop, self._wake = loop, asyncio.Event()
        self._task = loop.create_task(self._run(), name=f"toy-engine-{self.name}")

    async def _run(self) -> None:
        while True:
            self._calls = [c for c in self._calls if not c.cancelled and not c.future.done()]
            if not self._calls:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                self._step()
            except Exception as exc:  # fail the callers, keep serving
                for c in self._calls:
                    if not c.future.done():
                        c.future.set_exception(exc)
                self._calls = []
            await asyncio.sleep(0)  # let callers react (and new calls join) between steps

    def _step(self) -> None:
        """One token for every live sequence of every call in flight."""
        rows = [(c, i) for c in self._calls for i in sorted(c.live)]
        specs = [c.specs[i] for c, i in rows]
        logits = torch.from_numpy(
            np.stack([self.model.logprobs(tuple(c.seqs[i])) for c, i in rows]).astype(np.float32)
        )
        seed = [s.seed if s.seed is not None else secrets.randbits(63) for s in specs]
        r = tempered_sample(
            logits,
            torch.tensor([s.alpha for s in specs], dtype=torch.float32),
            torch.tensor(seed),
            torch.tensor([len(c.seqs[i]) for c, i in rows]),
            torch.tensor([s.top_k for s in specs], dtype=torch.int64),
            torch.tensor([s.top_p for s in specs], dtype=torch.float32),
        )
        self.steps += 1
        self.stats.forward_passes += 1
        self.stats.forward_tokens += len(rows)
        self.stats.generated_tokens += len(rows)
        tok, lp, lq, lw = (t.tolist() for t in (r.token, r.logp, r.logq, r.log_w))
        for j, (c, i) in enumerate(rows):
            self._append(c, i, tok[j], lp[j], lq[j], lw[j], logits[j].numpy())
        for c in {id(c): c for c, _ in rows}.values():
            if not c.live and not c.future.done():
                c.future.set_result(self._finish(c))

    def _append(self, c: _Call, i: int, tok: int, lp: float, lq: float, lw: float, logits: np.ndarray) -> None:
        spec, o = c.specs[i], c.out[i]
        c.seqs[i].append(tok)
        o.tokens.append(tok)
        o.logp.append(lp)
        o.logq.append(lq)
        o.log_w.append(lw)
        o.forward_passes += 1
        top = self._top(self._alternatives(logits, spec), spec.top_logprobs) if spec.top_logprobs else (None, None)
        if spec.top_logprobs:
            o.top_ids.append(top[0])
            o.top_logps.append(top[1])
        go_on = True
        if c.on_token is not None and not c.cancelled:
            try:
                go_on = c.on_token(i, TokenDraw(tok, lp, top[0], top[1], log_w=lw, logq=lq))
            except Exception as exc:
                c.cancelled = True
                if not c.future.done():
                    c.future.set_exception(exc)
                return
        stops = self.eos_ids if spec.stop_ids is None else spec.stop_ids
        limit = min(spec.max_new_tokens, self.max_context - len(spec.prefix))
        if tok in stops or not go_on:
            o.finish_reason = "stop"
            c.live.discard(i)
        elif len(o.tokens) >= limit:
            c.live.discard(i)

    @staticmethod
    def _alternatives(logits: np.ndarray, spec: SampleSpec) -> np.ndarray:
        """Log-probs [V] the alternatives are reported in: raw, or under q (spec.logprobs_mode):
        α·log p over the spec's kept set (the engines' shared rule)."""
        if spec.logprobs_mode == "raw" or spec.greedy:
            return logits
        scaled = torch.from_numpy(spec.alpha * logits.astype(np.float64)).float()[None]
        keep = kept_mask(scaled, torch.tensor([spec.top_k]), torch.tensor([spec.top_p]))
        if keep is not None:
            scaled = torch.where(keep, scaled, torch.full_like(scaled, -torch.inf))
        return torch.log_softmax(scaled.double(), dim=-1)[0].numpy()

    @staticmethod
    def _top(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(-logits, kind="stable")[:k]
        return order.astype(np.int64), logits[order].astype(np.float32)

    @staticmethod
    def _finish(c: _Call) -> list[Sample]:
        for o, spec in zip(c.out, c.specs, strict=True):
            o.logp, o.logq, o.log_w = (np.asarray(x, dtype=np.float32) for x in (o.logp, o.logq, o.log_w))
            o.computed_prefix_tokens = len(spec.prefix)
            if spec.top_logprobs:
                k = spec.top_logprobs
                o.top_ids = np.asarray(o.top_ids, dtype=np.int64).reshape(-1, k)
                o.top_logps = np.asarray(o.top_logps, dtype=np.float32).reshape(-1, k)
            else:
                o.top_ids = o.top_logps = None
        return c.out

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
        if self._task is not None and not self._task.done():
            self._task.cancel()
