"""On-policy distillation in-process: the student's rollouts scored by a teacher, aligned into
a learner's batch, with the vocabulary check and the refusals."""

from __future__ import annotations

import numpy as np
import pytest

from temper.decoding.engines.hf import HFEngine
from temper.decoding.engines.toy import ToyEngine, ToyModel
from temper.training_adapters.distillation import OnPolicyDistillation
from temper.training_adapters.distillation_math import discounted_future_sum
from temper.training_adapters.rollouts import Rollouts
from temper.training_adapters.vocabulary import VocabularyError

PROMPTS = ["Teach me.", [{"role": "user", "content": "hi"}]]


@pytest.fixture
def both(hf_engine, second_model_dir):
    teacher = HFEngine.from_pretrained(str(second_model_dir), name="teacher", device="cpu", dtype="float32")
    r = Rollouts.local({"student": hf_engine, "teacher": teacher})
    yield r, hf_engine, teacher
    r.close()


def test_batch_holds_the_teachers_logprobs_of_the_students_tokens(both):
    r, student, teacher = both
    opd = OnPolicyDistillation(r, student_model="student", teacher_model="teacher", top_k=3)
    groups = opd.sample(PROMPTS, n=2, max_tokens=8, seed=1)
    assert all(g.model == "student" for g in groups)
    b = opd.batch(groups)
    assert b.tokens.shape[0] == 4 and b.mask.shape == (4, b.tokens.shape[1] - 1)
    rows = [(g, ro) for g in groups for ro in g.rollouts]
    manual = []
    for i, (g, ro) in enumerate(rows):
        P, C = len(g.prompt_token_ids), len(ro.token_ids)
        seq = g.prompt_token_ids + ro.token_ids
        assert b.tokens[i, : P + C].tolist() == seq and b.attention_mask[i].sum() == P + C
        where = slice(P - 1, P - 1 + C)
        assert b.mask[i].sum() == C and b.mask[i, where].all()
        (want,) = r.score([seq], P, top_k=3, model="teacher")
        np.testing.assert_allclose(b.teacher_logprobs[i, where], want.logp, atol=1e-5)
        np.testing.assert_array_equal(b.teacher_top_ids[i, where], want.top_ids)
        np.testing.assert_allclose(b.sampled_logprobs[i, where], ro.logprobs)
        rkl = ro.logprobs - want.logp
        np.testing.assert_allclose(b.reverse_kl[i, where], rkl, atol=1e-5)
        np.testing.assert_allclose(b.advantages[i, where], -rkl, atol=1e-5)
        assert np.all(b.advantages[i][b.mask[i] == 0] == 0)
        manual.append(rkl)
    assert b.mean_reverse_kl == pytest.approx(float(np.concatenate(manual).mean()), abs=1e-5)
    assert b.weight_versions == [0, 0, 0, 0] and b.group_index == [0, 0, 1, 1]


def test_discount_and_coefficient(both):
    r, _, _ = both
    opd = OnPolicyDistillation(r, student_model="student", teacher_model="teacher", kl_coef=0.5, discount=0.9)
    groups = opd.sample(["Teach me."], n=1, max_tokens=6, seed=2)
    b = opd.batch(groups)
    P = len(groups[0].prompt_token_ids)
    rkl = b.reverse_kl[0, P - 1 :]
    np.testing.assert_allclose(b.advantages[0, P - 1 :], -0.5 * discounted_future_sum(rkl, 0.9), atol=1e-5)


def test_teacher_on_its_own_transport(hf_engine, second_model_dir):
    student = Rollouts.local({"student": hf_engine})
    teacher = Rollouts.local({"teacher": second_model_dir})
    try:
        opd = OnPolicyDistillation(student, teacher)
        b = opd.batch(opd.sample(["Teach me."], n=2, max_tokens=5, seed=3))
        assert b.completion_tokens > 0 and np.isfinite(b.mean_reverse_kl)
    finally:
        student.close()
        teacher.close()


def test_a_teacher_with_another_vocabulary_is_refused(hf_engine):
    r = Rollouts.local({"student": hf_engine, "toy": ToyEngine(ToyModel(vocab_size=4))})
    try:
        with pytest.raises(VocabularyError, match=r"'student' and 'toy' tokenise differently .*same token ids"):
            OnPolicyDistillation(r, student_model="student", teacher_model="toy")
        assert hf_engine.stats.generated_tokens == 0
    finally:
        r.close()


def test_rollouts_without_sampled_logprobs_are_refused(both):
    r, _, _ = both
    opd = OnPolicyDistillation(r, student_model="student", teacher_model="teacher")
    groups = opd.sample(["hi"], n=1, max_tokens=4, decoding={"strategy": "power", "alpha": 2.0})
    with pytest.raises(ValueError, match="sampled distribution's per-token log-probs"):
        opd.batch(groups)


@pytest.mark.parametrize(
    "kw, match", [({"kl_coef": -1.0}, "kl_coef"), ({"discount": 1.5}, "discount"), ({"top_k": -1}, "top_k")]
)
def test_bad_settings(both, kw, match):
    with pytest.raises(ValueError, match=match):
        OnPolicyDistillation(both[0], teacher_model="teacher", **kw)
