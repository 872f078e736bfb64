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
from typing import Any

from temper.decoding.engine import Engine
from temper.decoding.strategies.base import DecodeRequest
from temper.decoding.strategies.registry import parse_decoding
from temper.decoding.strategies.settings import SamplingSettings
from temper.server.errors import bad_request
from temper.server.generation import Generation, PromptRun, Target
from temper.server.protocol import ChatCompletionRequest, ChatMessage, CompletionRequest, GenerationRequest
from temper.server.request_checks import (
    CHAT_NEUTRAL,
    COMPLETION_NEUTRAL,
    check_length_bound,
    check_logprob_fields,
    check_prompt,
    check_token_ids,
    reject_unsupported,
    sampling_settings,
)

MAX_PROMPTS = 256
ROLES = {"system", "user", "assistant", "tool", "developer"}


# ------------------------------------------------------------------------------ request checks


# ------------------------------------------------------------------------------------ prompts


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
