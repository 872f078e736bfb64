"""Compute as Teacher: references synthesised by the anchor from the given rollouts (through the
synthesis strategy), verifiable rewards, rubrics with retries, judges with malformed answers."""

from __future__ import annotations

import pytest
from scripted_engine import CRITERIA, ScriptedEngine, judge, reconcile, rubric_writer

from temper.decoding.engines.hf import HFEngine
from temper.training_adapters.cat import ComputeAsTeacher
from temper.training_adapters.rollouts import Rollouts

QUESTIONS = ["What is 2+2?", "What is 3+4?"]
ROLLOUTS = [["so \\boxed{4}", "\\boxed{4}", "it is \\boxed{5}"], ["\\boxed{7}", "no idea"]]


def cat_with(anchor: ScriptedEngine, judge: ScriptedEngine | None = None, **kw) -> tuple[ComputeAsTeacher, Rollouts]:
    engines = {"anchor": anchor} | ({"judge": judge} if judge else {})
    r = Rollouts.local(engines)
    return ComputeAsTeacher(r, anchor_model="anchor", judge_model="judge" if judge else None, **kw), r


def test_references_are_synthesised_from_the_given_rollouts_without_the_question():
    anchor = ScriptedEngine("anchor", reconcile)
    cat, r = cat_with(anchor, max_tokens=64, seed=1)
    try:
        refs = cat.references(QUESTIONS, ROLLOUTS)
        assert [x.answer for x in refs] == ["4", "7"]
        assert refs[0].metadata["strategy"] == "synthesis" and refs[0].metadata["votes"] == {"4": 2, "5": 1}
        assert len(anchor.prompts) == 2
        for prompt, question, group in zip(anchor.prompts, QUESTIONS, ROLLOUTS, strict=True):
            assert question not in prompt and all(t in prompt for t in group)
        rewards = cat.verifiable_rewards(ROLLOUTS, refs)
        assert [[x.value for x in g] for g in rewards] == [[1.0, 1.0, 0.0], [1.0, 0.0]]
        assert [[x.reason for x in g] for g in rewards] == [
            ["match", "match", "mismatch"],
            ["match", "no answer in rollout"],
        ]
    finally:
        r.close()


def test_the_question_goes_in_only_when_asked():
    anchor = ScriptedEngine("anchor", reconcile)
    cat, r = cat_with(anchor, include_question=True, max_tokens=64)
    try:
        cat.references(QUESTIONS[:1], ROLLOUTS[:1])
        assert QUESTIONS[0] in anchor.prompts[0]
    finally:
        r.close()


def test_rubric_rewards_count_malformed_verdicts_and_skip_empty_rollouts():
    respond, _ = rubric_writer([5])
    cat, r = cat_with(
        ScriptedEngine("anchor", respond), ScriptedEngine("judge", judge), max_tokens=64, judge_max_tokens=64
    )
    try:
        rollouts = [["alpha beta gamma", "", "delta only"]]
        rubrics = cat.rubrics(cat.references(QUESTIONS[:1], rollouts))
        assert rubrics[0].criteria == tuple(CRITERIA) and rubrics[0].well_formed and rubrics[0].attempts == 1
        (rewards,) = cat.rubric_rewards(rollouts, rubrics)
        assert [x.value for x in rewards] == [pytest.approx(3 / 5), 0.0, pytest.approx(1 / 5)]
        assert rewards[0].metadata["malformed"] == 1 and rewards[0].reason == "judged, some verdicts malformed"
        assert rewards[0].metadata["verdicts"] == [True, True, True, False, None]
        assert rewards[1].reason == "empty rollout"
    finally:
        r.close()


def test_short_rubrics_are_asked_for_again_then_given_up():
    respond, calls = rubric_writer([3, 6])
    cat, r = cat_with(ScriptedEngine("anchor", respond), max_tokens=64, rubric_attempts=3)
    try:
        (rub,) = cat.rubrics(cat.references(QUESTIONS[:1], ROLLOUTS[:1]))
        assert calls == [3, 6] and rub.attempts == 2 and len(rub.criteria) == 5
    finally:
        r.close()
    respond, calls = rubric_writer([2])
    cat, r = cat_with(ScriptedEngine("anchor", respond), max_tokens=64, rubric_attempts=3)
    try:
        (rub,) = cat.rubrics(cat.references(QUESTIONS[:1], ROLLOUTS[:1]))
        assert calls == [2, 2, 2] and not rub.usable() and rub.attempts == 3
        (rewards,) = cat.rubric_rewards(ROLLOUTS[:1], [rub])
        assert all(x.value == 0.0 and x.reason == "no usable rubric" for x in rewards)
    finally:
        r.close()


def test_bad_inputs():
    cat, r = cat_with(ScriptedEngine("anchor", reconcile))
    try:
        with pytest.raises(ValueError, match="1 groups for 2 questions"):
            cat.references(QUESTIONS, ROLLOUTS[:1])
        with pytest.raises(ValueError, match=r"rollouts\[0\]: no rollouts"):
            cat.references(QUESTIONS[:1], [[]])
        with pytest.raises(ValueError, match=r"rollouts\[0\]: must be a list of rollout texts"):
            cat.references(QUESTIONS[:1], ["just one string"])
        with pytest.raises(KeyError, match="unknown extractor"):
            ComputeAsTeacher(r, extractor="nope")
    finally:
        r.close()


def test_real_models_end_to_end(hf_engine, second_model_dir):
    """A tiny policy's own rollouts, reconciled by a frozen tiny anchor: it runs, and every
    reward says why it is what it is."""
    anchor = HFEngine.from_pretrained(str(second_model_dir), name="anchor", device="cpu", dtype="float32")
    r = Rollouts.local({"policy": hf_engine, "anchor": anchor})
    try:
        groups = r.generate(QUESTIONS, n=3, max_tokens=12, seed=4, model="policy")
        texts = [[x.text for x in g.rollouts] for g in groups]
        cat = ComputeAsTeacher(r, anchor_model="anchor", max_tokens=16, seed=4)
        refs = cat.references(QUESTIONS, texts)
        assert all(ref.metadata["strategy"] == "synthesis" for ref in refs)
        rewards = cat.verifiable_rewards(texts, refs)
        assert all(x.value in (0.0, 1.0) and x.reason for g in rewards for x in g)
    finally:
        r.close()
