"""Request bodies of the HTTP API, mirroring OpenAI's (and vLLM's extras), as pydantic models.

Unknown fields are ignored, as vLLM does, so newer clients keep working; fields we cannot
honour (penalties, logit_bias, tools...) are rejected with a 400 by `serving.reject_unsupported`
rather than silently dropped. Values are checked where they are used: sampling fields by
`SamplingSettings`, the `decoding` object by the chosen strategy's `Params`. Response bodies
are built as plain dicts by the routes (and `serving.response_body`), field for field OpenAI's.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Body):
    include_usage: bool = False


class GenerationRequest(_Body):
    """Fields shared by /v1/completions and /v1/chat/completions."""

    model: str | None = None  # None = the default (first) model
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # vLLM extra; -1 or 0 = off
    n: int | None = 1
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None  # vLLM extra
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    # temper: which decoding strategy and its parameters, e.g. {"strategy": "power", "alpha": 4}
    decoding: dict[str, Any] | None = None
    # OpenAI / vLLM fields we cannot honour; accepted at their neutral values only
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def include_usage(self) -> bool:
        """A streamed response ends with a usage chunk (stream_options.include_usage)."""
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(GenerationRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = 16  # OpenAI's and vLLM's default for completions
    echo: bool | None = False
    logprobs: int | None = None  # top-k alternatives per token (0 = only the chosen token)
    best_of: int | None = None
    suffix: str | None = None


class ContentPart(_Body):
    type: str
    text: str | None = None


class ChatMessage(_Body):
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None


class ChatCompletionRequest(GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None  # None = what the context leaves (vLLM's default for chat)
    max_completion_tokens: int | None = None  # OpenAI's newer name; wins over max_tokens
    logprobs: bool | None = False
    top_logprobs: int | None = None
    add_generation_prompt: bool = True  # vLLM extra
    tools: list[Any] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None


class LogprobsRequest(_Body):
    """POST /v1/logprobs: raw log-probs of given sequences under a model (teacher scoring)."""

    model: str | None = None
    # a text, a list of texts, token ids, or a list of token-id lists
    prompt: str | list[str] | list[int] | list[list[int]]
    top_logprobs: int = 0
    start: int = 1  # first position scored (position j is scored given tokens < j)
    add_special_tokens: bool = True

    @field_validator("start")
    @classmethod
    def _start(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be >= 1 (the first token has no context to be scored in)")
        return v


class TokenizeRequest(_Body):
    """POST /tokenize, as vLLM: either a prompt or chat messages."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True
    return_token_strs: bool = False


class DetokenizeRequest(_Body):
    model: str | None = None
    tokens: list[int]
