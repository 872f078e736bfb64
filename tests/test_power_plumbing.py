"""The MH strategy moves exactly as its kernel says: thousands of chains start at one fixed
state, make ONE real move each through the production code (MHChain.step: cut, engine calls,
stop strings, early rejection, look-ahead records, decision), and the law of where they land
must match the exact kernel row K[x0, ·] from tests/power_oracle.py. A plumbing bug (a wrong
suffix sum, length, record or stop) shows as a cell several standard errors off.

The kernel tests (test_power_kernels.py) prove the kernel reversible; this proves the strategy
runs that kernel, on the ToyEngine and on the HF engine (prefix cache, KV packing)."""

from __future__ import annotations

import asyncio
from collections import Counter

import numpy as np
import pytest
from power_oracle import Toy, mh_kernel, tempered_table
from test_power_kernels import TOYS, lookahead_table
from toys import rare_toy

from temper.decoding.counting_engine import CountingEngine
from temper.decoding.engine import TokenDraw
from temper.decoding.engines.toy import ToyEngine
from temper.decoding.strategies.base import DecodeRequest, StrategyOptions
from temper.decoding.strategies.power_decode import SuffixDecoder
from temper.decoding.strategies.power_lookahead import Lookahead, LookaheadConfig, Track
from temper.decoding.strategies.power_mh import MHChain, MHRun
from temper.decoding.strategies.power_params import PowerParams
from temper.decoding.strategies.settings import SamplingSettings

pytestmark = pytest.mark.usefixtures("no_gc")


def request(toy: Toy, engine, t: int, seed: int) -> DecodeRequest:
    settings = SamplingSettings(top_k=toy.top_k, top_p=toy.top_p, stop=list(toy.stops), max_tokens=t,
                                stop_token_ids=list(toy.stop_ids or []), seed=seed)
    return DecodeRequest(prompt=list(toy.prompt), settings=settings, engine=engine,
                         options=StrategyOptions(max_sequences=10**7))


async def one_move(toy: Toy, engine, x0: tuple, t: int, n: int, params: PowerParams, la_cfg=None, seed=7):
    """Empirical law of the state after one move of n chains that all start at x0."""
    req = request(toy, engine, t, seed)
    calls = CountingEngine(engine)
    la = Lookahead(SuffixDecoder(req, toy.alpha, calls), la_cfg, seed) if la_cfg else None
    table = tempered_table(toy)
    recs = [None] * len(x0)
    if la is not None:  # the state's stored records, as the chain would have made them
        table, _ = await lookahead_table(toy, la_cfg, seed)
        for j in range(len(x0)):
            lp, lq, log_z = toy.dist(x0[:j])
            top = np.argsort(-lp, kind="stable")[: la_cfg.k]
            draw = TokenDraw(int(top[0]), float(lp[top[0]]), top, lp[top], log_z)
            if la.gate(draw):
                recs[j] = (await la.records([(x0[:j], draw)]))[0]
    run = MHRun(req, params, t, seed, calls, la)
    logp = [float(toy.dist(x0[:j])[0][x0[j]]) for j in range(len(x0))]
    log_w = [float(table(x0[:j])[1][x0[j]]) for j in range(len(x0))]
    chains = [MHChain(run, b, Track(list(x0), list(logp), list(log_w), list(recs), toy.terminal(x0)))
              for b in range(n)]
    await asyncio.gather(*(c.step(0, t, 0) for c in chains))
    counts = Counter(tuple(c.x.resp) for c in chains)
    return {k: v / n for k, v in counts.items()}, table, sum(c.abandoned for c in chains)


def assert_row(emp: dict, xs, K_row: np.ndarray, n: int) -> float:
    """Every cell within 4.5 standard errors (+1/n) of the exact row; returns the TV."""
    want = dict(zip(xs, K_row, strict=True))
    assert set(emp) <= {x for x, p in want.items() if p > 0}
    for x, p in want.items():
        assert abs(emp.get(x, 0.0) - p) <= 4.5 * np.sqrt(p * (1 - p) / n) + 1.0 / n, (x, emp.get(x, 0.0), p)
    return 0.5 * sum(abs(emp.get(x, 0.0) - p) for x, p in want.items())


@pytest.mark.parametrize(
    "name, x0, decoding",
    [
        ("eos-heavy", (0, 1, 0, 1, 1), {"early_rejection": True}),
        ("eos-heavy", (2,), {"early_rejection": True}),
        ("stop-string", (1, 2, 3), {"early_rejection": True}),  # ends with EOS after "bc"
        ("branchy-topk2", (1, 1, 1, 2), {"proposals": 2}),  # i-SIR with early rejection (Gumbel)
    ],
)
async def test_one_mh_move_follows_the_exact_kernel(name, x0, decoding):
    make, t = TOYS[name]
    toy = make()
    n = 6000
    params = PowerParams(block_size=t, alpha=toy.alpha, **decoding)
    emp, table, abandoned = await one_move(toy, ToyEngine(toy.model), x0, t, n, params)
    xs, K = mh_kernel(toy, table, t, proposals=params.proposals)
    tv = assert_row(emp, xs, K[xs.index(x0)], n)
    print(f"\n{name} x0={x0} {decoding}: TV to K[x0] {tv:.4f}, abandoned proposals {abandoned}")


async def test_one_lookahead_mh_move_follows_the_exact_kernel():
    toy = Toy(rare_toy(), 4.0)
    cfg = LookaheadConfig(k=3, m=2, h=2, threshold=1.0, eps=0.05, rollout="q", max_tokens=3)
    params = PowerParams(block_size=3, alpha=toy.alpha, proposal="lookahead")
    n = 6000
    for x0 in [(1, 0, 0), (0, 3)]:
        emp, table, _ = await one_move(toy, ToyEngine(toy.model), x0, 3, n, params, la_cfg=cfg)
        xs, K = mh_kernel(toy, table, 3)
        tv = assert_row(emp, xs, K[xs.index(x0)], n)
        print(f"\nlook-ahead MH x0={x0}: TV to K[x0] {tv:.4f}")
