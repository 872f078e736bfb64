"""One conformance suite for every engine behind the Engine protocol."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest

from temper.decoding.engine import ContextLengthError, Engine, SampleSpec


@pytest.fixture(params=["toy", "hf", pytest.param("vllm", marks=pytest.mark.vllm)])
def engine(request, toy_engine, tiny_model_dir):
    if request.param == "toy":
        return toy_engine
    if request.param == "vllm":
        eng = request.getfixturevalue("vllm_engine")  # shared by the session: leave it as found
        eng.tier = eng.default_tier
        return eng
    from temper.decoding.engines.hf import HFEngine

    return HFEngine.from_pretrained(str(tiny_model_dir), device="cpu", dtype="float32")


def prompt_of(engine) -> tuple[int, ...]:
    return tuple(engine.tokenizer.apply_chat_template([{"role": "user", "content": "abc"}]))


def test_protocol_attributes(engine):
    assert isinstance(engine, Engine)
    assert engine.eos_ids and all(isinstance(t, int) for t in engine.eos_ids)
    assert engine.max_context > 8
    ids = engine.tokenizer.encode("abc")
    assert engine.tokenizer.decode(ids) == "abc"


async def test_sample_shapes_and_log_w_identity(engine):
    specs = [SampleSpec(prompt_of(engine), max_new_tokens=6, alpha=a, seed=i) for i, a in enumerate([1.0, 2.0, 4.0])]
    out = await engine.sample(specs)
    assert len(out) == 3
    for spec, s in zip(specs, out, strict=True):
        T = len(s.tokens)
        assert 1 <= T <= 6
        for arr in (s.logp, s.logq, s.log_w):
            assert arr.dtype == np.float32 and arr.shape == (T,)
        np.testing.assert_allclose(s.log_w, spec.alpha * s.logp - s.logq, atol=1e-4)
        assert np.all(s.log_w <= 1e-5)  # log Z of p^alpha is <= 0 for alpha >= 1
        assert np.all(s.logp <= 0)
        assert s.finish_reason in ("stop", "length")
        if s.finish_reason == "stop":
            assert s.tokens[-1] in engine.eos_ids
        else:
            assert T == 6


async def test_seeds_reproducible_and_distinct(engine):
    p = prompt_of(engine)
    a = await engine.sample([SampleSpec(p, 8, seed=123), SampleSpec(p, 8, seed=124)])
    b = await engine.sample([SampleSpec(p, 8, seed=123)])
    assert a[0].tokens == b[0].tokens
    np.testing.assert_allclose(a[0].logp, b[0].logp, atol=1e-5)
    c = await engine.sample([SampleSpec(p, 8, seed=s) for s in range(8)])
    assert len({tuple(x.tokens) for x in c}) > 1


async def test_stop_ids_honoured(engine):
    p = prompt_of(engine)
    first = (await engine.sample([SampleSpec(p, 4, seed=5, stop_ids=())]))[0]
    tok = first.tokens[1]
    stopped = (await engine.sample([SampleSpec(p, 4, seed=5, stop_ids=(tok,))]))[0]
    cut = first.tokens.index(tok) + 1
    assert stopped.tokens == first.tokens[:cut]
    assert stopped.finish_reason == "stop"


async def test_greedy_is_argmax(engine):
    p = prompt_of(engine)
    out = await engine.sample([SampleSpec(p, 5, alpha=math.inf, seed=s, stop_ids=()) for s in range(3)])
    assert out[0].tokens == out[1].tokens == out[2].tokens
    scored = (await engine.score([list(p) + out[0].tokens], start=len(p), top_k=1))[0]
    assert scored.top_ids[:, 0].tolist() == out[0].tokens
    np.testing.assert_allclose(out[0].logq, 0.0)


async def test_score_matches_sample_logp(engine):
    p = prompt_of(engine)
    s = (await engine.sample([SampleSpec(p, 6, alpha=2.0, seed=3, top_logprobs=3)]))[0]
    sc = (await engine.score([list(p) + s.tokens], start=len(p), top_k=3))[0]
    np.testing.assert_allclose(sc.logp, s.logp, atol=1e-4)
    np.testing.assert_allclose(sc.top_logps, s.top_logps, atol=1e-4)
    assert sc.top_ids.tolist() == s.top_ids.tolist()


async def test_top_p_and_top_k_restrict_support(engine):
    p = prompt_of(engine)
    out = await engine.sample([SampleSpec(p, 4, top_k=1, seed=s, stop_ids=()) for s in range(3)])
    greedy = await engine.sample([SampleSpec(p, 4, alpha=math.inf, stop_ids=())])
    assert all(o.tokens == greedy[0].tokens for o in out)
    np.testing.assert_allclose(out[0].logq, 0.0, atol=1e-6)  # one kept token: q = 1


async def test_concurrent_calls_and_cancellation(engine):
    p = prompt_of(engine)
    results = await asyncio.gather(*[engine.sample([SampleSpec(p, 5, seed=i)]) for i in range(6)])
    assert all(len(r) == 1 and 1 <= len(r[0].tokens) <= 5 for r in results)
    task = asyncio.ensure_future(engine.sample([SampleSpec(p, 200, seed=1, stop_ids=())]))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    after = await engine.sample([SampleSpec(p, 3, seed=2)])  # still serving
    assert len(after[0].tokens) >= 1


async def test_on_token_can_stop_a_sequence(engine):
    p = prompt_of(engine)
    seen: list[tuple[int, int]] = []

    def cb(i, draw):
        seen.append((i, draw.token))
        assert draw.logp <= 0
        return len([s for s in seen if s[0] == i]) < 3

    out = await engine.sample([SampleSpec(p, 10, seed=1, stop_ids=()), SampleSpec(p, 10, seed=2, stop_ids=())], cb)
    assert [len(o.tokens) for o in out] == [3, 3]
    assert all(o.finish_reason == "stop" for o in out)


async def test_context_limit(engine):
    too_long = tuple([1] * engine.max_context)
    with pytest.raises(ContextLengthError):
        await engine.sample([SampleSpec(too_long, 1)])


def test_bad_specs_name_the_field():
    with pytest.raises(ValueError, match="max_new_tokens"):
        SampleSpec((1,), 0)
    with pytest.raises(ValueError, match="alpha"):
        SampleSpec((1,), 1, alpha=float("nan"))
    with pytest.raises(ValueError, match="top_p"):
        SampleSpec((1,), 1, top_p=0.0)
    with pytest.raises(ValueError, match="prefix"):
        SampleSpec((), 1)


async def test_score_rejects_bad_starts(engine):
    with pytest.raises(ValueError, match="start"):
        await engine.score([[1, 2, 3]], start=0)
    with pytest.raises(ValueError, match="start"):
        await engine.score([[1, 2, 3], [1, 2]], start=[1])
    with pytest.raises(ContextLengthError):
        await engine.score([[1] * (engine.max_context + 1)], start=1)


async def test_token_draws_stream_log_w_and_top_alternatives(engine):
    """TokenDraw carries the same log_w (and top alternatives) the Sample reports: strategies
    decide on streamed values (power MH's early rejection, look-ahead pauses)."""
    p = prompt_of(engine)
    seen: dict[int, list] = {0: [], 1: []}

    def cb(i, draw):
        seen[i].append(draw)
        return True

    specs = [SampleSpec(p, 6, alpha=a, seed=9, stop_ids=(), top_logprobs=3) for a in (1.0, 4.0)]
    out = await engine.sample(specs, cb)
    for i, s in enumerate(out):
        draws = seen[i]
        assert [d.token for d in draws] == s.tokens
        np.testing.assert_allclose([d.log_w for d in draws], s.log_w, atol=1e-6)
        np.testing.assert_allclose([d.logp for d in draws], s.logp, atol=1e-6)
        np.testing.assert_array_equal(np.stack([d.top_ids for d in draws]), s.top_ids)
        # the best alternative is at least the drawn token (1e-4: vLLM's alternatives come from a
        # scoring pass, its logp from the decode pass; fp32 of two passes differs by ~1e-5)
        assert all(d.top_logps[0] >= d.logp - 1e-4 for d in draws)
