"""self_consistency: majority vote over extracted answers, returning a winning rollout."""

from __future__ import annotations

from collections import Counter

import pytest

from temper.decoding import answers as A
from temper.decoding.engines.toy import ToyEngine, ToyModel
from temper.decoding.errors import ParamError
from temper.decoding.strategies.base import DecodeRequest
from temper.decoding.strategies.registry import parse_decoding
from temper.decoding.strategies.settings import SamplingSettings

EOS = 10


class DigitTokenizer:
    """Token i < 10 prints as the digit i; 10 is EOS."""

    vocab_size = 11
    eos_ids = (EOS,)

    def encode(self, text, *, add_special_tokens=True):
        return [int(c) for c in text if c.isdigit()] or [0]

    def decode(self, ids, *, skip_special_tokens=True):
        return "".join(str(i) for i in ids if i != EOS)

    def apply_chat_template(self, messages, *, add_generation_prompt=True):
        return self.encode("".join(m["content"] for m in messages))


def digit_engine(first: dict[int, float]) -> ToyEngine:
    """Every response is one digit then EOS, the digit drawn from `first`."""
    probs = [first.get(d, 0.0) for d in range(10)] + [0.0]
    table = {(): probs, **{(d,): [0.0] * 10 + [1.0] for d in range(10)}}
    eng = ToyEngine(ToyModel(vocab_size=11, table=table, prompt_len=1))
    eng.tokenizer = DigitTokenizer()
    return eng


async def test_majority_answer_wins_in_one_call(decode_request, run_strategy):
    eng = digit_engine({7: 0.6, 3: 0.3, 5: 0.1})
    res = await run_strategy(
        decode_request(eng, [0], seed=11, max_tokens=4),
        {"strategy": "self_consistency", "rollouts": 16, "return_rollouts": True},
    )
    m = res.metadata
    assert eng.calls == 1
    counts = Counter(a for a in m["answers"] if a is not None)
    assert m["votes"] == counts
    assert list(m["votes"].values()) == sorted(counts.values(), reverse=True)  # in rank order
    assert m["winner"] == counts.most_common(1)[0][0]
    chosen = res.completions[0]
    assert eng.tokenizer.decode(chosen.tokens) == m["winner"]
    assert chosen.metadata == {"rollout": m["chosen"][0], "answer": m["winner"], "votes": counts[m["winner"]]}
    assert m["rollouts"] == [eng.tokenizer.decode(eng.tokenizer.encode(a)) for a in m["answers"]]
    assert res.completion_tokens == eng.stats.generated_tokens == 32  # 16 × (digit + EOS)


async def test_votes_tie_broken_by_mean_logprob(decode_request, run_strategy):
    # 7 is likelier than 3, so on equal votes 7's rollouts have the higher mean log-prob
    eng = digit_engine({7: 0.55, 3: 0.45})
    for seed in range(40):
        res = await run_strategy(
            decode_request(eng, [0], max_tokens=4, seed=seed), {"strategy": "self_consistency", "rollouts": 4}
        )
        if list(res.metadata["votes"].values()) == [2, 2]:
            break
    else:
        pytest.fail("no seed gave a 2-2 tie")
    assert res.metadata["winner"] == "7"
    assert list(res.metadata["votes"]) == ["7", "3"]


async def test_n_returns_one_rollout_per_answer_then_fills(decode_request, run_strategy):
    eng = digit_engine({7: 0.5, 3: 0.3, 5: 0.2})
    res = await run_strategy(
        decode_request(eng, [0], seed=11, max_tokens=4, n=5), {"strategy": "self_consistency", "rollouts": 12}
    )
    m = res.metadata
    ranked = list(m["votes"])
    answers = [c.metadata["answer"] for c in res.completions]
    assert answers[: len(ranked)] == ranked  # the top answers in vote order, one rollout each
    assert len(res.completions) == 5 and len(set(m["chosen"])) == 5
    fill = [ranked.index(a) for a in answers[len(ranked) :]]
    assert fill == sorted(fill)  # then the other rollouts, by their answer's rank


async def test_n_above_rollouts_is_a_400(decode_request, run_strategy):
    eng = digit_engine({7: 1.0})
    with pytest.raises(ParamError) as err:
        await run_strategy(
            decode_request(eng, [0], seed=11, max_tokens=4, n=9), {"strategy": "self_consistency", "rollouts": 8}
        )
    assert err.value.param == "n" and eng.calls == 0


async def test_rollouts_without_answers_do_not_vote(toy_engine, run_strategy):
    # ToyEngine prints letters: no rollout has an answer; the most likely rollout comes back
    req = DecodeRequest(prompt=[0, 1], settings=SamplingSettings(seed=1, max_tokens=6), engine=toy_engine)
    res = await run_strategy(req, {"strategy": "self_consistency", "rollouts": 5})
    m = res.metadata
    assert m["winner"] is None and m["votes"] == {} and m["answers"] == [None] * 5
    assert m["chosen"][0] == max(range(5), key=lambda i: (m["scores"][i], -i))


async def test_extractors_are_pluggable_by_name(monkeypatch, decode_request, run_strategy):
    monkeypatch.setitem(A.EXTRACTORS, "parity", lambda t: "odd" if t and int(t[-1]) % 2 else "even")
    eng = digit_engine({7: 0.3, 3: 0.3, 4: 0.4})
    res = await run_strategy(
        decode_request(eng, [0], seed=11, max_tokens=4),
        {"strategy": "self_consistency", "rollouts": 10, "extractor": "parity"},
    )
    assert set(res.metadata["answers"]) <= {"odd", "even"}
    assert res.metadata["extractor"] == "parity"


@pytest.mark.parametrize(
    ("decoding", "param"),
    [
        ({"rollouts": 0}, "decoding.rollouts"),
        ({"rollouts": 65}, "decoding.rollouts"),
        ({"extractor": "nope"}, "decoding.extractor"),
        ({"inner": {"strategy": "self_consistency"}}, "decoding.inner.strategy"),
        ({"vote": "x"}, "decoding.vote"),
    ],
)
def test_bad_params_name_the_field(decoding, param):
    with pytest.raises(ParamError) as err:
        parse_decoding({"strategy": "self_consistency", **decoding})
    assert err.value.param == param
    if param == "decoding.extractor":
        assert "nope" in str(err.value) and "auto" in str(err.value)
