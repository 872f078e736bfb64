"""The anchor's prompt for synthesis (Compute as Teacher): G rollouts in, one prompt out.

The anchor sees the rollouts and, unless asked, not the question: that forces it to reason
across the rollouts instead of writing one more rollout (research/training_methods.md §1.1).
The CaT paper's prompt text is not public, so the templates below are our own wording of the
method: reconcile contradictions, merge partial solutions, fix shared errors, do not just pick.

A template is text with a `{rollouts}` placeholder (required) and optionally `{count}` and
`{question}`; any other braces (\\boxed{}) are left alone. `{question}` becomes the question
only when it is included and nothing otherwise; a template without `{question}` gets the
question as a leading block when it is included. The presets "reasoning" (the default) and
"freeform" may be named instead of written out.

When the rollouts do not fit the anchor's context (minus room for the answer), each rollout is
cut to an even share of what is left, in the anchor's own tokens; a cut rollout keeps its head
and its tail (where the final answer sits) around a "[...]" marker.

No engine calls here: a tokenizer in, token ids + text + truncation info out.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from temper.decoding.engine import Tokenizer
from temper.decoding.errors import ContextLengthError, ParamError

REASONING = """Below are {count} independent attempts at the same problem.

{rollouts}

Write one new, complete solution to the problem these attempts address. Do not just pick one \
of the attempts. Compare them step by step: where they contradict each other, work out which \
reasoning is correct; where one skips a step or gets it wrong, use what the others got right; \
combine partial progress into one full argument. If every attempt makes the same mistake, \
correct it. Finish with the final answer in \\boxed{}."""

FREEFORM = """Below are {count} different responses to the same request.

{rollouts}

Write a single new response to that request that combines the strengths of these responses. \
Do not just copy the best one: keep every correct and useful point that any of them makes, \
resolve contradictions in favour of what is accurate, drop mistakes and repetition, and add \
what they all leave out. Reply with the response only, without mentioning the responses above."""

PRESETS = {"reasoning": REASONING, "freeform": FREEFORM}
DEFAULT_PRESET = "reasoning"
MAX_TEMPLATE_CHARS = 32_000
CUT_MARKER = "\n[...]\n"
_PLACEHOLDER = re.compile(r"\{(rollouts|count|question)\}")


def check_template(template: Any, param: str = "decoding.template") -> str:
    """The template text for a preset name or a template; ParamError naming `param` if bad."""
    if not isinstance(template, str):
        raise ParamError(f"{param}: must be a string", param)
    if template in PRESETS:
        return PRESETS[template]
    if "{rollouts}" not in template:
        raise ParamError(
            f"{param}: must contain the {{rollouts}} placeholder or name a preset "
            f"({', '.join(sorted(PRESETS))})",
            param,
        )
    if len(template) > MAX_TEMPLATE_CHARS:
        raise ParamError(f"{param}: longer than {MAX_TEMPLATE_CHARS} characters", param)
    return template


def resolve_template(template: str | None, server_template: str | None = None) -> str:
    """Per-request template, else the server's (--synthesis-template), else the preset."""
    if template is not None:
        return check_template(template)
    if server_template is not None:
        return check_template(server_template, "synthesis_template")
    return PRESETS[DEFAULT_PRESET]


def render(template: str, rollouts: Sequence[str], question: str | None = None) -> str:
    """Fill the template in one pass, so text inside rollouts is never substituted again."""
    blocks = "\n\n".join(f"### Response {i + 1}\n{r.strip()}" for i, r in enumerate(rollouts))
    values = {"rollouts": blocks, "count": str(len(rollouts)), "question": question or ""}
    text = _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)
    if question is not None and "{question}" not in template:
        text = f"Problem:\n{question.strip()}\n\n{text}"
    return text


def even_caps(lengths: Sequence[int], budget: int) -> list[int]:
    """Per-rollout token caps summing to at most `budget`, as even as possible: short rollouts
    keep everything and leave their unused share to the long ones (water-filling)."""
    if sum(lengths) <= budget:
        return list(lengths)
    budget = max(budget, 0)
    lo, hi = 0, max(lengths)
    while lo < hi:  # the largest common cap k with Σ min(L, k) ≤ budget
        mid = (lo + hi + 1) // 2
        if sum(min(n, mid) for n in lengths) <= budget:
            lo = mid
        else:
            hi = mid - 1
    caps = [min(n, lo) for n in lengths]
    spare = budget - sum(caps)
    for i, n in enumerate(lengths):  # the remainder, one token each, to the earliest long ones
        if spare and n > caps[i]:
            caps[i] += 1
            spare -= 1
    return caps


def clip(tokenizer: Tokenizer, ids: Sequence[int], keep: int) -> str:
    """`keep` tokens of a rollout as text: its head and tail around the cut marker."""
    if keep >= len(ids):
        return tokenizer.decode(ids)
    tail = keep // 2
    head = tokenizer.decode(ids[: keep - tail])
    return head + CUT_MARKER + (tokenizer.decode(ids[len(ids) - tail :]) if tail else "")


@dataclass(slots=True)
class SynthesisPrompt:
    ids: list[int]  # exactly what the anchor is given (chat template applied)
    text: str  # the user message inside the chat template
    lengths: list[int]  # each rollout's length in anchor tokens
    kept: list[int]  # tokens kept per rollout (== lengths when nothing was cut)

    @property
    def truncated(self) -> bool:
        return self.kept != self.lengths


def build_prompt(
    tokenizer: Tokenizer,
    rollouts: Sequence[str],
    *,
    template: str,
    max_context: int,
    answer_tokens: int | None = None,
    question: str | None = None,
) -> SynthesisPrompt:
    """The anchor prompt for these rollouts, leaving `answer_tokens` of the anchor's
    `max_context` for the answer; None = as many as the longest rollout, within reason (at
    least 1, at most half the context).

    Raises ContextLengthError when even the template with empty rollouts does not fit."""
    chat = lambda text: tokenizer.apply_chat_template([{"role": "user", "content": text}])
    enc = [tokenizer.encode(r, add_special_tokens=False) for r in rollouts]
    lengths = [len(e) for e in enc]
    if answer_tokens is None:
        answer_tokens = min(max([1, *lengths]), max_context // 2)
    max_prompt_tokens = max_context - answer_tokens
    fixed = len(chat(render(template, [""] * len(rollouts), question)))
    if fixed > max_prompt_tokens:
        raise ContextLengthError(
            f"the synthesis template alone takes {fixed} tokens; only {max_prompt_tokens} are "
            "left for the prompt after the room kept for the answer"
        )
    budget = max_prompt_tokens - fixed
    # Token counts of pieces need not add up once joined (merges at the seams, cut markers),
    # so render, measure, and shrink the budget by the overflow until it fits.
    for _ in range(16):
        caps = even_caps(lengths, budget)
        texts = [
            r if c >= n else clip(tokenizer, e, c)
            for r, e, n, c in zip(rollouts, enc, lengths, caps, strict=True)
        ]
        text = render(template, texts, question)
        ids = chat(text)
        over = len(ids) - max_prompt_tokens
        if over <= 0:
            return SynthesisPrompt(ids=ids, text=text, lengths=lengths, kept=caps)
        if budget == 0:
            break
        budget = max(budget - over, 0)
    raise ContextLengthError(
        f"could not fit {len(rollouts)} rollouts into {max_prompt_tokens} prompt tokens"
    )
