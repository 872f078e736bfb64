"""Request bodies of the HTTP API, mirroring OpenAI's and vLLM's (with vLLM's extensions), as
pydantic models.

Unlike vLLM, which logs and ignores fields it does not know, an unknown field is a 400 naming
it: a client that believes it set something must not get a silent default. Fields temper knows
but cannot honour (penalties, logit_bias, tools, structured outputs...) are accepted only at
their neutral value (`prompts.reject_unsupported` names the field otherwise). Values are checked
where they are used: sampling fields by `SamplingSettings`, the `decoding` object by the chosen
strategy's `Params`. Response bodies are built by responses.py and streaming.py.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Body(BaseModel):
    # strict: JSON true is not the token id 1, 1e30 not an integer; as the schema documents
    model_config = ConfigDict(extra="forbid", strict=True)


def neutral(*values: Any) -> Any:
    """A field temper knows but does not implement: only these values are accepted (the first
    is the default), and the schema says so (prompts.NEUTRAL holds the same values)."""
    return Field(default=values[0], json_schema_extra={"enum": list(values)})


class StreamOptions(_Body):
    include_usage: bool = False
    continuous_usage_stats: bool = False  # vLLM; accepted only as false


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
    ignore_eos: bool = False  # vLLM extra: only stop_token_ids (and max_tokens) end a choice
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    # temper: which decoding strategy and its parameters, e.g. {"strategy": "power", "alpha": 4}
    decoding: dict[str, Any] | None = None
    # vLLM's token-level extensions (what RL trainers such as TRL's VLLMClient read)
    return_token_ids: bool | None = None  # prompt_token_ids and token_ids in the response
    return_tokens_as_token_ids: bool | None = None  # log-prob tokens read "token_id:<id>"
    prompt_logprobs: int | None = None  # log-probs of the prompt's own tokens (+ top-k)
    request_id: str | None = None  # vLLM: becomes the response id
    user: str | None = None  # OpenAI: an end-user id, for the caller's own bookkeeping
    # Known, but only honoured at their neutral values (a 400 names them otherwise)
    min_p: float | None = neutral(None, 0, 0.0)
    presence_penalty: float | None = neutral(None, 0, 0.0)
    frequency_penalty: float | None = neutral(None, 0, 0.0)
    repetition_penalty: float | None = neutral(None, 1, 1.0)
    logit_bias: dict[str, float] | None = neutral(None, {})
    min_tokens: int | None = neutral(None, 0)
    skip_special_tokens: bool | None = neutral(None, True)
    spaces_between_special_tokens: bool | None = neutral(None, True)
    include_stop_str_in_output: bool | None = neutral(None, False)
    allowed_token_ids: list[int] | None = neutral(None)
    bad_words: list[str] | None = neutral(None, [])
    logprob_token_ids: list[int] | None = neutral(None)
    structured_outputs: dict[str, Any] | None = neutral(None)
    response_format: dict[str, Any] | None = None
    use_beam_search: bool | None = neutral(None, False)
    length_penalty: float | None = neutral(None, 1, 1.0)
    truncate_prompt_tokens: int | None = neutral(None)
    priority: int | None = neutral(None, 0)
    cache_salt: str | None = neutral(None)
    vllm_xargs: dict[str, Any] | None = neutral(None, {})
    kv_transfer_params: dict[str, Any] | None = neutral(None)

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
    add_special_tokens: bool = True  # vLLM: tokenise text prompts with the model's special tokens
    best_of: int | None = neutral(None, 1)
    suffix: str | None = neutral(None, "")


class ContentPart(_Body):
    type: str
    text: str | None = None


class ChatMessage(_Body):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class ChatCompletionRequest(GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None  # None = what the context leaves (vLLM's default for chat)
    max_completion_tokens: int | None = None  # OpenAI's newer name; wins over max_tokens
    logprobs: bool | None = False
    top_logprobs: int | None = None
    add_generation_prompt: bool = True  # vLLM extra
    # Known, but only honoured at their neutral values
    continue_final_message: bool | None = neutral(None, False)
    echo: bool | None = neutral(None, False)
    add_special_tokens: bool | None = neutral(None, False)
    chat_template: str | None = neutral(None)
    chat_template_kwargs: dict[str, Any] | None = neutral(None, {})
    tools: list[Any] | None = neutral(None, [])
    tool_choice: Any = neutral(None, "none", "auto")
    parallel_tool_calls: bool | None = neutral(None, True, False)
    documents: list[Any] | None = neutral(None, [])
    reasoning_effort: str | None = neutral(None)
    store: bool | None = neutral(None, False)
    metadata: dict[str, Any] | None = None


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


class UpdateWeightsRequest(_Body):
    """POST /update_weights_from_disk: new weights for a served model, from a checkpoint."""

    path: str  # a directory of .safetensors files, or one .safetensors file
    model: str | None = None  # a served model's name; None = the default model
