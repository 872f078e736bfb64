"""The pure math of training_adapters against hand-computed cases: OPD reverse KL, discounting,
advantages and alignment; RPT entropy, prediction extraction and byte-prefix reward; CaT's
verifiable reward and rubric parsing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from temper.decoding.engine import Scored
from temper.training_adapters.cat_reward import verifiable_reward
from temper.training_adapters.distillation import assemble
from temper.training_adapters.distillation_math import (
    align_to_targets,
    completion_targets,
    discounted_future_sum,
    kl_advantages,
    masked_mean,
    reverse_kl,
)
from temper.training_adapters.reward import Reward, reason_counts
from temper.training_adapters.rollout import Rollout, RolloutGroup
from temper.training_adapters.rpt_math import final_prediction, prefix_reward, token_boundaries, topk_entropy
from temper.training_adapters.rubric import Rubric, parse_rubric, parse_verdict, rubric_reward

# ---------------------------------------------------------------- OPD


def test_reverse_kl_is_sampled_minus_teacher():
    assert reverse_kl([-1.0, -2.0], [-1.5, -0.5]).tolist() == [0.5, -1.5]
    with pytest.raises(ValueError, match="shapes differ"):
        reverse_kl([-1.0], [-1.0, -2.0])


@pytest.mark.parametrize(
    "x, discount, want",
    [
        ([1, 2, 3], 0.0, [1, 2, 3]),
        ([1, 2, 3], 0.5, [1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3]),  # 2.75, 3.5, 3
        ([1, 2, 3], 1.0, [6, 5, 3]),
        ([[1, 0], [0, 4]], 0.5, [[1, 0], [2, 4]]),  # batched along the last axis
    ],
)
def test_discounted_future_sum(x, discount, want):
    assert discounted_future_sum(np.array(x, float), discount).tolist() == want


def test_discount_outside_unit_interval_is_refused():
    with pytest.raises(ValueError, match="discount"):
        discounted_future_sum(np.zeros(3), 1.5)


@pytest.mark.parametrize(
    "discount, want",
    [
        (0.0, [0.0, -1.0, 3.0, 0.0]),  # −2 × own KL on completion tokens only
        # masked KL [0, .5, −1.5, 0]; future sums t=2: −1.5, t=1: .5 + .5·(−1.5) = −.25
        (0.5, [0.0, 0.5, 3.0, 0.0]),
    ],
)
def test_kl_advantages_by_hand(discount, want):
    rkl = np.array([np.inf, 0.5, -1.5, 9.0])  # inf on a prompt position must not leak
    mask = np.array([0, 1, 1, 0])
    assert kl_advantages(rkl, mask, coef=2.0, discount=discount).tolist() == pytest.approx(want)


def test_masked_mean_and_alignment():
    assert masked_mean([1, 2, 3, 100], [1, 1, 1, 0]) == 2.0
    assert math.isnan(masked_mean([1.0], [0]))
    assert completion_targets(3, 2) == slice(2, 4)
    assert align_to_targets([7.0, 8.0], prompt_len=3, width=5).tolist() == [0, 0, 7, 8, 0]
    with pytest.raises(ValueError, match="width"):
        align_to_targets([1.0, 2.0], prompt_len=4, width=4)
    with pytest.raises(ValueError, match="prompt_len"):
        completion_targets(0, 1)


def test_assemble_aligns_masks_and_pads_by_hand():
    group = RolloutGroup(
        prompt_token_ids=[5, 6, 7],
        rollouts=[
            Rollout([8, 9], "", "length", np.array([-1.0, -2.0], np.float32)),
            Rollout([10], "", "stop", np.array([-0.5], np.float32)),
        ],
        model="student",
        weight_version=3,
    )
    scored = [Scored(np.array([-1.5, -1.0], np.float32)), Scored(np.array([-0.25], np.float32))]
    b = assemble([group], scored, pad_id=0, coef=1.0)
    assert b.tokens.tolist() == [[5, 6, 7, 8, 9], [5, 6, 7, 10, 0]]
    assert b.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert b.mask.tolist() == [[0, 0, 1, 1], [0, 0, 1, 0]]  # targets tokens[:, 1:]
    assert b.sampled_logprobs.tolist() == [[0, 0, -1, -2], [0, 0, -0.5, 0]]
    assert b.reverse_kl.tolist() == [[0, 0, 0.5, -1.0], [0, 0, -0.25, 0]]
    assert b.advantages.tolist() == [[0, 0, -0.5, 1.0], [0, 0, 0.25, 0]]
    assert b.mean_reverse_kl == pytest.approx((0.5 - 1.0 - 0.25) / 3)
    assert b.weight_versions == [3, 3] and b.group_index == [0, 0] and b.completion_tokens == 3


def test_assemble_refuses_rollouts_without_sampled_logprobs():
    group = RolloutGroup([1], [Rollout([2], "", "stop", None)], "m", metadata={"strategy": "power"})
    with pytest.raises(ValueError, match="no sampled log-probs.*'power'"):
        assemble([group], [Scored(np.zeros(1, np.float32))])


# ---------------------------------------------------------------- RPT


@pytest.mark.parametrize(
    "top, want",
    [
        ([math.log(0.5), math.log(0.5)], math.log(2)),
        ([math.log(0.25), math.log(0.25)], math.log(2)),  # renormalised over the top-k
        ([math.log(0.5), math.log(0.25), math.log(0.25)], 1.5 * math.log(2)),
        ([0.0, -math.inf], 0.0),  # fewer than k alternatives
    ],
)
def test_topk_entropy_by_hand(top, want):
    assert float(topk_entropy(np.array(top))) == pytest.approx(want)


def test_topk_entropy_rows_and_empty_rows():
    got = topk_entropy(np.array([[0.0, -np.inf], [-np.inf, -np.inf]]))
    assert got[0] == 0.0 and math.isnan(got[1])


@pytest.mark.parametrize(
    "text, want",
    [
        ("<think>it is para</think> so \\boxed{ para}", " para"),  # the space is kept
        ("<think>\\boxed{no}</think>\\boxed{a} then \\boxed{b}", "b"),  # the last box after </think>
        ("<think>x</think>\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),  # nested braces
        ("<think>x</think>\\boxed{ok} and \\boxed{cut", "ok"),  # an unclosed box is skipped
        ("<think>a</think>b</think>\\boxed{c}", "c"),
        ("<think>x</think>\\boxed{}", ""),
    ],
)
def test_final_prediction(text, want):
    assert final_prediction(text) == (want, "ok")


@pytest.mark.parametrize(
    "text, reason",
    [("\\boxed{ para}", "no </think>"), ("<think>\\boxed{a}</think> a", "no \\boxed{} after </think>")],
)
def test_final_prediction_missing(text, reason):
    assert final_prediction(text) == (None, reason)


CONT = b" paragraph is"  # tokens " para" | "graph" | " is"
BOUNDS = token_boundaries([5, 5, 3])


@pytest.mark.parametrize(
    "prediction, value, reason",
    [
        (" para", 1.0, "match"),
        (" paragraph", 1.0, "match"),  # two whole tokens count
        (" paragraph is", 1.0, "match"),
        (" par", 0.0, "ends inside a token"),
        ("para", 0.0, "not a prefix of the continuation"),  # the leading space matters
        (" pare", 0.0, "not a prefix of the continuation"),
        ("", 0.0, "empty prediction"),
        (None, 0.0, "no prediction"),
        (" paragraph is long", 0.0, "longer than the continuation window"),
    ],
)
def test_prefix_reward_table(prediction, value, reason):
    assert BOUNDS == [5, 10, 13]
    r = prefix_reward(prediction, CONT, BOUNDS)
    assert (r.value, r.reason) == (value, reason)


def test_prefix_reward_on_bytes_of_split_characters():
    cont = "é!".encode()  # c3 a9 21
    assert prefix_reward("é", cont, token_boundaries([1, 1, 1])).value == 1.0  # byte tokens c3 | a9 | !
    assert prefix_reward("é", cont, token_boundaries([2, 1])).value == 1.0
    assert prefix_reward("é", cont, token_boundaries([3])).reason == "ends inside a token"
    with pytest.raises(ValueError, match="boundaries"):
        prefix_reward("é", cont, [4])


# ---------------------------------------------------------------- CaT


@pytest.mark.parametrize(
    "rollout, reference, value, reason",
    [
        ("so \\boxed{391}", "the answer is \\boxed{391}.", 1.0, "match"),
        ("\\boxed{0.5}", "\\boxed{\\frac{1}{2}}", 1.0, "match"),  # normalised answers
        ("\\boxed{381}", "\\boxed{391}", 0.0, "mismatch"),
        ("", "\\boxed{3}", 0.0, "empty rollout"),
        ("  \n", "\\boxed{3}", 0.0, "empty rollout"),
        ("I do not know", "\\boxed{3}", 0.0, "no answer in rollout"),
        ("\\boxed{3}", "no idea", 0.0, "no answer in reference"),
        ("\\boxed{3}", "", 0.0, "empty reference"),
    ],
)
def test_verifiable_reward_table(rollout, reference, value, reason):
    r = verifiable_reward(rollout, reference)
    assert (r.value, r.reason) == (value, reason)


def test_verifiable_reward_extractor():
    assert verifiable_reward("the answer is 3", "\\boxed{3}").reason == "match"  # auto: last number
    assert verifiable_reward("the answer is 3", "\\boxed{3}", "boxed").reason == "no answer in rollout"
    with pytest.raises(KeyError, match="unknown extractor"):
        verifiable_reward("a", "b", "nope")


FIVE = "".join(f"<criterion>Criterion {i}</criterion>\n" for i in range(5))


def test_parse_rubric_well_formed_amid_text():
    r = parse_rubric(f"Sure.\n<rubric>\n{FIVE}</rubric>\nDone.")
    assert r.criteria == tuple(f"Criterion {i}" for i in range(5)) and r.well_formed
    assert r.usable() and not r.usable(6)


def test_parse_rubric_recovers_from_broken_xml():
    text = "<rubric><criterion>Mentions salt & pepper</criterion><criterion> Uses  &amp; </criterion>"
    text += "<criterion>Mentions salt & pepper</criterion><criterion> </criterion></rubric>"
    r = parse_rubric(text)  # a bare & is not XML
    assert r.criteria == ("Mentions salt & pepper", "Uses &") and not r.well_formed


def test_parse_rubric_without_any():
    assert parse_rubric("I cannot write a rubric.") == Rubric((), False, "I cannot write a rubric.")


@pytest.mark.parametrize(
    "text, want",
    [
        ("<verdict>yes</verdict>", True),
        ("Reasoning... <verdict> No. </verdict>", False),
        ("<verdict>no</verdict> wait <VERDICT>YES</VERDICT>", True),  # the last one counts
        ("yes", None),
        ("<verdict>maybe</verdict>", None),
        ("", None),
    ],
)
def test_parse_verdict(text, want):
    assert parse_verdict(text) is want


def test_rubric_reward_counts_malformed_verdicts():
    rub = Rubric(tuple("abcde"), True)
    r = rubric_reward([True, True, False, None, True], rub)
    assert r.value == pytest.approx(0.6) and r.reason == "judged, some verdicts malformed"
    assert r.metadata["malformed"] == 1 and r.metadata["satisfied"] == 3
    assert rubric_reward([True] * 5, rub).reason == "judged"
    short = rubric_reward([True] * 4, Rubric(tuple("abcd"), True))
    assert (short.value, short.reason) == (0.0, "no usable rubric")
    with pytest.raises(ValueError, match="verdicts"):
        rubric_reward([True], rub)


def test_reward_values_are_finite_and_reasons_count():
    with pytest.raises(ValueError, match="finite"):
        Reward(float("nan"), "x")
    rs = [Reward(0.0, "a"), Reward(1.0, "b"), Reward(0.0, "a")]
    assert reason_counts(rs) == {"a": 2, "b": 1}
