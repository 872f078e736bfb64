"""Reward: one scalar reward for one rollout, with the reason it has that value.

Every reward in training_adapters (CaT verifiable and rubric, RPT byte-prefix) returns one, so
a learner can log why rollouts score 0 (no answer, empty rollout, malformed judge output...)
instead of guessing. Plain data; no model, no transport.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Reward:
    value: float
    reason: str  # a short, stable label ("match", "no answer in rollout", ...), for counting
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not math.isfinite(self.value):
            raise ValueError(f"reward: must be a finite number, got {self.value}")


def reason_counts(rewards: Iterable[Reward]) -> dict[str, int]:
    """How many rewards have each reason, most common first (for logs and metrics)."""
    return dict(Counter(r.reason for r in rewards).most_common())
