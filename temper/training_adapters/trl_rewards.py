"""TRL bridge: CaT and RPT rewards as GRPOTrainer reward functions.

GRPOTrainer calls each of its `reward_funcs` as f(prompts=..., completions=...,
completion_ids=..., **dataset columns, trainer_state=..., log_extra=..., log_metric=...) and
wants one float per completion (trl 1.16 `_calculate_rewards`). Prompts and completions are
strings, or chat messages in conversational datasets. Each object here has that signature (and
a `__name__`, which TRL logs rewards under):

    trainer = GRPOTrainer(model=..., reward_funcs=[CaTVerifiableReward(cat)], ...)
    trainer = GRPOTrainer(model=..., reward_funcs=[RPTReward()], train_dataset=rpt_rows)

CaT rewards need each question's G completions together (one synthesis per group): GRPOTrainer
passes them as consecutive runs of the same prompt, which is how they are grouped (or in
chunks of `group_size` when given, checked to share their prompt). Reward reasons go to TRL's
completions table (log_extra) and their shares to its metrics (log_metric).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

from temper.training_adapters.cat import ComputeAsTeacher
from temper.training_adapters.reward import Reward, reason_counts
from temper.training_adapters.rpt_data import rpt_reward


def completion_text(completion: Any) -> str:
    """A TRL completion as text: a string, or the content of its (last) assistant message."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content") or "")
    raise TypeError(f"completions: expected a string or chat messages, got {type(completion).__name__}")


def prompt_groups(prompts: Sequence[Any], group_size: int | None = None) -> list[list[int]]:
    """Indices of the completions of each question: runs of equal consecutive prompts, or
    chunks of `group_size` (each must share one prompt)."""
    if group_size is None:
        groups: list[list[int]] = []
        for i, p in enumerate(prompts):
            if groups and prompts[groups[-1][0]] == p:
                groups[-1].append(i)
            else:
                groups.append([i])
        return groups
    if group_size < 1 or len(prompts) % group_size:
        raise ValueError(f"group_size: {len(prompts)} completions do not split into groups of {group_size}")
    groups = [list(range(i, i + group_size)) for i in range(0, len(prompts), group_size)]
    for g in groups:
        if any(prompts[i] != prompts[g[0]] for i in g):
            raise ValueError(f"group_size: completions {g[0]}..{g[-1]} do not share one prompt")
    return groups


def log_rewards(name: str, rewards: Sequence[Reward], kwargs: dict[str, Any]) -> None:
    """Reasons per completion into TRL's completions table, and each reason's share as a metric."""
    log_extra: Callable | None = kwargs.get("log_extra")
    log_metric: Callable | None = kwargs.get("log_metric")
    if log_extra is not None:
        log_extra(f"{name}_reason", [r.reason for r in rewards])
    if log_metric is not None and rewards:
        for reason, count in reason_counts(rewards).items():
            log_metric(f"{name}/{reason.replace(' ', '_')}", count / len(rewards))


class CaTReward(ABC):
    """Base of the CaT reward functions: groups completions by question, rewards each group."""

    __name__ = "cat"

    def __init__(self, cat: ComputeAsTeacher, group_size: int | None = None):
        self.cat, self.group_size = cat, group_size

    def grouped(self, prompts, completions) -> tuple[list[list[int]], list[Any], list[list[str]]]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
        groups = prompt_groups(prompts, self.group_size)
        texts = [completion_text(c) for c in completions]
        return groups, [prompts[g[0]] for g in groups], [[texts[i] for i in g] for g in groups]

    @abstractmethod
    def rewards(self, questions, rollouts) -> list[list[Reward]]:
        """Per question, the rewards of its rollouts."""

    def __call__(self, prompts, completions, completion_ids=None, **kwargs: Any) -> list[float]:
        groups, questions, rollouts = self.grouped(prompts, completions)
        per_group = self.rewards(questions, rollouts)
        flat: list[Reward] = [Reward(0.0, "unset")] * len(completions)
        for g, rewards in zip(groups, per_group, strict=True):
            for i, r in zip(g, rewards, strict=True):
                flat[i] = r
        log_rewards(self.__name__, flat, kwargs)
        return [r.value for r in flat]


class CaTVerifiableReward(CaTReward):
    """1 when a completion's final answer equals the anchor's synthesised reference's."""

    __name__ = "cat_verifiable"

    def rewards(self, questions, rollouts) -> list[list[Reward]]:
        return self.cat.verifiable_rewards(rollouts, self.cat.references(questions, rollouts))


class CaTRubricReward(CaTReward):
    """The fraction of the anchor's rubric (from its reference) a judge says a completion meets."""

    __name__ = "cat_rubric"

    def rewards(self, questions, rollouts) -> list[list[Reward]]:
        rubrics = self.cat.rubrics(self.cat.references(questions, rollouts))
        return self.cat.rubric_rewards(rollouts, rubrics)


class RPTReward:
    """RPT's byte-prefix reward; the dataset rows are RPTExample.to_dict() (columns
    `continuation` and `boundaries`)."""

    __name__ = "rpt"

    def __call__(
        self, prompts, completions, completion_ids=None, *, continuation=None, boundaries=None, **kwargs: Any
    ) -> list[float]:
        if continuation is None or boundaries is None:
            raise ValueError("RPTReward needs the dataset columns `continuation` and `boundaries` (RPTExample.to_dict)")
        rewards = [
            rpt_reward(completion_text(c), cont, bounds)
            for c, cont, bounds in zip(completions, continuation, boundaries, strict=True)
        ]
        log_rewards(self.__name__, rewards, kwargs)
        return [r.value for r in rewards]
