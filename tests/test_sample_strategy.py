"""The `sample` strategy: n as one batch, seeds, stop strings, parameter errors."""

from __future__ import annotations

import pytest

from temper.decoding.errors import ParamError
from temper.decoding.strategies.base import DecodeRequest
from temper.decoding.strategies.registry import get_strategy, parse_decoding
from temper.decoding.strategies.settings import SamplingSettings


async def test_default_decoding_is_sample_and_n_is_one_call(toy_engine, decode_request):
    strategy, params = parse_decoding(None)
    assert strategy.name == "sample"
    res = await strategy.run(decode_request(toy_engine, n=4, max_tokens=5, seed=1), params)
    assert len(res.completions) == 4 and toy_engine.calls == 1
    assert res.completion_tokens == sum(len(c.tokens) for c in res.completions)


async def test_seeded_requests_reproduce(hf_engine, decode_request):
    strategy, params = parse_decoding({"strategy": "sample"})
    a = await strategy.run(decode_request(hf_engine, n=3, max_tokens=8, seed=7), params)
    b = await strategy.run(decode_request(hf_engine, n=3, max_tokens=8, seed=7), params)
    assert [c.tokens for c in a.completions] == [c.tokens for c in b.completions]
    assert len({tuple(c.tokens) for c in a.completions}) > 1  # the n choices differ


async def test_decoding_fields_override_request_fields(hf_engine, decode_request):
    strategy, params = parse_decoding({"strategy": "sample", "temperature": 0, "max_tokens": 4})
    res = await strategy.run(decode_request(hf_engine, n=2, max_tokens=50, seed=3, temperature=1.0), params)
    assert res.completions[0].tokens == res.completions[1].tokens  # greedy
    assert all(len(c.tokens) <= 4 for c in res.completions)


async def test_stop_string_cuts_text_and_ends_sampling(hf_engine, decode_request):
    strategy, params = parse_decoding(None)
    free = await strategy.run(decode_request(hf_engine, max_tokens=30, seed=11, stop_token_ids=[]), params)
    text = hf_engine.tokenizer.decode(free.completions[0].tokens)
    stop = text[5:7]
    assert stop and stop in text
    res = await strategy.run(decode_request(hf_engine, max_tokens=30, seed=11, stop=[stop]), params)
    c = res.completions[0]
    assert c.finish_reason == "stop"
    assert c.text == text[: text.index(stop)]
    assert len(c.tokens) < 30


def test_bad_params_name_the_field():
    with pytest.raises(ParamError) as e:
        parse_decoding({"strategy": "nope"})
    assert e.value.param == "decoding.strategy"
    with pytest.raises(ParamError) as e:
        parse_decoding({"strategy": "sample", "temperature": -1})
    assert e.value.param == "decoding.temperature"
    with pytest.raises(ParamError) as e:
        parse_decoding({"strategy": "sample", "bogus": 1})
    assert e.value.param == "decoding.bogus"
    assert get_strategy("sample").streams_tokens


async def test_prompt_filling_the_context_is_a_param_error(toy_engine):
    strategy, params = parse_decoding(None)
    req = DecodeRequest(prompt=[0] * toy_engine.max_context, settings=SamplingSettings(), engine=toy_engine)
    with pytest.raises(ParamError) as e:
        await strategy.run(req, params)
    assert e.value.param == "prompt"


async def test_completions_carry_the_sampled_distributions_log_probs(toy_engine, decode_request):
    """logq is the log-prob under q ∝ p^α (temperature 1/α) of each token; logp is the raw one."""
    import numpy as np

    strategy, params = parse_decoding(None)
    req = decode_request(toy_engine, n=3, max_tokens=4, seed=5, temperature=0.5)
    res = await strategy.run(req, params)
    model = toy_engine.model
    for c in res.completions:
        assert c.logq is not None and len(c.logq) == len(c.tokens) == len(c.logp)
        ctx = tuple(req.prompt)
        for tok, lq, lp in zip(c.tokens, c.logq, c.logp, strict=True):
            raw = model.logprobs(ctx)
            tempered = 2.0 * raw - np.logaddexp.reduce(2.0 * raw)
            assert lp == pytest.approx(raw[tok], abs=1e-5)
            assert lq == pytest.approx(tempered[tok], abs=1e-5)
            ctx += (tok,)
