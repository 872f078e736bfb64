"""The Rollouts API in-process: prompts in every form, the sampled distribution's log-probs,
strategies, scoring, and every bad input as a clear error before anything is generated."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from pydantic import ValidationError

from temper.decoding.errors import ParamError
from temper.training_adapters.prompt_input import PromptError, as_prompt, as_prompts
from temper.training_adapters.rollout import RolloutConfig, RolloutGroup
from temper.training_adapters.rollouts import Rollouts
from temper.training_adapters.transport import gather_all

CHAT = [{"role": "user", "content": "What is 2+3?"}]


@pytest.fixture
def rollouts(hf_engine):
    r = Rollouts.local({"policy": hf_engine})
    yield r
    r.close()


# ---------------------------------------------------------------- prompts and settings


@pytest.mark.parametrize(
    "value, match",
    [
        ("", r"prompts\[0\]: empty text"),
        ([], r"prompts\[0\]: empty list"),
        ([1, -2], r"prompts\[0\]\[1\]: token ids must be integers >= 0"),
        ([1, True], r"prompts\[0\]\[1\]"),
        ([{"role": "user"}], r"prompts\[0\]\[0\]\.content: must be a string"),
        ([{"role": "user", "content": "x", "tool": 1}], r"unknown message field\(s\) tool"),
        ([{"role": "user", "content": "x"}, 3], r"mixes chat messages"),
        ({"role": "user", "content": "x"}, r"one chat message; a conversation is a list"),
        (3.5, r"must be text, a list of token ids or a list of chat messages, got float"),
    ],
)
def test_bad_prompts_name_where(value, match):
    with pytest.raises(PromptError, match=match):
        as_prompts([value])


def test_prompt_lists():
    with pytest.raises(PromptError, match=r"a list of ints is one token-id prompt"):
        as_prompts([1, 2, 3])
    with pytest.raises(PromptError, match="must be a list of prompts"):
        as_prompts("hello")
    kinds = as_prompts(["a", [1, 2], CHAT])
    assert kinds[0].text == "a" and kinds[1].token_ids == (1, 2) and kinds[2].messages[0]["content"] == "What is 2+3?"
    assert as_prompt(CHAT).question == "What is 2+3?" and as_prompt([1]).question is None


def test_rollout_config_checks():
    with pytest.raises(ValidationError, match="max_tokens: required"):
        RolloutConfig(n=2)
    with pytest.raises(ValidationError, match="Extra inputs"):
        RolloutConfig(max_tokens=4, temprature=1.0)
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        RolloutConfig(max_tokens=4, n=0)
    with pytest.raises(ValidationError, match="decoding.strategy: must be a string"):
        RolloutConfig(max_tokens=4, decoding={"strategy": 3})
    cfg = RolloutConfig(max_tokens=4, temperature=0.5)
    assert cfg.sampling_fields() == {"max_tokens": 4, "temperature": 0.5} and cfg.count == 1


# ---------------------------------------------------------------- generation


def test_text_ids_and_chat_prompts(rollouts, hf_engine):
    tok = hf_engine.tokenizer
    groups = rollouts.generate(["hello", [5, 6, 7], CHAT], n=3, max_tokens=6, seed=1)
    assert [g.prompt_token_ids for g in groups] == [tok.encode("hello"), [5, 6, 7], tok.apply_chat_template(CHAT)]
    flat = [(g, r) for g in groups for r in g.rollouts]
    for g, r in flat:
        assert g.model == "policy" and g.weight_version == 0 and len(g.rollouts) == 3
        assert 1 <= len(r.token_ids) <= 6 and r.finish_reason in ("stop", "length")
        assert r.logprobs is not None and r.logprobs.dtype == np.float32 and len(r.logprobs) == len(r.token_ids)
        assert r.text == tok.decode(r.token_ids)
    # temperature 1, no top-k/top-p: the sampled distribution is the model's own
    seqs = [g.prompt_token_ids + r.token_ids for g, r in flat]
    scored = rollouts.score(seqs, [len(g.prompt_token_ids) for g, _ in flat])
    for (_, r), sc in zip(flat, scored, strict=True):
        np.testing.assert_allclose(r.logprobs, sc.logp, atol=1e-4)


def test_tempered_logprobs_are_the_sampled_distributions(rollouts, hf_engine):
    """At temperature 1/2, log q(x) = 2·log p(x) − log Σ_v p(v)², from the full distribution."""
    (g,) = rollouts.generate(["hello"], n=3, max_tokens=5, temperature=0.5, seed=2)
    vocab = hf_engine.tokenizer.vocab_size
    P = len(g.prompt_token_ids)
    full = rollouts.score([g.prompt_token_ids + r.token_ids for r in g.rollouts], P, top_k=vocab)
    for r, sc in zip(g.rollouts, full, strict=True):
        log_z = np.logaddexp.reduce(2.0 * sc.top_logps.astype(np.float64), axis=-1)
        want = 2.0 * sc.logp - log_z
        np.testing.assert_allclose(r.logprobs, want, atol=1e-4)
        assert not np.allclose(r.logprobs, sc.logp, atol=1e-2)


def test_seeded_rollouts_repeat_and_strategies_ride_along(rollouts):
    a = rollouts.generate(["hi"], n=2, max_tokens=5, seed=9)
    b = rollouts.generate(["hi"], n=2, max_tokens=5, seed=9)
    assert [r.token_ids for r in a[0].rollouts] == [r.token_ids for r in b[0].rollouts]
    (p,) = rollouts.generate(["hi"], n=2, max_tokens=5, seed=9, decoding={"strategy": "power", "alpha": 2.0})
    assert p.metadata["strategy"] == "power" and len(p.rollouts) == 2
    assert all(r.logprobs is None for r in p.rollouts)  # not drawn token by token from one q


def test_group_json_round_trip(rollouts):
    (g,) = rollouts.generate(["hi"], n=2, max_tokens=4, seed=1)
    back = RolloutGroup.from_json(g.to_json())
    assert back.prompt_token_ids == g.prompt_token_ids and back.weight_version == g.weight_version
    for x, y in zip(back.rollouts, g.rollouts, strict=True):
        assert x.token_ids == y.token_ids and np.array_equal(x.logprobs, y.logprobs)  # float32-exact


@pytest.mark.parametrize(
    "prompts, fields, error, match",
    [
        (["hi"], {"model": "nope"}, ParamError, r"model: unknown model 'nope'; loaded: policy"),
        (["hi", [1, 99999]], {}, PromptError, r"prompts\[1\]: token id 99999 is outside the vocabulary"),
        (["hi", "x" * 5000], {}, PromptError, r"prompts\[1\]: 5000 tokens do not fit the context"),
        (["hi"], {"decoding": {"strategy": "nope"}}, ParamError, r"decoding.strategy: unknown strategy 'nope'"),
        (["hi"], {"decoding": {"strategy": "power", "alpha": -1}}, ParamError, r"decoding.alpha"),
    ],
)
def test_bad_requests_fail_before_generating(rollouts, hf_engine, prompts, fields, error, match):
    with pytest.raises(error, match=match):
        rollouts.generate(prompts, max_tokens=4, **fields)
    assert hf_engine.stats.generated_tokens == 0


def test_score_checks_token_ids(rollouts):
    with pytest.raises(PromptError, match=r"sequences\[0\]: token id -1"):
        rollouts.score([[1, -1]])


# ---------------------------------------------------------------- plumbing


def test_background_loop_refuses_reentry_and_use_after_close(hf_engine):
    r = Rollouts.local(hf_engine)

    async def inner():
        return r.run(asyncio.sleep(0))

    with pytest.raises(RuntimeError, match="inside the rollouts loop"):
        r.run(inner())
    r.close()
    with pytest.raises(RuntimeError, match="closed"):
        r.generate(["hi"], max_tokens=2)


async def test_gather_all_raises_the_first_failure_and_cancels_the_rest():
    cancelled = []

    async def slow():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def boom():
        raise KeyError("first")

    with pytest.raises(KeyError, match="first"):
        await gather_all([slow(), boom()])
    assert cancelled == [True]
    assert await gather_all([asyncio.sleep(0, result=1), asyncio.sleep(0, result=2)]) == [1, 2]


def test_in_process_weight_updates_and_frozen_models(tiny_model_dir, second_model_dir):
    from temper.decoding.engines.hf import HFEngine

    load = lambda p, name: HFEngine.from_pretrained(str(p), name=name, device="cpu", dtype="float32")
    with pytest.raises(ValueError, match="frozen: unknown model"):
        Rollouts.local({"policy": load(tiny_model_dir, "policy")}, frozen=["anchor"])
    r = Rollouts.local(
        {
            "policy": load(tiny_model_dir, "policy"),
            "anchor": load(tiny_model_dir, "anchor"),
            "new": load(second_model_dir, "new"),
        },
        frozen=["anchor"],
    )
    try:
        seq = [[5, 6, 7, 8, 9]]
        assert r.update_weights(second_model_dir, model="policy") == 1
        (g,) = r.generate(["hi"], max_tokens=3, model="policy")
        assert g.weight_version == 1
        np.testing.assert_allclose(r.score(seq, model="policy")[0].logp, r.score(seq, model="new")[0].logp, atol=1e-5)
        with pytest.raises(ParamError, match="'anchor' is frozen"):
            r.update_weights(second_model_dir, model="anchor")
        with pytest.raises(ParamError, match="does not exist"):
            r.update_weights(second_model_dir / "missing", model="policy")
    finally:
        r.close()
