"""best_of_n: candidates in one call, ranked by the model's own log-probs."""

from __future__ import annotations

import numpy as np
import pytest

from temper.decoding.errors import ParamError
from temper.decoding.strategies.completion import Completion, fill_logprobs
from temper.decoding.strategies.registry import parse_decoding
from temper.decoding.strategies.rollouts import sequence_score


async def exact_scores(engine, prompt, completions):
    scored = await engine.score([prompt + c.tokens for c in completions], start=len(prompt))
    return [s.logp for s in scored]


async def test_picks_the_highest_mean_logprob_in_one_call(toy_engine, decode_request, run_strategy):
    req = decode_request(toy_engine, [0, 1], seed=5, max_tokens=10)
    res = await run_strategy(req, {"strategy": "best_of_n", "candidates": 6, "return_rollouts": True})
    assert toy_engine.calls == 1
    m = res.metadata
    assert len(m["scores"]) == 6 and len(m["rollouts"]) == 6
    assert m["chosen"] == [int(np.argmax(m["scores"]))]
    best = res.completions[0]
    ref = (await exact_scores(toy_engine, [0, 1], [best]))[0]
    assert m["scores"][m["chosen"][0]] == pytest.approx(float(np.mean(ref)), abs=1e-5)
    assert best.metadata["candidate"] == m["chosen"][0]
    assert res.completion_tokens == toy_engine.stats.generated_tokens == m["tokens_generated"]
    assert res.extra_prompt_tokens == 0  # the sampler's log-probs are used, nothing re-scored


async def test_n_returns_the_top_n_best_first(toy_engine, decode_request, run_strategy):
    res = await run_strategy(
        decode_request(toy_engine, [0, 1], seed=5, max_tokens=10, n=3), {"strategy": "best_of_n", "candidates": 8}
    )
    scores = res.metadata["scores"]
    order = sorted(range(8), key=lambda i: (-scores[i], i))
    assert res.metadata["chosen"] == order[:3]
    assert [c.metadata["candidate"] for c in res.completions] == order[:3]
    assert toy_engine.calls == 1


async def test_total_logprob_prefers_short_likely_answers(toy_engine, decode_request, run_strategy):
    res = await run_strategy(
        decode_request(toy_engine, [0, 1], seed=5, max_tokens=10),
        {"strategy": "best_of_n", "candidates": 8, "score": "total_logprob"},
    )
    cands = res.metadata["scores"]
    assert res.metadata["score"] == "total_logprob"
    assert res.metadata["chosen"] == [int(np.argmax(cands))]
    total = float(np.sum(res.completions[0].logp))
    assert cands[res.metadata["chosen"][0]] == pytest.approx(total, abs=1e-5)


async def test_candidates_without_logprobs_are_rescored_in_one_call(toy_engine, decode_request):
    req = decode_request(toy_engine, [0, 1], seed=5, max_tokens=10)
    comps = [
        Completion(tokens=[1, 2, 3], finish_reason="stop"),
        Completion(tokens=[2, 3], finish_reason="stop"),
        Completion(tokens=[0], finish_reason="length", logp=np.array([-0.25], dtype=np.float32)),
    ]
    ref = await exact_scores(toy_engine, [0, 1], comps[:2])
    calls, score = [], toy_engine.score

    async def counting_score(seqs, **kw):
        calls.append(len(seqs))
        return await score(seqs, **kw)

    toy_engine.score = counting_score
    rescored = await fill_logprobs(req.engine, req.prompt, comps)
    assert calls == [2]  # one call, for the two without log-probs
    np.testing.assert_allclose(comps[0].logp, ref[0])
    np.testing.assert_allclose(comps[1].logp, ref[1])
    assert comps[2].logp.tolist() == [-0.25]
    assert rescored == 5
    assert sequence_score(np.zeros(0)) == float("-inf")
    assert sequence_score(np.array([-1.0, -3.0])) == -2.0
    assert sequence_score(np.array([-1.0, -3.0]), "total_logprob") == -4.0


async def test_ties_go_to_the_earliest(toy_engine, decode_request, run_strategy):
    # greedy candidates are identical, so every score ties
    res = await run_strategy(
        decode_request(toy_engine, [0, 1], seed=5, max_tokens=10, temperature=0, n=2),
        {"strategy": "best_of_n", "candidates": 4},
    )
    assert len(set(res.metadata["scores"])) == 1
    assert res.metadata["chosen"] == [0, 1]


async def test_n_above_candidates_is_a_400(toy_engine, decode_request, run_strategy):
    with pytest.raises(ParamError) as err:
        await run_strategy(
            decode_request(toy_engine, [0, 1], seed=5, max_tokens=10, n=5), {"strategy": "best_of_n", "candidates": 4}
        )
    assert err.value.param == "n"
    assert toy_engine.calls == 0


@pytest.mark.parametrize(
    ("decoding", "param"),
    [
        ({"candidates": 0}, "decoding.candidates"),
        ({"candidates": 65}, "decoding.candidates"),
        ({"score": "vibes"}, "decoding.score"),
        ({"inner": {"strategy": "best_of_n"}}, "decoding.inner.strategy"),
        ({"inner": {"strategy": "sample", "top_p": 2}}, "decoding.inner.top_p"),
        ({"n": 2}, "decoding.n"),
    ],
)
def test_bad_params_name_the_field(decoding, param):
    with pytest.raises(ParamError) as err:
        parse_decoding({"strategy": "best_of_n", **decoding})
    assert err.value.param == param


async def test_inner_strategy_draws_the_candidates(toy_engine, decode_request, run_strategy):
    pytest.importorskip("temper.decoding.strategies.power")
    res = await run_strategy(
        decode_request(toy_engine, [0, 1], seed=5, max_tokens=10),
        {
            "strategy": "best_of_n",
            "candidates": 3,
            "inner": {"strategy": "power", "alpha": 2.0, "mcmc_steps": 1, "block_size": 4},
        },
    )
    assert res.metadata["inner"]["strategy"] == "power"
    assert len(res.metadata["scores"]) == 3
    assert res.completion_tokens == toy_engine.stats.generated_tokens
