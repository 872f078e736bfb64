"""Exact oracles for power sampling on enumerable toys (test-only code).

Everything a power sampler's law depends on, computed by enumeration with no sampling noise:
the target π ∝ p^α over the responses of a block (stop tokens and stop strings absorbing, only
tokens of the request's kept set), the tempered proposal's suffix law Q (through the engines'
own truncation code, `tempered_sample.kept_mask`), and the MH / i-SIR transition kernels built
with the production decision functions (power_math.mh_log_accept, isir_scores), for a
tempered proposal or for a fixed look-ahead table r(· | c).

Stop strings are detected independently of the production code: a response is terminal when
its last token is a stop id or its decoded text contains a stop string (valid states never
contain one before their last token).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from temper.decoding import power_math as pm
from temper.decoding.engines.toy import ToyModel, ToyTokenizer
from temper.triton_kernels.tempered_sample import kept_mask

Resp = tuple[int, ...]


@dataclass
class Toy:
    """A model with `logprobs(context)`, `eos_id` and `vocab_size` (a ToyModel, or the HF tiny
    model through tests' adapter), the request's α, prompt, truncation and stops."""

    model: ToyModel
    alpha: float
    prompt: tuple[int, ...] = (0,)
    top_k: int = 0
    top_p: float = 1.0
    stops: Sequence[str] = ()
    stop_ids: Sequence[int] | None = None  # None = EOS only
    tokenizer: object = None  # decodes responses for stop strings; None = the toy's letters
    _q: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.tokenizer is None:
            self.tokenizer = ToyTokenizer(self.model.vocab_size)

    def terminal(self, resp: Resp) -> bool:
        ids = (self.model.eos_id,) if self.stop_ids is None else tuple(self.stop_ids)
        if resp and resp[-1] in ids:
            return True
        text = self.tokenizer.decode(list(resp))
        return any(s in text for s in self.stops)

    def dist(self, resp: Resp) -> tuple[np.ndarray, np.ndarray, float]:
        """(log p [V], log q [V] (-inf outside the kept set), log Z over the kept set) at resp."""
        if resp not in self._q:
            lp = self.model.logprobs(self.prompt + resp)
            scaled = torch.tensor(self.alpha * lp, dtype=torch.float64)[None]
            mask = kept_mask(scaled, torch.tensor([self.top_k]), torch.tensor([self.top_p]))
            keep = np.ones_like(lp, dtype=bool) if mask is None else mask[0].numpy()
            keep &= np.isfinite(lp)
            a = np.where(keep, self.alpha * lp, -np.inf)
            log_z = float(np.logaddexp.reduce(a[keep]))
            self._q[resp] = (lp, a - log_z, log_z)
        return self._q[resp]

    def log_p(self, resp: Resp) -> float:
        return float(sum(self.dist(resp[:j])[0][resp[j]] for j in range(len(resp))))

    def states(self, t: int) -> list[Resp]:
        """π_t's support: responses of kept tokens ending in a stop within t tokens, and
        unfinished ones of exactly t tokens."""
        out: list[Resp] = []

        def walk(x: Resp) -> None:
            if x and (self.terminal(x) or len(x) == t):
                out.append(x)
                return
            _, lq, _ = self.dist(x)
            for v in np.nonzero(np.isfinite(lq))[0]:
                walk(x + (int(v),))

        walk(())
        return out

    def target(self, t: int) -> dict[Resp, float]:
        xs = self.states(t)
        w = np.array([self.alpha * self.log_p(x) for x in xs])
        w = np.exp(w - np.logaddexp.reduce(w))
        return dict(zip(xs, w.tolist(), strict=True))


# A proposal table: resp → (log r [V], log_w [V] = α·log p − log r); r = q gives log_w = log Z.
Table = Callable[[Resp], tuple[np.ndarray, np.ndarray]]


def tempered_table(toy: Toy) -> Table:
    def at(resp: Resp):
        lp, lq, log_z = toy.dist(resp)
        return lq, np.where(np.isfinite(lq), log_z, -np.inf)

    return at


def suffixes(toy: Toy, table: Table, prefix: Resp, t: int) -> list[tuple[Resp, float, float]]:
    """Every suffix the proposal can draw from prefix up to t tokens or a stop:
    (suffix, log Q(suffix), Σ log_w(suffix))."""
    out = []

    def walk(s: Resp, lq: float, lw: float) -> None:
        x = prefix + s
        if s and (toy.terminal(x) or len(x) == t):
            out.append((s, lq, lw))
            return
        lr, lwv = table(x)
        for v in np.nonzero(np.isfinite(lr))[0]:
            walk(s + (int(v),), lq + lr[v], lw + lwv[v])

    walk((), 0.0, 0.0)
    return out


def suffix_log_w(table: Table, x: Resp, i: int) -> float:
    return math.fsum(float(table(x[:j])[1][x[j]]) for j in range(i, len(x)))


def mh_kernel(toy: Toy, table: Table, t: int, proposals: int = 1, hastings: bool = True):
    """The exact kernel K [S, S] of one move (cut uniform over ℓ(x); M = 1 MH, M > 1 i-SIR)
    on π_t's states; returns (states, K)."""
    xs = toy.states(t)
    idx = {x: k for k, x in enumerate(xs)}
    K = np.zeros((len(xs), len(xs)))
    for x in xs:
        L = len(x)
        for i in range(L):
            cur = suffix_log_w(table, x, i)
            sufs = suffixes(toy, table, x[:i], t)
            if proposals == 1:
                for s, lq, lw in sufs:
                    y = x[:i] + s
                    la = float(pm.mh_log_accept(cur, L, lw, len(y) if hastings else L))
                    a = math.exp(min(la, 0.0))
                    K[idx[x], idx[y]] += math.exp(lq) / L * a
                    K[idx[x], idx[x]] += math.exp(lq) / L * (1 - a)
                continue
            for combo in itertools.product(sufs, repeat=proposals):
                pr = math.exp(sum(c[1] for c in combo)) / L
                cands = [x] + [x[:i] + c[0] for c in combo]
                scores = pm.isir_scores(np.array([cur] + [c[2] for c in combo]), np.array([len(z) for z in cands]))
                w = np.exp(scores - scores.max())
                for z, wz in zip(cands, w / w.sum(), strict=True):
                    K[idx[x], idx[z]] += pr * wz
    return xs, K


def stationary(K: np.ndarray) -> np.ndarray:
    """The left eigenvector of K for eigenvalue 1, normalised."""
    w, v = np.linalg.eig(K.T)
    s = np.real(v[:, np.argmin(np.abs(w - 1))])
    return s / s.sum()


def tv(p: dict, q: dict) -> float:
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q))


def mh_schedule_law(toy: Toy, table: Table, T: int, block_size: int, steps: int, proposals: int = 1) -> dict:
    """The exact law of what blockwise MH returns: per block, extend every unfinished state to
    t_k with the proposal, then `steps` moves of the block's kernel. Compared with the
    strategy's empirical law, it leaves no room for convergence slack: any gap is a bug."""
    law: dict = {(): 1.0}
    for t in pm.block_lengths(T, block_size):
        grown: dict = {}
        for x, p in law.items():
            if (x and toy.terminal(x)) or len(x) >= t:
                grown[x] = grown.get(x, 0.0) + p
                continue
            for s, lq, _ in suffixes(toy, table, x, t):
                grown[x + s] = grown.get(x + s, 0.0) + p * math.exp(lq)
        xs, K = mh_kernel(toy, table, t, proposals)
        vec = np.array([grown.get(x, 0.0) for x in xs])
        for _ in range(steps):
            vec = vec @ K
        law = dict(zip(xs, vec.tolist(), strict=True))
    return law


def assert_matches(emp: dict, law: dict, n: int, z: float = 4.5) -> float:
    """Every response's empirical frequency within z standard errors (+1/n) of `law`; returns the TV."""
    assert set(emp) <= {x for x, p in law.items() if p > 0}, set(emp) - set(law)
    for x, p in law.items():
        assert abs(emp.get(x, 0.0) - p) <= z * math.sqrt(p * (1 - p) / n) + 1.0 / n, (x, emp.get(x, 0.0), p)
    return tv(emp, law)
