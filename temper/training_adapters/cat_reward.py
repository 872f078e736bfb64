"""CaT's verifiable reward (arXiv 2509.14234 Eq. 6): 1 when a rollout's final answer equals the
synthesised reference's, else 0, with the reason (research/training_methods.md §1.1).

Answers are extracted and normalised by temper.decoding.answers (the same extractor the
synthesis strategy reports its answers with: \\boxed{} first, else the last number). An empty
rollout, a rollout without an answer and a reference without one all give 0, each with its
own reason. Pure function; the synthesis calls are cat.py's.
"""

from __future__ import annotations

from temper.decoding.answers import extract_answer, get_extractor
from temper.training_adapters.reward import Reward


def verifiable_reward(rollout: str, reference: str, extractor: str = "auto") -> Reward:
    get_extractor(extractor)  # KeyError naming the extractors before anything else
    ref = extract_answer(reference, extractor) if reference.strip() else None
    if not rollout.strip():
        return Reward(0.0, "empty rollout", {"reference_answer": ref})
    if ref is None:
        return Reward(0.0, "no answer in reference" if reference.strip() else "empty reference")
    ans = extract_answer(rollout, extractor)
    if ans is None:
        return Reward(0.0, "no answer in rollout", {"reference_answer": ref})
    meta = {"answer": ans, "reference_answer": ref}
    return Reward(1.0, "match", meta) if ans == ref else Reward(0.0, "mismatch", meta)
