"""`synthesis`: Compute as Teacher at inference time (research/training_methods.md §1).

G rollouts are drawn from the request's model by an inner strategy (default `sample` at
temperature 1; any registered strategy such as `power`); then an anchor model (default the
same model, `anchor_model` names another served one) is given a synthesis prompt built from the
rollouts only (the question is withheld unless `include_question`) and writes the final answer
with the request's own sampling settings (temperature, top_p, max_tokens, seed, stop).

- `n` (the request's) = n independent syntheses over ONE rollout set: the anchor runs once with
  n specs on the same prompt. To get syntheses over different rollout sets, send n requests.
- Usage: completion_tokens = every generated token, the inner strategy's (all G rollouts,
  including e.g. power sampling's proposals) plus the anchor's n answers; extra_prompt_tokens =
  the anchor prompt's length (counted once: the n anchor samples share it as a prefix).
- All G rollouts are one inner run with n = G (one engine call for `sample`), and all n
  syntheses one anchor call.
- Room for the answer: max_tokens when set, else as much as the longest rollout (capped at half
  the anchor's context); rollouts that do not fit are cut evenly (see synthesis_prompt).

An anchor with a different tokenizer returns its choices with their text (the ids are in its
own vocabulary) and refuses `logprobs`; one sharing the tokenizer behaves like the model itself.

Metadata: rollouts and the exact anchor prompt text (only with return_rollouts), anchor prompt
length, truncation per rollout, the rollouts' extracted answers and their vote table, each
synthesis's extracted answer (CaT's verifiable reward compares the two), tokens generated.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from temper.decoding.answers import extract_answer, majority_vote
from temper.decoding.engine import ContextLengthError, Engine, Tokenizer
from temper.decoding.strategies.base import Completion, DecodeRequest, ParamError, Strategy, StrategyResult
from temper.decoding.strategies.rollouts import (
    MAX_ROLLOUTS,
    draw_rollouts,
    parse_inner,
    rollout_text,
    sequence_score,
)
from temper.decoding.strategies.sample import sample_completions
from temper.decoding.strategies.self_consistency import check_extractor
from temper.decoding.synthesis_prompt import build_prompt, check_template, resolve_template

DEFAULT_INNER = {"strategy": "sample", "temperature": 1.0}


class SynthesisParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rollouts: int = Field(default=8, ge=1, le=MAX_ROLLOUTS)
    inner: dict[str, Any] | None = None  # decoding object; default: sample at temperature 1
    anchor_model: str | None = None  # a served model's name; default: the request's model
    include_question: bool = False
    template: str | None = None  # a preset name or text with {rollouts}; default: server's
    extractor: str = "auto"  # for the answers reported in the metadata
    return_rollouts: bool = False  # rollout texts and the exact anchor prompt in the metadata


def resolve_anchor(req: DecodeRequest, name: str | None) -> Engine:
    if name is None or (name == req.engine.name and name not in req.engines):
        return req.engine
    if name not in req.engines:
        served = ", ".join(sorted(req.engines)) or req.engine.name
        raise ParamError(
            f"decoding.anchor_model: unknown model {name!r}; served: {served}", "decoding.anchor_model"
        )
    return req.engines[name]


def same_vocabulary(a: Tokenizer, b: Tokenizer) -> bool:
    """Whether token ids mean the same in both (the CaT anchor is usually the policy's own
    initial checkpoint, so this is the common case): then the anchor's tokens are returned as
    they are; otherwise with their text, and without logprobs."""
    if a is b:
        return True
    probe = "Synthesis: 0.5 = \\frac{1}{2}, \\boxed{42} ünïcode\n"
    return (
        a.vocab_size == b.vocab_size
        and tuple(a.eos_ids) == tuple(b.eos_ids)
        and a.encode(probe, add_special_tokens=False) == b.encode(probe, add_special_tokens=False)
    )


def question_text(req: DecodeRequest) -> str:
    """The question as the edge gave it, else the prompt decoded (chat markup and all)."""
    return req.prompt_text if req.prompt_text is not None else req.engine.tokenizer.decode(req.prompt)


class SynthesisStrategy(Strategy):
    name = "synthesis"
    Params = SynthesisParams

    def parse(self, raw: Mapping[str, Any]) -> BaseModel:
        params = super().parse(raw)
        check_extractor(params.extractor)
        if params.template is not None:
            check_template(params.template)
        parse_inner(params.inner, DEFAULT_INNER)
        return params

    async def run(self, req: DecodeRequest, params: SynthesisParams) -> StrategyResult:
        # Everything that can be checked before sampling is, so a bad request costs nothing.
        anchor = resolve_anchor(req, params.anchor_model)
        template = resolve_template(params.template, req.options)
        inner = parse_inner(params.inner, DEFAULT_INNER)
        s = req.settings
        question = question_text(req) if params.include_question else None
        foreign = not same_vocabulary(anchor.tokenizer, req.engine.tokenizer)
        if foreign and s.logprobs:
            raise ParamError(
                f"logprobs: not available when decoding.anchor_model ({anchor.name!r}) has a different "
                "tokenizer from the request's model: its tokens cannot be reported in that vocabulary",
                "logprobs",
            )
        room = anchor.max_context - (s.max_tokens or 1)
        try:
            build_prompt(anchor.tokenizer, [""] * params.rollouts, template=template,
                         max_prompt_tokens=room, question=question)
        except ContextLengthError as exc:
            param = "max_tokens" if s.max_tokens is not None else "decoding.template"
            raise ParamError(f"{param}: {exc} (anchor {anchor.name!r})", param) from None

        drawn = await draw_rollouts(req, inner, params.rollouts, 1, keep_logprobs=False)
        rollouts = drawn.completions
        texts = [rollout_text(req, c) for c in rollouts]

        if s.max_tokens is None:  # an answer about as long as a rollout, within reason
            longest = max(len(anchor.tokenizer.encode(t, add_special_tokens=False)) for t in texts)
            room = anchor.max_context - min(max(longest, 1), anchor.max_context // 2)
        try:
            prompt = build_prompt(anchor.tokenizer, texts, template=template,
                                  max_prompt_tokens=room, question=question)
        except ContextLengthError as exc:
            raise ParamError(f"decoding.rollouts: {exc}", "decoding.rollouts") from None

        anchor_req = DecodeRequest(
            prompt=prompt.ids, settings=s, engine=anchor, engines=req.engines, options=req.options
        )
        outs = await sample_completions(anchor_req, s, s.n, 2)
        for c in outs:
            if foreign:  # ids in the anchor's vocabulary: the edge must not decode them itself
                c.text = c.text if c.text is not None else anchor.tokenizer.decode(c.tokens)
            c.metadata = {**c.metadata, "answer": extract_answer(_text(anchor, c), params.extractor)}

        answers = [extract_answer(t, params.extractor) for t in texts]
        scores = [sequence_score(c.logp) if c.logp is not None else 0.0 for c in rollouts]
        vote = majority_vote(answers, scores)
        anchor_tokens = sum(len(c.tokens) for c in outs)
        meta: dict[str, Any] = {
            "strategy": self.name,
            "anchor_model": anchor.name,
            "inner": drawn.metadata,
            "anchor_prompt_tokens": len(prompt.ids),
            "truncated": prompt.truncated,
            "rollout_tokens": prompt.lengths,
            "rollout_tokens_kept": prompt.kept,
            "answers": answers,
            "votes": vote.table,
            "synthesis_answers": [c.metadata["answer"] for c in outs],
            "rollout_tokens_generated": drawn.completion_tokens,
            "tokens_generated": drawn.completion_tokens + anchor_tokens,
        }
        if params.return_rollouts:
            meta["rollouts"] = texts
            meta["anchor_prompt"] = anchor.tokenizer.decode(prompt.ids, skip_special_tokens=False)
        return StrategyResult(
            completions=outs,
            completion_tokens=drawn.completion_tokens + anchor_tokens,
            extra_prompt_tokens=drawn.extra_prompt_tokens + len(prompt.ids),
            metadata=meta,
        )


def _text(engine: Engine, c: Completion) -> str:
    return c.text if c.text is not None else engine.tokenizer.decode(c.tokens)
