"""On-policy distillation (OPD): the student's rollouts, the teacher's log-probs of exactly
those tokens, and a learner-ready batch with per-token reverse KL and advantages
(distillation_math.py has the formulas; research/training_methods.md §3).

    opd = OnPolicyDistillation(rollouts, student_model="student", teacher_model="teacher")
    groups = opd.sample(prompts, n=4, max_tokens=256)   # the student's rollouts
    batch = opd.batch(groups)                  # teacher scored, aligned, masked, padded
    batch.mean_reverse_kl                      # the number to watch fall
    loss = -(ratio * batch.advantages * batch.mask).sum() / batch.mask.sum()   # e.g.

The teacher may be any model served by a transport (in-process or HTTP), but it must share
the student's vocabulary: the constructor compares the two and raises a VocabularyError
otherwise. The student's log-probs are the rollouts' own (the sampled
distribution's); rollouts without them (a strategy that does not sample token by token) are
refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from temper.decoding.engine import Scored
from temper.training_adapters.distillation_math import (
    align_to_targets,
    completion_targets,
    kl_advantages,
    masked_mean,
    reverse_kl,
)
from temper.training_adapters.rollout import RolloutGroup
from temper.training_adapters.rollouts import Rollouts
from temper.training_adapters.vocabulary import check_same


@dataclass(slots=True)
class DistillationBatch:
    """B rows, one per rollout, right-padded. Per-target arrays are [B, L − 1], aligned to the
    targets tokens[:, 1:] of a causal LM fed tokens[:, :-1]; they are 0 where mask is 0."""

    tokens: np.ndarray  # [B, L] int64 prompt + completion, padded with pad_id
    attention_mask: np.ndarray  # [B, L] 1 on real tokens
    mask: np.ndarray  # [B, L-1] 1 where the target is a completion token
    sampled_logprobs: np.ndarray  # [B, L-1] log p_S of the target under the sampled distribution
    teacher_logprobs: np.ndarray  # [B, L-1] log p_T of the target
    reverse_kl: np.ndarray  # [B, L-1] sampled − teacher
    advantages: np.ndarray  # [B, L-1] −coef × (discounted) reverse KL
    group_index: list[int]  # the RolloutGroup each row comes from
    weight_versions: list[int | None]  # the student weights each row was sampled with
    teacher_top_ids: np.ndarray | None = None  # [B, L-1, k] when top_k > 0 (0 off the mask)
    teacher_top_logprobs: np.ndarray | None = None  # [B, L-1, k] (-inf off the mask)

    @property
    def mean_reverse_kl(self) -> float:
        """Mean per-token reverse KL over completion tokens (NaN for an empty batch)."""
        return masked_mean(self.reverse_kl, self.mask)

    @property
    def completion_tokens(self) -> int:
        return int(self.mask.sum())


def assemble(
    groups: Sequence[RolloutGroup],
    scored: Sequence[Scored],
    *,
    pad_id: int = 0,
    coef: float = 1.0,
    discount: float = 0.0,
    top_k: int = 0,
) -> DistillationBatch:
    """The batch from rollouts and the teacher's scores of them (one Scored per rollout, in
    group order, each covering the rollout's completion tokens)."""
    rows = [(g, gi, r) for gi, g in enumerate(groups) for r in g.rollouts]
    if len(scored) != len(rows):
        raise ValueError(f"scored: {len(scored)} teacher scores for {len(rows)} rollouts")
    width = max([len(g.prompt_token_ids) + len(r.token_ids) for g, _, r in rows], default=1)
    B = len(rows)
    tokens = np.full((B, width), pad_id, dtype=np.int64)
    attn = np.zeros((B, width), dtype=np.int64)
    per_target = {k: np.zeros((B, width - 1)) for k in ("mask", "sampled", "teacher")}
    top_ids = np.zeros((B, width - 1, top_k), dtype=np.int64) if top_k else None
    top_lps = np.full((B, width - 1, top_k), -np.inf, dtype=np.float32) if top_k else None
    for b, ((g, gi, r), sc) in enumerate(zip(rows, scored, strict=True)):
        seq = list(g.prompt_token_ids) + list(r.token_ids)
        P, C = len(g.prompt_token_ids), len(r.token_ids)
        if r.logprobs is None or len(r.logprobs) != C:
            raise ValueError(
                f"groups[{gi}]: a rollout has no sampled log-probs (strategy {g.metadata.get('strategy', '?')!r}); "
                "on-policy distillation needs the sampled distribution's per-token log-probs (plain sampling)"
            )
        if len(sc.logp) != C:
            raise ValueError(f"scored[{b}]: {len(sc.logp)} teacher log-probs for {C} completion tokens")
        tokens[b, : len(seq)] = seq
        attn[b, : len(seq)] = 1
        per_target["mask"][b] = align_to_targets(np.ones(C), P, width - 1)
        per_target["sampled"][b] = align_to_targets(r.logprobs, P, width - 1)
        per_target["teacher"][b] = align_to_targets(sc.logp, P, width - 1)
        if top_k and C:
            span = completion_targets(P, C)
            top_ids[b, span] = sc.top_ids
            top_lps[b, span] = sc.top_logps
    mask = per_target["mask"]
    rkl = np.where(mask > 0, reverse_kl(per_target["sampled"], per_target["teacher"]), 0.0)
    return DistillationBatch(
        tokens=tokens,
        attention_mask=attn,
        mask=mask.astype(np.float32),
        sampled_logprobs=per_target["sampled"].astype(np.float32),
        teacher_logprobs=per_target["teacher"].astype(np.float32),
        reverse_kl=rkl.astype(np.float32),
        advantages=kl_advantages(rkl, mask, coef, discount).astype(np.float32),
        group_index=[gi for _, gi, _ in rows],
        weight_versions=[g.weight_version for g, _, _ in rows],
        teacher_top_ids=top_ids,
        teacher_top_logprobs=top_lps,
    )


class OnPolicyDistillation:
    """Student sampling, teacher scoring and batching for OPD (see the module docstring).

    The teacher defaults to the student's transport (one server serving both models, told
    apart by `teacher_model`). The two vocabularies are compared here, once: a teacher that
    tokenises differently is a VocabularyError before anything is sampled. kl_coef and
    discount are the recipe's kl_penalty_coef (1) and kl_discount_factor (0); top_k > 0 also
    returns the teacher's top-k alternatives per completion token (forward-KL or JSD variants).
    """

    def __init__(
        self,
        student: Rollouts,
        teacher: Rollouts | None = None,
        *,
        student_model: str | None = None,
        teacher_model: str | None = None,
        kl_coef: float = 1.0,
        discount: float = 0.0,
        top_k: int = 0,
        pad_id: int = 0,
    ):
        if not np.isfinite(kl_coef) or kl_coef < 0:
            raise ValueError(f"kl_coef: must be a finite number >= 0, got {kl_coef}")
        if not 0.0 <= discount <= 1.0:
            raise ValueError(f"discount: must be in [0, 1], got {discount}")
        if top_k < 0:
            raise ValueError(f"top_k: must be >= 0, got {top_k}")
        self.student, self.teacher = student, teacher if teacher is not None else student
        self.student_model, self.teacher_model = student_model, teacher_model
        self.kl_coef, self.discount, self.top_k, self.pad_id = kl_coef, discount, top_k, pad_id
        check_same(
            self.student.vocabulary(student_model),
            self.teacher.vocabulary(teacher_model),
            "on-policy distillation (the teacher scores the student's token ids)",
        )

    def sample(self, prompts: Sequence[Any], **fields: Any) -> list[RolloutGroup]:
        """The student's rollouts (Rollouts.generate fields: n, max_tokens, temperature...)."""
        return self.student.generate(prompts, model=self.student_model, **fields)

    def teacher_scores(self, groups: Sequence[RolloutGroup]) -> list[Scored]:
        """The teacher's log-probs of every rollout's completion tokens (one call; empty
        rollouts need none)."""
        rows = [(list(g.prompt_token_ids), list(r.token_ids)) for g in groups for r in g.rollouts]
        todo = [i for i, (_, c) in enumerate(rows) if c]
        got = self.teacher.score(
            [rows[i][0] + rows[i][1] for i in todo], [len(rows[i][0]) for i in todo], self.top_k, self.teacher_model
        )
        empty = Scored(
            np.zeros(0, np.float32),
            np.zeros((0, self.top_k), np.int64) if self.top_k else None,
            np.zeros((0, self.top_k), np.float32) if self.top_k else None,
        )
        out = [empty] * len(rows)
        for i, sc in zip(todo, got, strict=True):
            out[i] = sc
        return out

    def batch(self, groups: Sequence[RolloutGroup]) -> DistillationBatch:
        """Score the student's rollouts under the teacher and assemble the learner's batch."""
        return assemble(
            groups,
            self.teacher_scores(groups),
            pad_id=self.pad_id,
            coef=self.kl_coef,
            discount=self.discount,
            top_k=self.top_k,
        )
