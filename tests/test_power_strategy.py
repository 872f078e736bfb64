"""The `power` strategy's surface: parameter validation (400s naming the field), token budget,
metadata and usage accounting, batching (one engine call per MH step / SMC interval), EOS and
stop-token handling, seeds, and a smoke run on the tiny HF model (prefix cache hits)."""

from __future__ import annotations

import pytest

from temper.decoding.engines.toy import ToyEngine, ToyModel
from temper.decoding.errors import ParamError
from temper.decoding.power_math import block_lengths
from temper.decoding.strategies.base import DecodeRequest, StrategyOptions
from temper.decoding.strategies.power import PowerStrategy
from temper.decoding.strategies.power_params import DEFAULT_MAX_TOKENS, PowerParams, token_budget
from temper.decoding.strategies.registry import get_strategy, parse_decoding
from temper.decoding.strategies.settings import SamplingSettings


def test_registered_and_not_streamable():
    s = get_strategy("power")
    assert isinstance(s, PowerStrategy) and s.Params is PowerParams and not s.streams_tokens


def test_defaults():
    p = PowerParams()
    assert (p.method, p.alpha, p.block_size, p.mcmc_steps, p.proposals) == ("mh", 4.0, 192, 10, 1)
    assert (p.particles, p.resample_every, p.ess_threshold, p.ramp_tokens) == (32, 64, 0.5, 0)
    assert p.max_tokens is None and p.seed is None and p.early_stop is False
    assert p.proposal == "tempered" and p.early_rejection is True and p.lookahead(100) is None
    la = PowerParams(proposal="lookahead").lookahead(100)
    assert (la.k, la.m, la.h, la.threshold, la.eps, la.rollout, la.max_tokens) == (8, 4, 32, 0.9, 0.05, "q", 100)
    la = PowerParams(method="lookahead").lookahead(50)
    assert (la.k, la.m, la.h, la.threshold, la.eps) == (8, 8, 192, 1.0, 0.0)
    assert PowerParams(method="lookahead").jackknife and PowerParams(method="lookahead").lookahead_candidates == 32


@pytest.mark.parametrize(
    "decoding, field",
    [
        ({"alpha": 0.5}, "alpha"),
        ({"alpha": float("inf")}, "alpha"),
        ({"alpha": float("nan")}, "alpha"),
        ({"block_size": 0}, "block_size"),
        ({"block_size": -3}, "block_size"),
        ({"mcmc_steps": 1001}, "mcmc_steps"),
        ({"proposals": 65}, "proposals"),
        ({"proposals": 0}, "proposals"),
        ({"method": "smc", "particles": 1025}, "particles"),
        ({"method": "smc", "ess_threshold": 1.5}, "ess_threshold"),
        ({"method": "smc", "resample_every": 0}, "resample_every"),
        ({"method": "smc", "ramp_tokens": -1}, "ramp_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"method": "beam"}, "method"),
        ({"bogus": 1}, "bogus"),
        # cross-field: a knob of the other method is rejected by name
        ({"particles": 8}, "particles"),
        ({"method": "mh", "ramp_tokens": 8}, "ramp_tokens"),
        ({"method": "smc", "block_size": 8}, "block_size"),
        ({"method": "smc", "proposals": 2}, "proposals"),
        ({"method": "smc", "early_rejection": False}, "early_rejection"),
        # look-ahead knobs: bounds, and only where a look-ahead runs
        ({"method": "lookahead", "lookahead_k": 0}, "lookahead_k"),
        ({"method": "lookahead", "lookahead_k": 65}, "lookahead_k"),
        ({"method": "lookahead", "lookahead_m": 0}, "lookahead_m"),
        ({"proposal": "lookahead", "lookahead_h": 0}, "lookahead_h"),
        ({"proposal": "lookahead", "lookahead_threshold": 0.0}, "lookahead_threshold"),
        ({"proposal": "lookahead", "lookahead_threshold": 1.5}, "lookahead_threshold"),
        ({"proposal": "lookahead", "lookahead_threshold": float("nan")}, "lookahead_threshold"),
        ({"proposal": "lookahead", "lookahead_eps": 0.0}, "lookahead_eps"),
        ({"proposal": "lookahead", "lookahead_eps": 1.5}, "lookahead_eps"),
        ({"proposal": "lookahead", "lookahead_rollout": "r"}, "lookahead_rollout"),
        ({"method": "lookahead", "lookahead_candidates": 0}, "lookahead_candidates"),
        ({"method": "lookahead", "lookahead_candidates": 257}, "lookahead_candidates"),
        ({"proposal": "beam"}, "proposal"),
        ({"method": "lookahead", "proposal": "lookahead"}, "proposal"),
        ({"lookahead_k": 4}, "lookahead_k"),  # mh with the tempered proposal has no look-ahead
        ({"method": "smc", "lookahead_m": 4}, "lookahead_m"),
        ({"method": "lookahead", "lookahead_eps": 0.1}, "lookahead_eps"),  # the paper's sampler has no mixture
        ({"proposal": "lookahead", "jackknife": False}, "jackknife"),
        ({"method": "smc", "proposal": "lookahead", "lookahead_candidates": 4}, "lookahead_candidates"),
        ({"method": "lookahead", "block_size": 1, "lookahead_candidates": 4}, "lookahead_candidates"),
        ({"method": "lookahead", "lookahead_threshold": 0.5}, "lookahead_threshold"),  # blocks: no gate
        ({"method": "smc", "proposal": "lookahead", "ramp_tokens": 8}, "ramp_tokens"),
    ],
)
def test_bad_params_are_param_errors_naming_the_field(decoding, field):
    with pytest.raises(ParamError) as e:
        parse_decoding({"strategy": "power", **decoding})
    assert e.value.param == f"decoding.{field}"
    assert field in e.value.message


def test_token_budget(decode_request):
    eng = ToyEngine(ToyModel(), max_context=4000)
    p = PowerParams()
    assert token_budget(decode_request(eng), p) == DEFAULT_MAX_TOKENS  # default cap
    assert token_budget(decode_request(eng, max_tokens=10), p) == 10  # the request's, below the cap
    assert token_budget(decode_request(eng, max_tokens=9999), p) == DEFAULT_MAX_TOKENS
    assert token_budget(decode_request(eng, max_tokens=10), PowerParams(max_tokens=7)) == 7  # decoding overrides
    assert token_budget(decode_request(eng, max_tokens=10), PowerParams(max_tokens=50)) == 50
    room = 4000 - len(decode_request(eng).prompt)
    assert token_budget(decode_request(eng), PowerParams(max_tokens=5000)) == room  # the context caps


async def test_mh_metadata_usage_and_one_call_per_step(decode_request, run_strategy):
    eng = ToyEngine(ToyModel(vocab_size=4, seed=0, eos_logit=-1.0))
    dec = {"alpha": 2, "block_size": 3, "mcmc_steps": 2, "proposals": 2}
    res = await run_strategy(decode_request(eng, n=3, max_tokens=7, seed=5), {"strategy": "power", **dec})
    m = res.metadata
    assert m["strategy"] == "power" and m["method"] == "mh" and m["alpha"] == 2.0
    assert res.completion_tokens == m["tokens_generated"] == eng.stats.generated_tokens
    assert m["tokens_generated"] > sum(len(c.tokens) for c in res.completions)  # proposals count
    assert m["forward_passes"] > 0 and m["wall_seconds"] > 0
    blocks = len(block_lengths(7, 3))
    assert len(m["acceptance_rate_per_block"]) == m["blocks"] == blocks
    assert 0.0 <= m["acceptance_rate"] <= 1.0
    # chains are their own tasks, but their calls share engine steps: never more steps than
    # one chain's own sequential depth (its extensions, then 2 moves of ≤ t_k tokens per block)
    assert eng.steps <= 7 + 2 * sum(block_lengths(7, 3))
    assert eng.calls <= 3 * blocks * (1 + 2)
    assert len(res.completions) == 3
    for c in res.completions:
        assert 1 <= len(c.tokens) <= 7 and len(c.logp) == len(c.tokens)
        assert c.finish_reason == ("stop" if c.tokens[-1] in eng.eos_ids else "length")
        assert "acceptance_rate" in c.metadata


async def test_smc_metadata_usage_and_one_call_per_interval(decode_request, run_strategy):
    eng = ToyEngine(ToyModel(vocab_size=4, seed=0, eos_logit=-1.0))
    dec = {"method": "smc", "alpha": 3, "particles": 8, "resample_every": 2, "ess_threshold": 0.9}
    res = await run_strategy(decode_request(eng, n=2, max_tokens=8, seed=5), {"strategy": "power", **dec})
    m = res.metadata
    assert m["method"] == "smc" and m["particles"] == 8
    assert res.completion_tokens == m["tokens_generated"] == eng.stats.generated_tokens
    assert m["tokens_generated"] > sum(len(c.tokens) for c in res.completions)  # dead particles count
    assert eng.calls <= 4  # intervals of 2 tokens up to 8, all 16 particles per call
    assert m["forward_passes"] <= 8
    assert 1 <= len(m["ess_trace"]) <= 3 and all(1.0 <= e <= 8.0 for e in m["ess_trace"])
    assert isinstance(m["resample_count"], int)
    assert sum(c.metadata["resample_count"] for c in res.completions) == m["resample_count"]
    assert len(res.completions) == 2 and m["wall_seconds"] > 0


@pytest.mark.parametrize("method", ["mh", "smc"])
async def test_seeds_reproduce_and_stop_tokens_end_responses(method, decode_request, run_strategy):
    eng = ToyEngine(ToyModel(vocab_size=5, seed=2, eos_logit=-2.0))
    dec = {"method": method, "alpha": 2}
    dec |= {"block_size": 3, "mcmc_steps": 3} if method == "mh" else {"particles": 4, "resample_every": 3}
    a = await run_strategy(
        decode_request(eng, n=4, max_tokens=9, seed=11, stop_token_ids=[1]), {"strategy": "power", **dec}
    )
    b = await run_strategy(
        decode_request(eng, n=4, max_tokens=9, seed=11, stop_token_ids=[1]), {"strategy": "power", **dec}
    )
    c = await run_strategy(
        decode_request(eng, n=4, max_tokens=9, seed=11, stop_token_ids=[1]),
        {"strategy": "power", **{**dec, "seed": 12}},
    )
    toks = [x.tokens for x in a.completions]
    assert toks == [x.tokens for x in b.completions]
    assert a.metadata["tokens_generated"] == b.metadata["tokens_generated"]
    assert toks != [x.tokens for x in c.completions]  # decoding.seed overrides the request's
    for x in a.completions:  # token 1 is a stop token for this request: nothing after it
        stops = [i for i, t in enumerate(x.tokens) if t in (1, eng.model.eos_id)]
        assert stops in ([], [len(x.tokens) - 1])
        assert x.finish_reason == ("stop" if stops else "length")


async def test_top_logprobs_from_a_score_call(decode_request, run_strategy):
    eng = ToyEngine(ToyModel(vocab_size=4, seed=0))
    res = await run_strategy(
        decode_request(eng, n=2, max_tokens=4, seed=1, logprobs=True, top_logprobs=2),
        {"strategy": "power", **{"alpha": 2, "block_size": 2, "mcmc_steps": 1}},
    )
    for c in res.completions:
        assert c.top_ids.shape == (len(c.tokens), 2) and c.top_logps.shape == (len(c.tokens), 2)
        assert (c.top_logps[:, 0] >= c.logp - 1e-6).all()


async def test_early_stop_ends_finished_chains_at_the_block_boundary(decode_request, run_strategy):
    eng = ToyEngine(ToyModel(vocab_size=3, seed=1, eos_logit=3.0))  # EOS almost at once
    dec = {"alpha": 2, "block_size": 2, "mcmc_steps": 2}
    exact = await run_strategy(decode_request(eng, n=4, max_tokens=10, seed=3), {"strategy": "power", **dec})
    early = await run_strategy(
        decode_request(eng, n=4, max_tokens=10, seed=3), {"strategy": "power", **{**dec, "early_stop": True}}
    )
    assert exact.metadata["blocks"] == 5
    assert early.metadata["blocks"] < 5
    assert early.metadata["tokens_generated"] < exact.metadata["tokens_generated"]


async def test_empty_prompt_and_full_context_are_param_errors():
    eng = ToyEngine(ToyModel(), max_context=8)
    strategy, params = parse_decoding({"strategy": "power"})
    with pytest.raises(ParamError) as e:
        await strategy.run(DecodeRequest(prompt=[], settings=SamplingSettings(), engine=eng), params)
    assert e.value.param == "prompt"
    with pytest.raises(ParamError) as e:
        await strategy.run(DecodeRequest(prompt=[0] * 8, settings=SamplingSettings(), engine=eng), params)
    assert e.value.param == "prompt"


@pytest.mark.parametrize("method", ["mh", "smc"])
async def test_hf_engine_smoke(hf_engine, method, decode_request, run_strategy):
    dec = {"method": method, "alpha": 4}
    dec |= {"block_size": 4, "mcmc_steps": 2} if method == "mh" else {"particles": 4, "resample_every": 4}
    a = await run_strategy(decode_request(hf_engine, n=2, max_tokens=8, seed=3), {"strategy": "power", **dec})
    assert len(a.completions) == 2
    for c in a.completions:
        assert 1 <= len(c.tokens) <= 8 and len(c.logp) == len(c.tokens)
        assert c.finish_reason in ("stop", "length")
    m = a.metadata
    assert m["tokens_generated"] == a.completion_tokens > sum(len(c.tokens) for c in a.completions)
    assert m["forward_passes"] > 0
    if method == "mh":
        assert len(m["acceptance_rate_per_block"]) == 2
        # proposals fork from cuts of earlier samples: their prefixes come from the KV cache
        assert hf_engine.stats.prefix_hit_tokens > 0
    else:
        assert m["ess_trace"]
    b = await run_strategy(decode_request(hf_engine, n=2, max_tokens=8, seed=3), {"strategy": "power", **dec})
    assert [c.tokens for c in a.completions] == [c.tokens for c in b.completions]


@pytest.mark.parametrize(
    "decoding, n, limit, field",
    [
        ({"method": "smc", "particles": 64, "proposal": "lookahead", "lookahead_k": 8, "lookahead_m": 8}, 2, 4096,
         "decoding.lookahead_m"),
        ({"proposals": 4, "proposal": "lookahead", "lookahead_k": 4, "lookahead_m": 4}, 8, 500, "decoding.lookahead_m"),
        ({"method": "lookahead", "block_size": 1, "lookahead_k": 8, "lookahead_m": 8}, 10, 600, "decoding.lookahead_m"),
        ({"method": "lookahead", "lookahead_candidates": 64}, 10, 600, "decoding.lookahead_candidates"),
        ({"method": "smc", "particles": 64}, 10, 600, "n"),
    ],
)
def test_lookahead_budget_beyond_max_sequences_is_a_400(toy_engine, decoding, n, limit, field):
    strategy, params = parse_decoding({"strategy": "power", **decoding})
    req = DecodeRequest(prompt=[0], settings=SamplingSettings(n=n, max_tokens=4), engine=toy_engine,
                        options=StrategyOptions(max_sequences=limit))
    with pytest.raises(ParamError) as e:
        strategy.check(req, params)
    assert e.value.param == field and str(limit) in e.value.message


def test_p_rollouts_with_truncation_are_a_400(toy_engine):
    strategy, params = parse_decoding({"strategy": "power", "proposal": "lookahead", "lookahead_rollout": "p"})
    ok = DecodeRequest(prompt=[0], settings=SamplingSettings(max_tokens=4), engine=toy_engine)
    strategy.check(ok, params)
    bad = DecodeRequest(prompt=[0], settings=SamplingSettings(max_tokens=4, top_k=2), engine=toy_engine)
    with pytest.raises(ParamError) as e:
        strategy.check(bad, params)
    assert e.value.param == "decoding.lookahead_rollout"


async def test_too_many_sequences_per_request_is_a_400(toy_engine):
    strategy, params = parse_decoding({"strategy": "power", "method": "smc", "particles": 1024})
    req = DecodeRequest(prompt=[0], settings=SamplingSettings(n=8, max_tokens=4), engine=toy_engine)
    with pytest.raises(ParamError) as e:
        await strategy.run(req, params)
    assert e.value.param == "n" and "particles" in e.value.message
