"""Compute as Teacher (CaT, arXiv 2509.14234; research/training_methods.md §1): rewards for
the policy's rollouts from a reference that a frozen anchor synthesises out of those rollouts.

    cat = ComputeAsTeacher(Rollouts.http(url), anchor_model="anchor")
    refs = cat.references(questions, rollouts)            # one synthesis per question
    cat.verifiable_rewards(rollouts, refs)                # math: answer(rollout) == answer(ref)
    rubrics = cat.rubrics(refs)                           # HealthBench-style tasks: >= 5 criteria
    cat.rubric_rewards(rollouts, rubrics)                 # fraction a judge says yes to

- The reference goes through temper's `synthesis` strategy with the rollouts given
  (`rollout_texts`): the anchor sees the G rollouts and, unless `include_question`, not the
  question. The anchor must be frozen: serve it with `temper serve --model anchor=PATH
  --frozen anchor` (or keep an in-process copy that nothing updates).
- Rubrics are written by the anchor from the reference; a rubric with fewer than
  `min_criteria` criteria is asked for again (`rubric_attempts` in all), then given up on: its
  rollouts score 0 with that reason. Judges (default: the anchor itself) answer one criterion
  for one rollout per call, greedily; malformed verdicts are counted, never fatal.
- Every reward carries its reason (rubric.py, cat_reward.py); all calls of one method run side
  by side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from temper.decoding.answers import extract_answer, get_extractor
from temper.decoding.strategies.base import derive_seed
from temper.training_adapters.cat_reward import verifiable_reward
from temper.training_adapters.prompt_input import Prompt, as_prompt
from temper.training_adapters.reward import Reward
from temper.training_adapters.rollout import RolloutConfig
from temper.training_adapters.rollouts import Rollouts
from temper.training_adapters.rubric import (
    MIN_CRITERIA,
    Rubric,
    judge_prompt,
    parse_rubric,
    parse_verdict,
    rubric_prompt,
    rubric_reward,
)
from temper.training_adapters.transport import gather_all


@dataclass(frozen=True, slots=True)
class Reference:
    """The anchor's synthesised reference for one question."""

    text: str
    answer: str | None  # normalised final answer (None: the reference has none)
    metadata: dict[str, Any] = field(default_factory=dict)  # the synthesis strategy's


def _texts(rollouts: Sequence[Sequence[str]], count: int) -> list[list[str]]:
    if len(rollouts) != count:
        raise ValueError(f"rollouts: {len(rollouts)} groups for {count} questions/references")
    out = []
    for i, group in enumerate(rollouts):
        if isinstance(group, str) or not all(isinstance(t, str) for t in group):
            raise ValueError(f"rollouts[{i}]: must be a list of rollout texts")
        out.append(list(group))
    return out


class ComputeAsTeacher:
    def __init__(
        self,
        anchor: Rollouts,
        *,
        anchor_model: str | None = None,
        judge: Rollouts | None = None,
        judge_model: str | None = None,
        extractor: str = "auto",
        template: str | None = None,
        include_question: bool = False,
        max_tokens: int = 1024,
        temperature: float | None = None,
        seed: int | None = None,
        min_criteria: int = MIN_CRITERIA,
        rubric_attempts: int = 3,
        rubric_max_tokens: int = 512,
        judge_max_tokens: int = 32,
    ):
        get_extractor(extractor)
        if min_criteria < 1 or rubric_attempts < 1:
            raise ValueError("min_criteria and rubric_attempts: must be >= 1")
        self.anchor, self.anchor_model = anchor, anchor_model
        self.judge = judge if judge is not None else anchor
        self.judge_model = judge_model if judge is not None else (judge_model or anchor_model)
        self.extractor, self.template, self.include_question = extractor, template, include_question
        self.max_tokens, self.temperature, self.seed = max_tokens, temperature, seed
        self.min_criteria, self.rubric_attempts = min_criteria, rubric_attempts
        self.rubric_max_tokens, self.judge_max_tokens = rubric_max_tokens, judge_max_tokens

    def synthesis_config(self, texts: Sequence[str], index: int) -> RolloutConfig:
        decoding: dict[str, Any] = {
            "strategy": "synthesis",
            "rollout_texts": list(texts),
            "extractor": self.extractor,
            "include_question": self.include_question,
        }
        if self.template is not None:
            decoding["template"] = self.template
        return RolloutConfig(decoding=decoding, model=self.anchor_model, n=1, max_tokens=self.max_tokens,
                             seed=derive_seed(self.seed, 0, index), temperature=self.temperature)

    def references(self, questions: Sequence[Prompt], rollouts: Sequence[Sequence[str]]) -> list[Reference]:
        """One synthesised reference per question from its rollouts' texts."""
        texts = _texts(rollouts, len(questions))
        prompts = [as_prompt(q, f"questions[{i}]") for i, q in enumerate(questions)]
        for i, t in enumerate(texts):
            if not t:
                raise ValueError(f"rollouts[{i}]: no rollouts to synthesise from")
        tr = self.anchor.transport
        groups = self.anchor.run(
            gather_all(
                tr.generate([p], self.synthesis_config(t, i))
                for i, (p, t) in enumerate(zip(prompts, texts, strict=True))
            )
        )
        refs = []
        for (g,) in groups:
            text = g.rollouts[0].text
            refs.append(Reference(text, extract_answer(text, self.extractor), dict(g.metadata)))
        return refs

    def verifiable_rewards(
        self, rollouts: Sequence[Sequence[str]], references: Sequence[Reference]
    ) -> list[list[Reward]]:
        """answer(rollout) == answer(reference), per rollout (no model calls)."""
        texts = _texts(rollouts, len(references))
        return [
            [verifiable_reward(t, ref.text, self.extractor) for t in group]
            for group, ref in zip(texts, references, strict=True)
        ]

    async def _rubric(self, ref: Reference, index: int) -> Rubric:
        best = Rubric((), False)
        prompt = as_prompt([{"role": "user", "content": rubric_prompt(ref.text, self.min_criteria)}])
        for attempt in range(self.rubric_attempts):
            cfg = RolloutConfig(model=self.anchor_model, temperature=self.temperature, n=1,
                                max_tokens=self.rubric_max_tokens, seed=derive_seed(self.seed, 1, index, attempt))
            (g,) = await self.anchor.transport.generate([prompt], cfg)
            got = parse_rubric(g.rollouts[0].text)
            if len(got.criteria) > len(best.criteria) or attempt == 0:
                best = Rubric(got.criteria, got.well_formed, got.text, attempt + 1)
            if got.usable(self.min_criteria):
                return best
        return Rubric(best.criteria, best.well_formed, best.text, self.rubric_attempts)

    def rubrics(self, references: Sequence[Reference]) -> list[Rubric]:
        """A rubric per reference, written by the anchor (see the module for retries)."""
        return self.anchor.run(gather_all(self._rubric(r, i) for i, r in enumerate(references)))

    def rubric_rewards(self, rollouts: Sequence[Sequence[str]], rubrics: Sequence[Rubric]) -> list[list[Reward]]:
        """Per rollout, the fraction of its question's criteria the judge says it meets."""
        texts = _texts(rollouts, len(rubrics))
        calls: list[tuple[int, int]] = []  # (question, rollout) per judged rollout
        prompts = []
        out = [[Reward(0.0, "empty rollout") for _ in group] for group in texts]
        for q, (group, rub) in enumerate(zip(texts, rubrics, strict=True)):
            if not rub.usable(self.min_criteria):
                out[q] = [rubric_reward([], rub, self.min_criteria) for _ in group]
                continue
            for r, text in enumerate(group):
                if text.strip():
                    calls.append((q, r))
                    prompts += [[{"role": "user", "content": judge_prompt(text, c)}] for c in rub.criteria]
        verdicts: list[bool | None] = []
        if prompts:
            cfg = {"n": 1, "max_tokens": self.judge_max_tokens, "temperature": 0.0, "model": self.judge_model}
            groups = self.judge.generate(prompts, **cfg)
            verdicts = [parse_verdict(g.rollouts[0].text) for g in groups]
        at = 0
        for q, r in calls:
            n = len(rubrics[q].criteria)
            out[q][r] = rubric_reward(verdicts[at : at + n], rubrics[q], self.min_criteria)
            at += n
        return out
