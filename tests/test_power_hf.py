"""Power sampling on the HF engine is exact too: the distribution tests run through its prefix
cache, slot batch, prefix-cache joins, resident continuation and copies of resampled rows.

The tiny model's vocabulary is large, so the target is made enumerable with top_k = 2: p^α over
the 2^T responses whose tokens are the two most likely at every step. The oracle reads p from
the same model (one forward pass per context) and builds the exact laws (power_oracle.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from power_oracle import Toy, assert_matches, mh_schedule_law, tempered_table
from test_power_kernels import lookahead_table
from test_power_smc import check_unbiased

from temper.decoding.counting_engine import CountingEngine
from temper.decoding.power_math import normalized_weights
from temper.decoding.strategies.base import DecodeRequest, StrategyOptions
from temper.decoding.strategies.power import PowerStrategy
from temper.decoding.strategies.power_decode import SuffixDecoder
from temper.decoding.strategies.power_lookahead import Lookahead
from temper.decoding.strategies.power_params import PowerParams
from temper.decoding.strategies.power_smc import smc_systems
from temper.decoding.strategies.settings import SamplingSettings

pytestmark = pytest.mark.usefixtures("no_gc")


class HFProbs:
    """log p(· | context) of an HF engine's model, as the oracle wants it (memoised)."""

    def __init__(self, engine):
        self.engine = engine
        self.vocab_size = engine.model.config.vocab_size
        self.eos_id = engine.eos_ids[0]
        self._memo: dict = {}

    @torch.inference_mode()
    def logprobs(self, context: tuple) -> np.ndarray:
        if context not in self._memo:
            logits = self.engine.model(torch.tensor([list(context)])).logits[0, -1].double()
            self._memo[context] = torch.log_softmax(logits, -1).numpy()
        return self._memo[context]


def hf_toy(engine, alpha: float) -> Toy:
    prompt = tuple(engine.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}]))
    return Toy(HFProbs(engine), alpha, prompt=prompt, top_k=2, stop_ids=engine.eos_ids, tokenizer=engine.tokenizer)


def request(toy: Toy, engine, T: int, n: int, seed: int = 2) -> DecodeRequest:
    s = SamplingSettings(top_k=2, max_tokens=T, seed=seed)
    s.n = n
    return DecodeRequest(prompt=list(toy.prompt), settings=s, engine=engine,
                         options=StrategyOptions(max_sequences=10**6))


LA = {"proposal": "lookahead", "lookahead_k": 2, "lookahead_m": 2, "lookahead_h": 2, "lookahead_threshold": 1.0}


@pytest.mark.parametrize("decoding", [
    {"block_size": 2, "mcmc_steps": 2},
    {"block_size": 3, "mcmc_steps": 1, "proposals": 2},
    {"block_size": 3, "mcmc_steps": 1, **LA},
])
async def test_mh_on_the_hf_engine_returns_the_exact_law_of_its_schedule(hf_engine, decoding):
    T, n = 3, 1500
    toy = hf_toy(hf_engine, 3.0)
    table = tempered_table(toy)
    if decoding.get("proposal") == "lookahead":  # this request's seeded r, rollouts on the same engine
        table, _ = await lookahead_table(toy, PowerParams(**decoding).lookahead(T), seed=2, engine=hf_engine)
    law = mh_schedule_law(toy, table, T, decoding["block_size"], decoding["mcmc_steps"], decoding.get("proposals", 1))
    strategy = PowerStrategy()
    res = await strategy.run(request(toy, hf_engine, T, n), strategy.parse({"alpha": 3.0, **decoding}))
    emp: dict = {}
    for c in res.completions:
        emp[tuple(c.tokens)] = emp.get(tuple(c.tokens), 0.0) + 1 / n
    tv = assert_matches(emp, law, n)
    print(f"\nHF MH {decoding}: TV to its exact law {tv:.4f} over {len(law)} responses; prefix hit rate "
          f"{hf_engine.stats.prefix_hit_rate:.2f}")
    assert hf_engine.stats.prefix_hit_tokens > 0


@pytest.mark.parametrize("lookahead", [False, True])
async def test_smc_on_the_hf_engine_is_unbiased(hf_engine, lookahead):
    """Particles stay resident between checkpoints; resampled copies copy their ancestor's row;
    look-ahead rollouts (uncached) run between the particles' steps."""
    T, R = 3, 1500 if not lookahead else 600
    toy = hf_toy(hf_engine, 3.0)
    req = request(toy, hf_engine, T, R)
    extra = dict(LA) if lookahead else {}
    p = PowerParams(method="smc", alpha=3.0, particles=4, resample_every=1, ess_threshold=0.9, **extra)
    calls = CountingEngine(hf_engine)
    la = Lookahead(SuffixDecoder(req, 3.0, calls), p.lookahead(T), 2) if lookahead else None
    ps, _, _ = await smc_systems(req, p, n=R, max_tokens=T, seed=2, calls=calls, la=la)
    W = normalized_weights(ps.W.reshape(R, 4))
    resp = [[tuple(ps.tracks[r * 4 + j].resp) for j in range(4)] for r in range(R)]
    tv = check_unbiased(toy, T, ps.log_evidence(), W, resp)
    print(f"\nHF SMC(4): TV of the evidence-weighted estimate {tv:.4f}, resamples {int(ps.resamples.sum())}")
    if lookahead:  # near-optimal twisted weights rarely need resampling here
        assert la.rollout_tokens > 0
    else:
        assert ps.resamples.sum() > R // 4
