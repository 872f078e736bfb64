"""PromptInput: one prompt as a learner gives it (text, token ids or chat messages), validated
once, with the error naming where it came from ("prompts[3]", "data.jsonl line 7: prompt").

Both transports take PromptInputs: in-process they are tokenised by the engine's tokenizer
(text with special tokens, as /v1/completions does; messages through the model's chat
template), over HTTP they become the `prompt` or `messages` of the request.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# What a learner may pass as one prompt: text, token ids, or chat messages.
Prompt = str | Sequence[int] | Sequence[Mapping[str, str]]

MESSAGE_KEYS = frozenset({"role", "content", "name"})


class PromptError(ValueError):
    """A prompt that is not text, token ids or chat messages; the message names where it was."""


@dataclass(frozen=True, slots=True)
class PromptInput:
    """Exactly one of the three is set."""

    text: str | None = None
    token_ids: tuple[int, ...] | None = None
    messages: tuple[Mapping[str, str], ...] | None = None

    @property
    def question(self) -> str | None:
        """The question as text: the text itself, or the last user message (token ids: None)."""
        if self.text is not None:
            return self.text
        if self.messages is not None:
            return next((m["content"] for m in reversed(self.messages) if m["role"] == "user"), None)
        return None

    def to_json(self) -> dict[str, Any]:
        if self.text is not None:
            return {"prompt": self.text}
        if self.token_ids is not None:
            return {"prompt": list(self.token_ids)}
        return {"messages": [dict(m) for m in self.messages or ()]}


def _token_ids(value: Sequence[Any], where: str) -> tuple[int, ...]:
    for i, t in enumerate(value):
        if isinstance(t, bool) or not isinstance(t, int) or t < 0:
            raise PromptError(f"{where}[{i}]: token ids must be integers >= 0, got {t!r}")
    return tuple(value)


def _messages(value: Sequence[Any], where: str) -> tuple[Mapping[str, str], ...]:
    for i, m in enumerate(value):
        at = f"{where}[{i}]"
        if not isinstance(m, Mapping):
            raise PromptError(f"{at}: a chat message must be an object with role and content")
        extra = set(m) - MESSAGE_KEYS
        if extra:
            raise PromptError(f"{at}: unknown message field(s) {', '.join(sorted(map(str, extra)))}")
        for key in ("role", "content"):
            if not isinstance(m.get(key), str):
                raise PromptError(f"{at}.{key}: must be a string")
    return tuple(dict(m) for m in value)


def as_prompt(value: Any, where: str = "prompt") -> PromptInput:
    """Validate one prompt: a non-empty string, a non-empty list of token ids, or a non-empty
    list of chat messages ({"role", "content"} objects)."""
    if isinstance(value, PromptInput):
        return value
    if isinstance(value, str):
        if not value:
            raise PromptError(f"{where}: empty text")
        return PromptInput(text=value)
    if isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        if len(value) == 0:
            raise PromptError(f"{where}: empty list (need token ids or chat messages)")
        if all(isinstance(m, Mapping) for m in value):
            return PromptInput(messages=_messages(value, where))
        if any(isinstance(m, Mapping) for m in value):
            raise PromptError(f"{where}: mixes chat messages with other values")
        return PromptInput(token_ids=_token_ids(value, where))
    hint = " (one chat message; a conversation is a list of them)" if isinstance(value, Mapping) else ""
    raise PromptError(
        f"{where}: must be text, a list of token ids or a list of chat messages, got {type(value).__name__}{hint}"
    )


def as_prompts(values: Any, where: str = "prompts") -> list[PromptInput]:
    """A list of prompts (one prompt of token ids is [[...]]: a bare list of ints is refused, so
    that "one token-id prompt" and "several prompts" cannot be confused)."""
    if isinstance(values, str | PromptInput) or not isinstance(values, Sequence):
        raise PromptError(f"{where}: must be a list of prompts")
    if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise PromptError(f"{where}: a list of ints is one token-id prompt; pass a list of prompts ([[...]])")
    return [as_prompt(v, f"{where}[{i}]") for i, v in enumerate(values)]
