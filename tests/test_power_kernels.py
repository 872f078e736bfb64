"""Power MH is exact, checked with no sampling noise: the transition kernel of one move is
enumerated on toys (tests/power_oracle.py) with the production decision functions, and must
satisfy detailed balance with π entrywise and have π as its stationary law — for tempered
proposals (with top-k, top-p, stop strings, EOS-heavy toys, intermediate blocks, i-SIR) and
for the look-ahead proposal r built by the production Lookahead on the ToyEngine.

A loose |πK − π| would not do: the real-length cut without its Hastings factor moves π by
only ~1e-4 per step, yet its own stationary law is TV 0.05 away (checked below, so these
tests can fail)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from power_oracle import Toy, mh_kernel, stationary, tempered_table
from toys import branchy, rare_toy

from temper.decoding.counting_engine import CountingEngine
from temper.decoding.engine import TokenDraw
from temper.decoding.engines.toy import ToyEngine, ToyModel
from temper.decoding.strategies.base import DecodeRequest
from temper.decoding.strategies.power_decode import SuffixDecoder
from temper.decoding.strategies.power_lookahead import Lookahead, LookaheadConfig
from temper.decoding.strategies.settings import SamplingSettings


def eos_heavy() -> ToyModel:
    return ToyModel(vocab_size=3, seed=1, eos_logit=1.0, sharpness=1.0)


def letters() -> ToyModel:
    return ToyModel(vocab_size=4, seed=3, eos_logit=-1.0, sharpness=1.5)


TOYS = {
    "branchy": (lambda: Toy(branchy(), 2.0), 5),
    "branchy-block2": (lambda: Toy(branchy(), 2.0), 2),  # an intermediate target π_2
    "rare": (lambda: Toy(rare_toy(), 4.0), 3),
    "branchy-topk2": (lambda: Toy(branchy(), 2.0, top_k=2), 5),
    "flat-topp": (lambda: Toy(ToyModel(vocab_size=4, seed=3, eos_logit=-1.0, sharpness=0.5), 1.5, top_p=0.8), 4),
    "eos-heavy": (lambda: Toy(eos_heavy(), 2.0), 5),
    "stop-string": (lambda: Toy(letters(), 3.0, stops=["ba", "cc"]), 4),
    "stop-token": (lambda: Toy(letters(), 3.0, stop_ids=[3, 1]), 4),
}


def check_reversible(toy: Toy, t: int, xs, K, tol=1e-12) -> None:
    pi = toy.target(t)
    p = np.array([pi[x] for x in xs])
    np.testing.assert_allclose(K.sum(axis=1), 1.0, atol=1e-12)
    assert (K >= -1e-15).all()
    flow = p[:, None] * K
    assert np.abs(flow - flow.T).max() <= tol  # detailed balance, entrywise
    assert 0.5 * np.abs(stationary(K) - p).sum() <= 1e-9


@pytest.mark.parametrize("name", list(TOYS))
def test_tempered_mh_kernel_is_reversible(name):
    make, t = TOYS[name]
    toy = make()
    xs, K = mh_kernel(toy, tempered_table(toy), t)
    assert len(xs) > 5
    check_reversible(toy, t, xs, K)


@pytest.mark.parametrize("name", ["rare", "stop-string", "branchy-topk2"])
def test_isir_kernel_is_reversible(name):
    make, t = TOYS[name]
    toy = make()
    t = min(t, 3)
    xs, K = mh_kernel(toy, tempered_table(toy), t, proposals=2)
    check_reversible(toy, t, xs, K)


def test_without_the_hastings_factor_the_chain_is_biased():
    toy = Toy(eos_heavy(), 2.0)
    xs, K = mh_kernel(toy, tempered_table(toy), 5, hastings=False)
    pi = toy.target(5)
    p = np.array([pi[x] for x in xs])
    flow = p[:, None] * K
    tv = 0.5 * np.abs(stationary(K) - p).sum()
    print(f"\nno Hastings factor: |πK − π|₁ = {np.abs(p @ K - p).sum():.1e}, DB defect "
          f"{np.abs(flow - flow.T).max():.1e}, stationary TV {tv:.4f}")
    assert np.abs(flow - flow.T).max() > 1e-4 and tv > 0.01


async def lookahead_table(toy: Toy, cfg: LookaheadConfig, seed: int, engine=None):
    """r(· | c) for every context of the toy, from the production Lookahead on a ToyEngine (or
    `engine`; its rollouts are seeded by context, so this is the table one request with `seed`
    uses), as an oracle table: resp → (log r [V], α·log p − log r)."""
    engine = engine or ToyEngine(toy.model)
    settings = SamplingSettings(top_k=toy.top_k, top_p=toy.top_p, stop=list(toy.stops),
                                stop_token_ids=list(toy.stop_ids or []))
    req = DecodeRequest(prompt=list(toy.prompt), settings=settings, engine=engine)
    la = Lookahead(SuffixDecoder(req, toy.alpha, CountingEngine(engine)), cfg, seed)
    table = {}
    for x in contexts(toy, cfg.max_tokens):
        lp, lq, log_z = toy.dist(x)
        top = np.argsort(-lp, kind="stable")[: cfg.k]
        draw = TokenDraw(int(top[0]), float(lp[top[0]]), top, lp[top], log_z)
        if la.gate(draw):
            rec = (await la.records([(x, draw)]))[0]
            lr = np.array([rec.log_r(v, lp[v], toy.alpha, cfg.eps) if np.isfinite(lq[v]) else -np.inf
                           for v in range(len(lp))])
        else:
            lr = lq
        table[x] = (lr, np.where(np.isfinite(lr), toy.alpha * lp - lr, -np.inf))
    return table.__getitem__, la


def contexts(toy: Toy, t: int) -> list[tuple]:
    out = set()
    for x in toy.states(t):
        out |= {x[:j] for j in range(len(x))}
    return sorted(out)


@pytest.mark.parametrize("name, k, m, h", [("rare", 3, 2, 2), ("rare", 2, 1, 1), ("stop-string", 2, 2, 1),
                                           ("branchy-topk2", 2, 1, 3)])
async def test_seeded_lookahead_mh_kernel_is_reversible(name, k, m, h):
    make, t = TOYS[name]
    toy = make()
    for seed in (1, 2):
        cfg = LookaheadConfig(k=k, m=m, h=h, threshold=1.0, eps=0.05, rollout="q", max_tokens=t)
        table, la = await lookahead_table(toy, cfg, seed)
        xs, K = mh_kernel(toy, table, t)
        check_reversible(toy, t, xs, K, tol=1e-12)
        assert la.rollout_tokens > 0


async def test_lookahead_draws_follow_the_probabilities_they_report():
    """`choose` draws from r = (1−ε)·t + ε·q and reports log r of what it drew: the empirical
    law of its draws (q-draws made by sampling q) matches exp(log r) at every token."""
    toy = Toy(rare_toy(), 4.0)
    cfg = LookaheadConfig(k=3, m=2, h=2, threshold=1.0, eps=0.2, rollout="q", max_tokens=3)
    table, la = await lookahead_table(toy, cfg, seed=5)
    lp, lq, log_z = toy.dist(())
    top = np.argsort(-lp, kind="stable")[:3]
    rec = (await la.records([((), TokenDraw(int(top[0]), lp[top[0]], top, lp[top], log_z))]))[0]
    rng = np.random.default_rng(0)
    n = 40_000
    q_draws = rng.choice(len(lq), size=n, p=np.exp(lq))
    got = np.zeros(len(lq))
    for v in q_draws:
        tok, lpv, lw = la.choose(rec, TokenDraw(int(v), float(lp[v]), top, lp[top], log_z), rng)
        got[tok] += 1
        assert lw == pytest.approx(toy.alpha * lp[tok] - table(())[0][tok], abs=1e-9)
    want = np.exp(table(())[0])
    np.testing.assert_allclose(got / n, want, atol=4.5 * np.sqrt(want * (1 - want) / n).max() + 1e-4)
    assert math.isclose(want.sum(), 1.0, abs_tol=1e-12)
