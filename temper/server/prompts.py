"""Prompt building: a parsed request body → a validated Generation.

Text, chat messages or token ids become token ids; the request's fields become SamplingSettings
and a strategy with its Params; every check that can fail a request (HTTP 400) happens here,
before any engine work, for streamed and unstreamed requests alike. Nothing after this reads
the body again, and nothing writes to what this builds.

The tokenizer runs here; blocking work (tokenising, chat templates) is the caller's to move
off the event loop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from temper.decoding.engine import Engine, TokenCallback
from temper.decoding.errors import ParamError, param_error_from
from temper.decoding.strategies.base import DecodeRequest, Strategy, StrategyOptions
from temper.decoding.strategies.completion import StrategyResult
from temper.decoding.strategies.registry import parse_decoding
from temper.decoding.strategies.settings import SamplingSettings
from temper.server.errors import bad_request
from temper.server.protocol import ChatCompletionRequest, ChatMessage, CompletionRequest, GenerationRequest

MAX_PROMPTS = 256
ROLES = {"system", "user", "assistant", "tool", "developer"}


@dataclass(frozen=True, slots=True)
class PromptRun:
    """One strategy run: one prompt of a request, numbered `index` among its prompts."""

    req: DecodeRequest
    strategy: Strategy
    params: BaseModel
    index: int
    text: str | None  # the prompt as the client sent it (echo), when it was text

    async def run(self, on_token: TokenCallback | None = None) -> StrategyResult:
        return await self.strategy.run(self.req, self.params, on_token)


@dataclass(frozen=True, slots=True)
class Generation:
    """A validated /v1/completions or /v1/chat/completions request."""

    kind: Literal["completion", "chat"]
    model: str
    engine: Engine
    runs: list[PromptRun]
    stride: int  # choices per prompt (the strategy's n): choice index = prompt index × stride + i
    logprobs: int | None  # top alternatives per token when log-probs are asked for, else None
    echo: bool = False
    stream: bool = False
    include_usage: bool = False
    processed: bool = False  # log-probs of the distribution sampled (--logprobs-mode processed_logprobs)
    prompt_logprobs: int | None = None  # vLLM's prompt_logprobs: the prompt's own log-probs + top-k
    return_token_ids: bool = False  # prompt_token_ids and token_ids in the response
    as_ids: bool = False  # log-prob tokens read "token_id:<id>"
    request_id: str | None = None  # the client's id for the response (vLLM's request_id)
    cost: int = 0  # worst-case tokens the request may generate (all its prompt runs)

    @property
    def strategy(self) -> Strategy:
        return self.runs[0].strategy


# ------------------------------------------------------------------------------ request checks


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


# ------------------------------------------------------------------------------------ prompts


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


def encode_prompts(
    engine: Engine, prompt, add_special_tokens: bool = True, *, bound: bool = True
) -> list[tuple[list[int], str | None]]:
    """(token ids, text or None) per prompt, whichever of OpenAI's four prompt forms was sent."""
    if isinstance(prompt, str):
        prompts = [prompt]
    elif not prompt:
        raise bad_request("prompt: must not be empty", "prompt")
    elif isinstance(prompt[0], int):
        prompts = [prompt]
    else:
        prompts = list(prompt)
    if any(p == "" or (isinstance(p, list) and not p) for p in prompts):
        raise bad_request("prompt: must not be empty", "prompt")
    if len(prompts) > MAX_PROMPTS:
        raise bad_request(f"prompt: at most {MAX_PROMPTS} prompts per request", "prompt")
    if bound:
        check_length_bound(engine, [p for p in prompts if isinstance(p, str)], "prompt")
    out = []
    for p in prompts:
        if isinstance(p, str):
            out.append((engine.tokenizer.encode(p, add_special_tokens=add_special_tokens), p))
        else:
            ids = [int(t) for t in p]
            check_token_ids(engine, ids, "prompt")
            out.append((ids, None))
    return out


def message_dicts(messages: list[ChatMessage]) -> list[dict[str, str]]:
    """Messages as the chat template wants them: role and text content (text parts joined)."""
    out = []
    for i, m in enumerate(messages):
        if m.role not in ROLES:
            raise bad_request(f"messages.{i}.role: unknown role {m.role!r}", f"messages.{i}.role")
        content = m.content
        if isinstance(content, list):
            parts = []
            for p in content:
                if p.type != "text" or p.text is None:
                    raise bad_request(
                        f"messages.{i}.content: only text parts are supported, got {p.type!r}", f"messages.{i}.content"
                    )
                parts.append(p.text)
            content = "".join(parts)
        d = {"role": "system" if m.role == "developer" else m.role, "content": content or ""}
        if m.name:
            d["name"] = m.name
        out.append(d)
    return out


def render_chat(engine: Engine, messages: list[dict[str, str]], add_generation_prompt: bool) -> list[int]:
    """Messages through the model's own chat template (never flattened into a transcript by us)."""
    try:
        return engine.tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
    except Exception as exc:  # jinja errors from templates that refuse a message order
        raise bad_request(f"messages: the model's chat template rejected them: {exc}", "messages") from None


# --------------------------------------------------------------------------------- generation


@dataclass(frozen=True, slots=True)
class Target:
    """The served model a request runs on, the others (anchors, teachers), and what the server
    allows: strategy options, the log-prob cap and mode."""

    name: str
    engine: Engine
    engines: Mapping[str, Engine]
    options: StrategyOptions
    max_logprobs: int = 20  # -1 = the whole vocabulary
    processed: bool = False  # --logprobs-mode processed_logprobs
    max_request_tokens: int | None = None  # --max-request-tokens: the most one request may cost

    def cap(self, k: int | None) -> int | None:
        """vLLM's -1 (every token) as a count."""
        return self.engine.tokenizer.vocab_size if k == -1 else k


def prompt_runs(
    target: Target,
    prompts: Sequence[tuple[list[int], str | None]],
    settings: SamplingSettings,
    decoding: Mapping[str, Any] | None,
    question: str | None = None,
) -> tuple[list[PromptRun], int, int]:
    """One PromptRun per prompt, all with the request's strategy (validated once), checked by
    the strategy before any engine work; the choices per prompt; the request's cost."""
    strategy, params = parse_decoding(decoding)
    if settings.logprobs and target.processed and not strategy.sampled_logprobs(params):
        raise bad_request(
            f"logprobs: this server reports processed log-probs (--logprobs-mode processed_logprobs), and "
            f"strategy {strategy.name!r} has none: its answers are chosen over whole responses, not drawn "
            "token by token. Ask for raw log-probs from a server in raw_logprobs mode, or use /v1/logprobs.",
            "logprobs",
        )
    settings = strategy.settings(settings, params)
    runs = []
    for i, (ids, text) in enumerate(prompts):
        req = DecodeRequest(
            prompt=list(ids),
            settings=settings,
            engine=target.engine,
            engines=target.engines,
            prompt_text=question if question is not None else text,
            options=target.options,
        )
        strategy.check(req, params)
        runs.append(PromptRun(req, strategy, params, i, text))
    cost = sum(strategy.cost(r.req, params) for r in runs)
    limit = target.max_request_tokens
    if limit is not None and cost > limit:
        knob = strategy.cost_knob(params)
        raise bad_request(
            f"{knob}: this request may generate up to {cost} tokens (its worst case: every proposal, "
            f"particle and rollout counted), more than this server's limit of {limit} "
            f"(--max-request-tokens); lower {knob}, max_tokens or n",
            knob,
        )
    return runs, settings.n, cost


def generation(
    target: Target, kind, body: GenerationRequest, planned: tuple[list[PromptRun], int, int], k: int | None, **kw
) -> Generation:
    runs, stride, cost = planned
    return Generation(
        kind,
        target.name,
        target.engine,
        runs,
        stride,
        k,
        stream=bool(body.stream),
        include_usage=body.include_usage(),
        processed=target.processed,
        prompt_logprobs=target.cap(body.prompt_logprobs),
        return_token_ids=bool(body.return_token_ids),
        as_ids=bool(body.return_tokens_as_token_ids),
        request_id=body.request_id,
        cost=cost,
        **kw,
    )


def build_completion(target: Target, body: CompletionRequest) -> Generation:
    """/v1/completions: text or token-id prompts (one or many), echo, legacy log-probs."""
    reject_unsupported(body, COMPLETION_NEUTRAL)
    check_logprob_fields(body, body.logprobs, "logprobs", target)
    k = target.cap(body.logprobs)
    settings = sampling_settings(
        body, target, max_tokens=body.max_tokens, logprobs=k, aliases={"top_logprobs": "logprobs"}
    )
    prompts = encode_prompts(target.engine, body.prompt, body.add_special_tokens)
    for ids, _ in prompts:
        check_prompt(target.engine, ids, settings.max_tokens, "prompt")
    planned = prompt_runs(target, prompts, settings, body.decoding)
    return generation(target, "completion", body, planned, k, echo=bool(body.echo))


def build_chat(target: Target, body: ChatCompletionRequest) -> Generation:
    """/v1/chat/completions: messages through the chat template, OpenAI's chat log-probs."""
    reject_unsupported(body, CHAT_NEUTRAL)
    if body.top_logprobs is not None and not body.logprobs and body.top_logprobs > 0:
        raise bad_request("top_logprobs: requires logprobs to be true", "top_logprobs")
    check_logprob_fields(body, body.top_logprobs, "top_logprobs", target)
    max_tokens, alias = body.max_tokens, "max_tokens"
    if body.max_completion_tokens is not None:
        max_tokens, alias = body.max_completion_tokens, "max_completion_tokens"
    k = target.cap(body.top_logprobs or 0) if body.logprobs else None
    settings = sampling_settings(body, target, max_tokens=max_tokens, logprobs=k, aliases={"max_tokens": alias})
    messages = message_dicts(body.messages)
    check_length_bound(target.engine, [m["content"] for m in messages], "messages")
    ids = render_chat(target.engine, messages, body.add_generation_prompt)
    check_prompt(target.engine, ids, settings.max_tokens, "messages")
    question = next((m["content"] for m in reversed(messages) if m["role"] == "user"), None)
    planned = prompt_runs(target, [(ids, None)], settings, body.decoding, question)
    return generation(target, "chat", body, planned, k)
