"""PowerStrategy.cost is the worst case of what a request generates: the server admits
requests by it, so a run must never generate more (every proposal, particle, rollout and
candidate counted by the CountingEngine), for every method and knob; and where the worst case
is forced (no stop can happen), it is exact."""

from __future__ import annotations

import pytest

from temper.decoding.engines.toy import ToyEngine, ToyModel
from temper.decoding.strategies.base import DecodeRequest, StrategyOptions
from temper.decoding.strategies.power import PowerStrategy
from temper.decoding.strategies.settings import SamplingSettings

LA = {"lookahead_k": 2, "lookahead_m": 2, "lookahead_h": 2}
CASES = {
    "mh": {"method": "mh", "block_size": 3, "mcmc_steps": 3},
    "mh-isir": {"method": "mh", "block_size": 2, "mcmc_steps": 2, "proposals": 3},
    "mh-no-er": {"method": "mh", "block_size": 3, "mcmc_steps": 2, "early_rejection": False},
    "mh-lookahead": {"method": "mh", "block_size": 2, "mcmc_steps": 2, "proposal": "lookahead",
                     "lookahead_threshold": 1.0, **LA},
    "mh-lookahead-gated": {"method": "mh", "block_size": 3, "mcmc_steps": 2, "proposal": "lookahead",
                           "lookahead_threshold": 0.6, "lookahead_rollout": "p", **LA},
    "smc": {"method": "smc", "particles": 4, "resample_every": 2},
    "smc-ramp": {"method": "smc", "particles": 3, "resample_every": 2, "ramp_tokens": 4},
    "smc-lookahead": {"method": "smc", "particles": 3, "resample_every": 1, "proposal": "lookahead",
                      "lookahead_threshold": 1.0, **LA},
    "lookahead-tokens": {"method": "lookahead", "block_size": 1, **LA},
    "lookahead-blocks": {"method": "lookahead", "block_size": 2, "lookahead_candidates": 4, **LA},
    "lookahead-blocks-p": {"method": "lookahead", "block_size": 3, "lookahead_candidates": 3, "lookahead_rollout": "p",
                           "jackknife": False, **LA},
}


async def run(case: dict, eos_logit: float, n: int = 3, T: int = 6, stop=()):
    engine = ToyEngine(ToyModel(vocab_size=4, seed=2, eos_logit=eos_logit, sharpness=1.5))
    strategy = PowerStrategy()
    params = strategy.parse({"alpha": 3.0, **case})
    req = DecodeRequest(prompt=[0], settings=SamplingSettings(n=n, max_tokens=T, seed=4, stop=list(stop)),
                        engine=engine, options=StrategyOptions(max_sequences=10**6))
    res = await strategy.run(req, params)
    assert res.completion_tokens == engine.stats.generated_tokens
    return res.completion_tokens, strategy.cost(req, params)


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("eos_logit", [0.5, -40.0])
async def test_runs_never_exceed_their_cost(name, eos_logit):
    actual, cost = await run(CASES[name], eos_logit)
    print(f"\n{name} eos_logit={eos_logit}: generated {actual} of a worst case of {cost}")
    assert 0 < actual <= cost


async def test_stop_strings_never_exceed_the_cost():
    actual, cost = await run(CASES["smc-lookahead"], 0.0, stop=["ba"])
    assert actual <= cost


@pytest.mark.parametrize("name", ["smc", "lookahead-tokens"])
async def test_cost_is_exact_when_nothing_can_stop(name):
    case = CASES[name]
    if name == "lookahead-tokens":  # K covers the 3 live tokens, so no candidate is ever left out
        case = {**case, "lookahead_k": 3}
    actual, cost = await run(case, -40.0)
    if name == "smc":
        assert actual == cost == 3 * 4 * 6
    else:
        assert actual <= cost  # rollouts from candidates the kept-set tolerance drops are not run


def test_cost_formulas_by_hand():
    strategy = PowerStrategy()
    engine = ToyEngine(ToyModel(vocab_size=4))
    req = DecodeRequest(prompt=[0], settings=SamplingSettings(n=2, max_tokens=4), engine=engine)
    cost = lambda dec: strategy.cost(req, strategy.parse(dec))  # noqa: E731
    # extensions 4 + 1 step × (t=2: 2 tokens, t=4: 4 tokens)
    assert cost({"block_size": 2, "mcmc_steps": 1}) == 2 * (4 + 2 + 4)
    assert cost({"block_size": 2, "mcmc_steps": 1, "proposals": 3}) == 2 * (4 + 3 * (2 + 4))
    assert cost({"method": "smc", "particles": 5}) == 2 * 5 * 4
    # look-ahead: position j costs 1 + K·M·min(H, T − j − 1) = 1 + 4·min(2, 3 − j)
    la = {"lookahead_k": 2, "lookahead_m": 2, "lookahead_h": 2}
    path = [1 + 4 * min(2, 4 - j - 1) for j in range(4)]  # [9, 9, 5, 1]
    assert cost({"method": "lookahead", "block_size": 1, **la}) == 2 * sum(path)
    assert cost({"method": "smc", "particles": 3, "proposal": "lookahead", **la}) == 2 * 3 * sum(path)
    # MH move at the worst cut (0): 1 token there (its stored r), then full positions 1..t−1
    moves = (1 + sum(path[1:2])) + (1 + sum(path[1:4]))
    assert cost({"block_size": 2, "mcmc_steps": 1, "proposal": "lookahead", **la}) == 2 * (sum(path) + moves)
    # blocks of 2: L·2 candidate tokens + K·M rollouts of min(H, T − s − 2)
    assert cost({"method": "lookahead", "block_size": 2, "lookahead_candidates": 5, **la}) == 2 * (
        (5 * 2 + 4 * 2) + (5 * 2 + 4 * 0))
