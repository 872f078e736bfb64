"""Synthesis (Compute as Teacher) as a decoding strategy, and its prompt builder."""

from __future__ import annotations

import pytest
from scripted_engine import ByteTokenizer

from temper.decoding.engines.toy import ToyEngine, ToyModel
from temper.decoding.errors import ParamError
from temper.decoding.strategies.base import DecodeRequest
from temper.decoding.strategies.registry import parse_decoding
from temper.decoding.strategies.settings import SamplingSettings
from temper.decoding.synthesis_prompt import (
    CUT_MARKER,
    PRESETS,
    build_prompt,
    check_template,
    even_caps,
    render,
)

QUESTION = "What is 17 times 23? Show your work."


def ask(engine) -> list[int]:
    return engine.tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}])


class Recording(ToyEngine):
    """ToyEngine that keeps the specs of every sample() call."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches = []

    async def sample(self, specs, on_token=None):
        self.batches.append(list(specs))
        return await super().sample(specs, on_token)


def byte_engine(name="policy", seed=0, eos_logit=2.0, max_context=4096):
    eng = Recording(ToyModel(vocab_size=257, seed=seed, eos_logit=eos_logit), name=name, max_context=max_context)
    eng.tokenizer = ByteTokenizer()
    return eng


def contains(seq, sub):
    return any(list(seq[i : i + len(sub)]) == list(sub) for i in range(len(seq) - len(sub) + 1))


# ---------------------------------------------------------------- the anchor prompt


async def test_anchor_never_sees_the_question_unless_asked(decode_request, run_strategy):
    eng = byte_engine()
    q_ids = eng.tokenizer.encode(QUESTION)
    res = await run_strategy(
        decode_request(eng, ask(eng), prompt_text=QUESTION, seed=7, max_tokens=16),
        {"strategy": "synthesis", "rollouts": 4, "return_rollouts": True},
    )
    rollout_call, anchor_call = eng.batches
    assert all(contains(s.prefix, q_ids) for s in rollout_call)  # the policy does see it
    anchor_ids = anchor_call[0].prefix
    assert not contains(anchor_ids, q_ids)
    for word in ("17 times 23", "What is"):  # nor any recognisable piece of it
        assert not contains(anchor_ids, eng.tokenizer.encode(word))
    # the metadata's prompt is exactly what the anchor was given
    assert res.metadata["anchor_prompt"] == eng.tokenizer.decode(anchor_ids)
    assert res.metadata["anchor_prompt_tokens"] == len(anchor_ids)
    for text in res.metadata["rollouts"]:
        assert text.strip() in res.metadata["anchor_prompt"]

    eng = byte_engine()
    await run_strategy(
        decode_request(eng, ask(eng), prompt_text=QUESTION, seed=7, max_tokens=16),
        {"strategy": "synthesis", "rollouts": 4, "include_question": True},
    )
    assert contains(eng.batches[1][0].prefix, q_ids)


async def test_rollouts_are_one_call_and_n_syntheses_share_one_set(decode_request, run_strategy):
    policy, anchor = byte_engine("policy"), byte_engine("judge", seed=3)
    req = decode_request(
        policy,
        ask(policy),
        prompt_text=QUESTION,
        seed=7,
        max_tokens=16,
        engines={"policy": policy, "judge": anchor},
        n=3,
    )
    res = await run_strategy(req, {"strategy": "synthesis", "rollouts": 5, "anchor_model": "judge"})
    assert policy.calls == 1 and len(policy.batches[0]) == 5
    assert anchor.calls == 1 and len(anchor.batches[0]) == 3
    assert len({s.prefix for s in anchor.batches[0]}) == 1  # n syntheses of one rollout set
    assert len(res.completions) == 3
    assert res.metadata["anchor_model"] == "judge"
    assert all(c.text is None for c in res.completions)  # same tokenizer: ids are portable


class WideTokenizer(ByteTokenizer):
    vocab_size = 300  # another vocabulary, as far as the strategy can tell


async def test_anchor_with_another_tokenizer_returns_text_and_refuses_logprobs(decode_request, run_strategy):
    policy, anchor = byte_engine("policy"), byte_engine("other", seed=3)
    anchor.tokenizer = WideTokenizer()
    engines = {"policy": policy, "other": anchor}
    res = await run_strategy(
        decode_request(policy, ask(policy), prompt_text=QUESTION, seed=7, max_tokens=16, engines=engines),
        {"strategy": "synthesis", "rollouts": 2, "anchor_model": "other"},
    )
    assert all(c.text == anchor.tokenizer.decode(c.tokens) for c in res.completions)
    with pytest.raises(ParamError) as err:
        await run_strategy(
            decode_request(
                policy, ask(policy), prompt_text=QUESTION, seed=7, max_tokens=16, engines=engines, logprobs=True
            ),
            {"strategy": "synthesis", "rollouts": 2, "anchor_model": "other"},
        )
    assert err.value.param == "logprobs"
    assert policy.calls == 1  # only the first request sampled


async def test_same_model_anchor_is_two_calls_and_usage_counts_everything(decode_request, run_strategy):
    eng = byte_engine()
    res = await run_strategy(
        decode_request(eng, ask(eng), prompt_text=QUESTION, seed=7, max_tokens=16, n=2),
        {"strategy": "synthesis", "rollouts": 6},
    )
    assert eng.calls == 2
    rollout_tokens = eng.stats.generated_tokens - sum(len(c.tokens) for c in res.completions)
    assert res.metadata["rollout_tokens_generated"] == rollout_tokens
    assert res.completion_tokens == eng.stats.generated_tokens == res.metadata["tokens_generated"]
    assert res.extra_prompt_tokens == len(eng.batches[1][0].prefix)
    assert "rollouts" not in res.metadata and "anchor_prompt" not in res.metadata
    assert len(res.metadata["answers"]) == 6 and res.metadata["truncated"] is False


async def test_anchor_uses_request_settings_and_rollouts_temperature_one(decode_request, run_strategy):
    eng = byte_engine()
    await run_strategy(
        decode_request(eng, ask(eng), prompt_text=QUESTION, seed=7, temperature=0.5, top_p=0.9, max_tokens=5),
        {"strategy": "synthesis", "rollouts": 3},
    )
    rollouts, anchor = eng.batches
    assert all(s.alpha == 1.0 and s.top_p == 0.9 and s.max_new_tokens == 5 for s in rollouts)
    assert all(s.alpha == 2.0 and s.top_p == 0.9 and s.max_new_tokens == 5 for s in anchor)


async def test_seeded_requests_repeat(decode_request, run_strategy):
    outs = []
    for _ in range(2):
        res = await run_strategy(
            decode_request(byte_engine(), ask(byte_engine()), prompt_text=QUESTION, seed=7, max_tokens=16, n=2),
            {"strategy": "synthesis", "rollouts": 3, "return_rollouts": True},
        )
        outs.append(([c.tokens for c in res.completions], res.metadata["rollouts"]))
    assert outs[0] == outs[1]


async def test_truncation_is_even_and_fits_the_anchor(decode_request, run_strategy):
    policy = byte_engine(eos_logit=-20.0)  # no early EOS: every rollout is max_tokens long
    anchor = byte_engine("small", max_context=200)
    req = decode_request(
        policy, ask(policy), prompt_text=QUESTION, seed=7, engines={"policy": policy, "small": anchor}, max_tokens=40
    )
    res = await run_strategy(
        req,
        {
            "strategy": "synthesis",
            "rollouts": 4,
            "anchor_model": "small",
            "template": "R:{rollouts}",
            "return_rollouts": True,
        },
    )
    m = res.metadata
    assert m["truncated"] is True
    kept, lengths = m["rollout_tokens_kept"], m["rollout_tokens"]
    cut = [k for k, n in zip(kept, lengths, strict=True) if k < n]
    assert cut and max(cut) - min(cut) <= 1  # an even share each
    assert all(n <= min(cut) + 1 for k, n in zip(kept, lengths, strict=True) if k == n)
    prefix = anchor.batches[0][0].prefix
    assert len(prefix) + 40 <= 200  # room left for the answer
    assert m["anchor_prompt"].count(CUT_MARKER.strip()) == len(cut)


async def test_server_template_and_request_template(decode_request, run_strategy):
    eng = byte_engine()
    await run_strategy(
        decode_request(
            eng,
            ask(eng),
            prompt_text=QUESTION,
            seed=7,
            max_tokens=16,
            options={"synthesis_template": "SERVER {count}:{rollouts}"},
        ),
        {"strategy": "synthesis", "rollouts": 2},
    )
    assert eng.tokenizer.decode(eng.batches[1][0].prefix).startswith("<user>\nSERVER 2:### Response 1")
    eng = byte_engine()
    res = await run_strategy(
        decode_request(
            eng,
            ask(eng),
            prompt_text=QUESTION,
            seed=7,
            max_tokens=16,
            options={"synthesis_template": "SERVER {rollouts}"},
        ),
        {"strategy": "synthesis", "rollouts": 2, "template": "freeform", "return_rollouts": True},
    )
    assert "combines the strengths" in res.metadata["anchor_prompt"]


async def test_synthesis_over_power_rollouts(toy_engine, run_strategy):
    pytest.importorskip("temper.decoding.strategies.power")
    req = DecodeRequest(prompt=[0, 1], settings=SamplingSettings(seed=3, max_tokens=8), engine=toy_engine)
    inner = {"strategy": "power", "alpha": 2.0, "block_size": 4, "mcmc_steps": 2}
    res = await run_strategy(req, {"strategy": "synthesis", "rollouts": 3, "inner": inner, "return_rollouts": True})
    assert res.metadata["inner"]["strategy"] == "power"
    assert len(res.metadata["rollouts"]) == 3
    anchor_tokens = sum(len(c.tokens) for c in res.completions)
    # power's rejected proposals are part of what the request cost
    assert res.completion_tokens == res.metadata["rollout_tokens_generated"] + anchor_tokens
    assert res.completion_tokens == toy_engine.stats.generated_tokens


# ---------------------------------------------------------------- bad input → 400 naming the field


@pytest.mark.parametrize(
    ("decoding", "param"),
    [
        ({"rollouts": 0}, "decoding.rollouts"),
        ({"rollouts": 65}, "decoding.rollouts"),
        ({"extractor": "nope"}, "decoding.extractor"),
        ({"template": "no placeholder"}, "decoding.template"),
        ({"inner": {"strategy": "synthesis"}}, "decoding.inner.strategy"),
        ({"inner": {"strategy": "sample", "temprature": 1}}, "decoding.inner.temprature"),
        ({"inner": {"strategy": "sample", "n": 2}}, "decoding.inner.n"),
        ({"inner": {"strategy": "nope"}}, "decoding.inner.strategy"),
        ({"anchor": "x"}, "decoding.anchor"),
        ({"rollout_texts": []}, "decoding.rollout_texts"),
        ({"rollout_texts": ["a"] * 65}, "decoding.rollout_texts"),
        ({"rollout_texts": ["a", 3]}, "decoding.rollout_texts.1"),
        ({"rollout_texts": ["a", "b"], "rollouts": 3}, "decoding.rollouts"),
        ({"rollout_texts": ["a"], "inner": {"strategy": "sample"}}, "decoding.inner"),
    ],
)
def test_bad_params_name_the_field(decoding, param):
    with pytest.raises(ParamError) as err:
        parse_decoding({"strategy": "synthesis", **decoding})
    assert err.value.param == param
    assert str(err.value).startswith(param)


async def test_unknown_anchor_model_fails_before_any_sampling(decode_request, run_strategy):
    eng = byte_engine()
    with pytest.raises(ParamError) as err:
        await run_strategy(
            decode_request(eng, ask(eng), prompt_text=QUESTION, seed=7, max_tokens=16),
            {"strategy": "synthesis", "anchor_model": "gpt-9"},
        )
    assert err.value.param == "decoding.anchor_model" and "gpt-9" in str(err.value)
    assert eng.calls == 0


async def test_answer_room_that_cannot_fit_fails_before_any_sampling(decode_request, run_strategy):
    eng = byte_engine(max_context=200)
    with pytest.raises(ParamError) as err:
        await run_strategy(
            decode_request(eng, ask(eng), prompt_text=QUESTION, seed=7, max_tokens=150),
            {"strategy": "synthesis", "rollouts": 2},
        )  # the preset alone is ~600 bytes
    assert err.value.param == "max_tokens"
    assert eng.calls == 0


def test_bad_server_template_names_the_option():
    with pytest.raises(ParamError) as err:
        check_template("nothing here", "synthesis_template")
    assert err.value.param == "synthesis_template"


# ---------------------------------------------------------------- prompt builder pieces


def test_render_is_single_pass_and_leaves_other_braces():
    text = render(r"{count} tries: {rollouts} \boxed{} {question}", ["a {question}", "b {count}"])
    assert text == "2 tries: ### Response 1\na {question}\n\n### Response 2\nb {count} \\boxed{} "
    assert render("{rollouts}", ["x"], question="Q?").startswith("Problem:\nQ?\n\n")
    assert render("{question}|{rollouts}", ["x"], question="Q?") == "Q?|### Response 1\nx"
    for preset in PRESETS.values():
        assert "{rollouts}" in preset and "{question}" not in preset


@pytest.mark.parametrize(
    ("lengths", "budget", "want"),
    [
        ([5, 5], 20, [5, 5]),
        ([10, 10, 10], 15, [5, 5, 5]),
        ([2, 10, 10], 12, [2, 5, 5]),
        ([10, 10, 10], 16, [6, 5, 5]),
        ([3, 100], 50, [3, 47]),
        ([4, 4], 0, [0, 0]),
    ],
)
def test_even_caps(lengths, budget, want):
    assert even_caps(lengths, budget) == want


def test_build_prompt_fits_exactly_when_cut():
    tok = ByteTokenizer()
    rollouts = ["x" * 100, "y" * 10, "z" * 100]
    p = build_prompt(tok, rollouts, template="{rollouts}", max_context=160, answer_tokens=10)
    assert len(p.ids) <= 150 and p.truncated and p.kept[1] == 10
    assert p.ids == tok.apply_chat_template([{"role": "user", "content": p.text}])
    full = build_prompt(tok, rollouts, template="{rollouts}", max_context=10_000)
    assert not full.truncated and full.kept == full.lengths == [100, 10, 100]
    # no answer_tokens: room for an answer as long as the longest rollout, at most half the context
    assert len(build_prompt(tok, rollouts, template="{rollouts}", max_context=250).ids) == 150
    assert len(build_prompt(tok, ["x" * 600, "y"], template="{rollouts}", max_context=1000).ids) == 500


# ---------------------------------------------------------------- real model (HF engine)


async def test_hf_anchor_prompt_ids_never_hold_the_question(hf_engine, second_model_dir, run_strategy):
    from temper.decoding.engines.hf import HFEngine

    anchor = HFEngine.from_pretrained(str(second_model_dir), name="anchor", device="cpu", dtype="float32")
    seen = []
    orig = anchor.sample

    async def spy(specs, on_token=None):
        seen.extend(specs)
        return await orig(specs, on_token)

    anchor.sample = spy
    prompt = hf_engine.tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}])
    req = DecodeRequest(
        prompt=prompt,
        settings=SamplingSettings(seed=1, max_tokens=6),
        engine=hf_engine,
        engines={"policy": hf_engine, "anchor": anchor},
        prompt_text=QUESTION,
    )
    res = await run_strategy(
        req, {"strategy": "synthesis", "rollouts": 3, "anchor_model": "anchor", "return_rollouts": True}
    )
    q_ids = anchor.tokenizer.encode(QUESTION, add_special_tokens=False)
    assert len(seen) == 1 and not contains(seen[0].prefix, q_ids)
    assert res.metadata["anchor_prompt"] == anchor.tokenizer.decode(seen[0].prefix, skip_special_tokens=False)
    assert res.completion_tokens == res.metadata["tokens_generated"] > 0
    await anchor.close()


async def test_baselines_see_the_same_rollouts_for_the_same_seed(decode_request):
    texts = {}
    for name in ("synthesis", "best_of_n", "self_consistency"):
        count = {"best_of_n": "candidates"}.get(name, "rollouts")
        strategy, params = parse_decoding({"strategy": name, count: 4, "return_rollouts": True})
        res = await strategy.run(
            decode_request(byte_engine(), ask(byte_engine()), prompt_text=QUESTION, seed=7, max_tokens=16), params
        )
        texts[name] = res.metadata["rollouts"]
    assert texts["synthesis"] == texts["best_of_n"] == texts["self_consistency"]


# ---------------------------------------------------------------- given rollouts (CaT-RL)


async def test_given_rollouts_are_synthesised_without_drawing_any(decode_request, run_strategy):
    policy, anchor = byte_engine("policy"), byte_engine("anchor", seed=3)
    given = ["17 * 23 = 391, so \\boxed{391}", "I get \\boxed{381}", "\\boxed{391}"]
    req = decode_request(
        policy, ask(policy), prompt_text=QUESTION, seed=7, max_tokens=16, engines={"policy": policy, "anchor": anchor}
    )
    res = await run_strategy(
        req, {"strategy": "synthesis", "rollout_texts": given, "anchor_model": "anchor", "return_rollouts": True}
    )
    assert policy.calls == 0 and anchor.calls == 1  # nothing drawn: only the anchor samples
    anchor_prompt = anchor.batches[0][0].prefix
    for text in given:  # every given rollout is in the anchor's prompt, verbatim
        assert contains(anchor_prompt, anchor.tokenizer.encode(text))
    assert not contains(anchor_prompt, anchor.tokenizer.encode(QUESTION))
    meta = res.metadata
    assert meta["rollouts"] == given and meta["answers"] == ["391", "381", "391"]
    assert meta["votes"] == {"391": 2, "381": 1} and meta["rollout_tokens_generated"] == 0
    assert res.completion_tokens == sum(len(c.tokens) for c in res.completions)
