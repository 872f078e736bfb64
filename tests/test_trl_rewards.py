"""The TRL bridge: CaT and RPT rewards with GRPOTrainer's reward_funcs signature, grouped and
logged the way GRPOTrainer calls them, and one real GRPOTrainer step using them."""

from __future__ import annotations

import pytest
from scripted_engine import ScriptedEngine, judge, rubric_writer

from temper.training_adapters.cat import ComputeAsTeacher
from temper.training_adapters.rollouts import Rollouts
from temper.training_adapters.trl_rewards import (
    CaTRubricReward,
    CaTVerifiableReward,
    RPTReward,
    completion_text,
    prompt_groups,
)


class Logs:
    def __init__(self):
        self.extra, self.metrics = {}, {}

    def kwargs(self):
        return {"log_extra": self.extra.__setitem__, "log_metric": self.metrics.__setitem__, "trainer_state": None}


def test_prompt_groups():
    assert prompt_groups(["a", "a", "b", "b", "a"]) == [[0, 1], [2, 3], [4]]
    assert prompt_groups(["a", "a", "b", "b"], group_size=2) == [[0, 1], [2, 3]]
    with pytest.raises(ValueError, match="do not split into groups of 3"):
        prompt_groups(["a", "a"], group_size=3)
    with pytest.raises(ValueError, match="completions 0..1 do not share one prompt"):
        prompt_groups(["a", "b"], group_size=2)


def test_completion_text():
    assert completion_text("x") == "x"
    assert completion_text([{"role": "assistant", "content": "y"}]) == "y"
    with pytest.raises(TypeError, match="completions"):
        completion_text(3)


@pytest.fixture
def cat():
    respond, _ = rubric_writer([5])
    r = Rollouts.local({"anchor": ScriptedEngine("anchor", respond), "judge": ScriptedEngine("judge", judge)})
    yield ComputeAsTeacher(r, anchor_model="anchor", judge_model="judge", max_tokens=64, judge_max_tokens=64)
    r.close()


def test_cat_verifiable_reward_groups_by_prompt_and_logs_reasons(cat):
    f = CaTVerifiableReward(cat)
    prompts = ["2+2?"] * 3 + [[{"role": "user", "content": "3+4?"}]] * 2
    completions = ["\\boxed{4}", "\\boxed{4}", "\\boxed{5}", [{"role": "assistant", "content": "\\boxed{7}"}], ""]
    logs = Logs()
    assert f(prompts=prompts, completions=completions, completion_ids=None, **logs.kwargs()) == [1, 1, 0, 1, 0]
    assert logs.extra["cat_verifiable_reason"] == ["match", "match", "mismatch", "match", "empty rollout"]
    assert logs.metrics["cat_verifiable/match"] == pytest.approx(0.6)
    assert f.__name__ == "cat_verifiable"


def test_cat_rubric_reward(cat):
    f = CaTRubricReward(cat, group_size=2)
    out = f(prompts=["q", "q"], completions=["alpha beta gamma delta", "nothing"], completion_ids=None)
    assert out == [pytest.approx(4 / 5), 0.0]


def test_rpt_reward_reads_its_dataset_columns():
    f = RPTReward()
    logs = Logs()
    out = f(
        prompts=["p", "p"],
        completions=["<think>x</think>\\boxed{ 42}", "\\boxed{ 42}"],
        continuation=[" 42!", " 42!"],
        boundaries=[[3, 4], [3, 4]],
        **logs.kwargs(),
    )
    assert out == [1.0, 0.0] and logs.extra["rpt_reason"] == ["match", "no </think>"]
    with pytest.raises(ValueError, match="continuation"):
        f(prompts=["p"], completions=["x"])


def test_one_grpo_step_with_the_cat_reward(tiny_model_dir, tmp_path, cat):
    """GRPOTrainer (transformers generation on CPU) takes CaTVerifiableReward unchanged."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    f = CaTVerifiableReward(cat)
    calls = []
    original = f.rewards
    f.rewards = lambda q, r: calls.append((q, r)) or original(q, r)
    args = GRPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=8,
        max_steps=1,
        learning_rate=1e-4,
        report_to=[],
        use_cpu=True,
        logging_steps=1,
        save_strategy="no",
        seed=0,
    )
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": f"{i}+{i}?"}]} for i in range(4)])
    trainer = GRPOTrainer(model=str(tiny_model_dir), reward_funcs=[f], args=args, train_dataset=data)
    trainer.train()
    assert calls and all(len(g) == 4 for _, groups in calls for g in groups)  # G = 4 per question
    logged = trainer.state.log_history[0]
    assert "rewards/cat_verifiable/mean" in logged
