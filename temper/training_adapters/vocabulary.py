"""Vocabulary: whether two models mean the same thing by the same token ids.

On-policy distillation scores the student's token ids under the teacher, RPT scores corpus
token ids under a proxy: both are silent garbage when the two tokenizers differ. A Vocabulary
is what a model's tokenizer makes of a probe text and a probe conversation (so special tokens
and the chat template count too); each transport reads it the same way (in-process from the
tokenizer, over HTTP from /tokenize), and `check_same` raises a VocabularyError naming both
models and the first difference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

PROBE_TEXT = "Probe 0: x = \\frac{1}{2}, \\boxed{42}; ünïcode 漢字 🙂\n\tdone.  Ünd   again"
PROBE_MESSAGES = ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi, 2+2?"})


class VocabularyError(ValueError):
    """Two models whose token ids do not mean the same."""


@dataclass(frozen=True, slots=True)
class Vocabulary:
    model: str
    text_ids: tuple[int, ...]  # PROBE_TEXT without special tokens
    chat_ids: tuple[int, ...]  # PROBE_MESSAGES through the chat template


def vocabulary_of(model: str, tokenizer) -> Vocabulary:
    """The Vocabulary of an in-process tokenizer (temper's Tokenizer protocol)."""
    text = tokenizer.encode(PROBE_TEXT, add_special_tokens=False)
    chat = tokenizer.apply_chat_template(list(PROBE_MESSAGES), add_generation_prompt=True)
    return Vocabulary(model, tuple(text), tuple(chat))


def _first_difference(a: Sequence[int], b: Sequence[int]) -> str:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"position {i}: {x} vs {y}"
    return f"lengths {len(a)} vs {len(b)}"


def check_same(a: Vocabulary, b: Vocabulary, purpose: str) -> None:
    """Raise VocabularyError unless a and b tokenise the probes identically."""
    for what, x, y in (("text", a.text_ids, b.text_ids), ("chat template", a.chat_ids, b.chat_ids)):
        if x != y:
            raise VocabularyError(
                f"{a.model!r} and {b.model!r} tokenise differently ({what} probe, {_first_difference(x, y)}): "
                f"{purpose} needs the same token ids in both models"
            )
