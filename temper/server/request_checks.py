"""The checks of a request's fields that make a 400 before any engine work: fields temper does
not implement (accepted at their neutral value only), log-prob limits, sampling settings (a bad
value names the field the client sent), token ids, and prompts that cannot fit the context.
Used by prompt building (prompts.py) and the scoring route."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from temper.decoding.engine import Engine
from temper.decoding.errors import ParamError, param_error_from
from temper.decoding.strategies.settings import SamplingSettings
from temper.server.errors import bad_request
from temper.server.generation import Target
from temper.server.protocol import GenerationRequest

# Fields temper knows but does not implement, and the values that mean "off" (accepted).
NEUTRAL: dict[str, tuple] = {
    "min_p": (None, 0, 0.0),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "repetition_penalty": (None, 1, 1.0),
    "logit_bias": (None, {}),
    "min_tokens": (None, 0),
    "skip_special_tokens": (None, True),
    "spaces_between_special_tokens": (None, True),
    "include_stop_str_in_output": (None, False),
    "allowed_token_ids": (None,),
    "bad_words": (None, []),
    "logprob_token_ids": (None,),
    "structured_outputs": (None,),
    "use_beam_search": (None, False),
    "length_penalty": (None, 1, 1.0),
    "truncate_prompt_tokens": (None,),
    "priority": (None, 0),
    "cache_salt": (None,),
    "vllm_xargs": (None, {}),
    "kv_transfer_params": (None,),
}


COMPLETION_NEUTRAL: dict[str, tuple] = {"best_of": (None, 1), "suffix": (None, "")}


CHAT_NEUTRAL: dict[str, tuple] = {
    "tools": (None, []),
    "tool_choice": (None, "none", "auto"),
    "parallel_tool_calls": (None, True, False),
    "continue_final_message": (None, False),
    "echo": (None, False),
    "add_special_tokens": (None, False),
    "chat_template": (None,),
    "chat_template_kwargs": (None, {}),
    "documents": (None, []),
    "reasoning_effort": (None,),
    "store": (None, False),
}


def reject_unsupported(body: GenerationRequest, neutral: Mapping[str, tuple]) -> None:
    """400 for fields we cannot honour, unless they hold their neutral value."""
    for name, ok in {**NEUTRAL, **neutral}.items():
        v = getattr(body, name)
        if v not in ok:
            raise bad_request(f"{name}: {v!r} is not supported by this server (only {ok[-1]!r})", name)
    fmt = body.response_format
    if fmt is not None and fmt.get("type", "text") != "text":
        raise bad_request("response_format: only {'type': 'text'} is supported", "response_format")
    if body.stream_options is not None:
        if not body.stream:
            raise bad_request("stream_options: only allowed when stream is true", "stream_options")
        if body.stream_options.continuous_usage_stats:
            raise bad_request("stream_options.continuous_usage_stats: not supported", "stream_options")


def check_logprob_fields(body: GenerationRequest, k: int | None, k_param: str, target: Target) -> None:
    """vLLM's limits on log-prob requests: at most --max-logprobs alternatives (-1 = no cap;
    a request's -1 asks for the whole vocabulary), and no prompt_logprobs in a stream."""
    p = body.prompt_logprobs
    if p is not None and p < 0 and p != -1:
        raise bad_request("prompt_logprobs: must be a positive value or -1", "prompt_logprobs")
    if p is not None and body.stream:
        raise bad_request("prompt_logprobs: not available when stream is true", "prompt_logprobs")
    cap = target.max_logprobs
    for name, want in ((k_param, k), ("prompt_logprobs", p)):
        want = target.cap(want)
        if want is not None and cap != -1 and want > cap:
            raise bad_request(f"{name}: {want} requested, more than this server's --max-logprobs {cap}", name)


def sampling_settings(
    body: GenerationRequest,
    target: Target,
    *,
    max_tokens: int | None,
    logprobs: int | None,
    aliases: Mapping[str, str] = {},
) -> SamplingSettings:
    """The request's SamplingSettings; a bad value is a 400 naming the field the client sent
    (`aliases` maps settings names back, e.g. top_logprobs → logprobs for completions)."""
    if max_tokens is not None and max_tokens <= 0:
        p = aliases.get("max_tokens", "max_tokens")
        raise ParamError(f"{p}: must be at least 1, got {max_tokens}", p)
    data: dict[str, Any] = {
        "max_tokens": max_tokens,
        "stop": body.stop_list(),
        "logprobs": logprobs is not None,
        "top_logprobs": logprobs or 0,
        "logprobs_mode": "processed" if target.processed else "raw",
        "ignore_eos": body.ignore_eos,
    }
    for name in ("temperature", "top_p", "top_k", "n", "seed", "stop_token_ids"):
        v = getattr(body, name)
        if v is not None:
            data[name] = v
    try:
        settings = SamplingSettings.model_validate(data)
    except ValidationError as exc:
        err = param_error_from(exc)
        head = (err.param or "").split(".")[0]
        if head in aliases:
            p = aliases[head]
            raise ParamError(err.message.replace(head, p, 1), p) from None
        raise err from None
    check_token_ids(target.engine, settings.stop_token_ids, "stop_token_ids")
    return settings


def check_token_ids(engine: Engine, ids: Sequence[int], param: str) -> None:
    """400 for token ids outside the model's vocabulary."""
    vocab = engine.tokenizer.vocab_size
    bad = next((t for t in ids if not 0 <= t < vocab), None)
    if bad is not None:
        raise bad_request(f"{param}: token id {bad} is outside the vocabulary [0, {vocab})", param)


def check_prompt(engine: Engine, ids: Sequence[int], max_tokens: int | None, param: str) -> None:
    """400s for an empty prompt or one that leaves no room (vLLM's wording). Token ids were
    checked against the vocabulary when the prompt was read."""
    if not ids:
        raise bad_request(f"{param}: must not be empty", param)
    ctx = engine.max_context
    if len(ids) >= ctx:
        raise bad_request(
            f"This model's maximum context length is {ctx} tokens. However, your {param} has "
            f"{len(ids)} tokens, which leaves no room for a completion. Please reduce its length.",
            param,
        )
    if max_tokens is not None and len(ids) + max_tokens > ctx:
        raise bad_request(
            f"This model's maximum context length is {ctx} tokens. However, you requested "
            f"{len(ids) + max_tokens} tokens ({len(ids)} in the {param}, {max_tokens} in the "
            f"completion). Please reduce the length of the {param} or completion.",
            "max_tokens",
        )


def check_length_bound(engine: Engine, texts: Sequence[str], param: str) -> None:
    """400 for text that cannot fit the model's context whatever its tokens: B bytes are at
    least B / (the most bytes a token stands for) tokens. Refusing it here costs microseconds;
    tokenising a multi-megabyte prompt only to refuse it costs seconds of CPU."""
    most = getattr(engine.tokenizer, "max_token_bytes", None)
    if not most:
        return
    least = sum(len(t.encode("utf-8", "surrogatepass")) for t in texts) // most
    if least >= engine.max_context:
        raise bad_request(
            f"This model's maximum context length is {engine.max_context} tokens. However, your {param} "
            f"holds at least {least} tokens. Please reduce its length.",
            param,
        )
