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
- Given rollouts (`rollout_texts`): the anchor synthesises from these texts instead of drawing
  rollouts itself. This is CaT-RL's case: the learner's policy already drew its G rollouts (for
  GRPO's group baseline), and the frozen anchor must reconcile exactly those; the request's own
  model then only names the default anchor, and its prompt is the question (used only with
  include_question).

An anchor with a different tokenizer returns its choices with their text (the ids are in its
own vocabulary) and refuses `logprobs`; one sharing the tokenizer behaves like the model itself.

Metadata: rollouts and the exact anchor prompt text (only with return_rollouts), anchor prompt
length, truncation per rollout, the rollouts' extracted answers and their vote table, each
synthesis's extracted answer (CaT's verifiable reward compares the two), tokens generated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from pydantic import BaseModel, Field

from temper.decoding.answers import extract_answer, majority_vote
from temper.decoding.engine import Engine, TokenCallback, Tokenizer
from temper.decoding.errors import ContextLengthError, ParamError
from temper.decoding.strategies.base import DecodeRequest
from temper.decoding.strategies.completion import StrategyResult, completion_text
from temper.decoding.strategies.rollouts import (
    MAX_ROLLOUTS,
    ExtractorName,
    RolloutParams,
    RolloutStrategy,
    draw_rollouts,
    sequence_score,
)
from temper.decoding.strategies.sample import sample_completions
from temper.decoding.synthesis_prompt import build_prompt, check_template, resolve_template

ANCHOR_STREAM = 2  # the anchor's seed sub-stream (the rollouts draw from ROLLOUT_STREAM)


class SynthesisParams(RolloutParams):
    rollouts: int = Field(default=8, ge=1, le=MAX_ROLLOUTS)
    # rollouts given as text (CaT-RL: the policy's own); none are drawn, `rollouts` is their count
    rollout_texts: list[str] | None = Field(default=None, min_length=1, max_length=MAX_ROLLOUTS)
    anchor_model: str | None = None  # a served model's name; default: the request's model
    include_question: bool = False
    template: str | None = None  # a preset name or text with {rollouts}; default: server's
    extractor: ExtractorName = "auto"  # for the answers reported in the metadata
    # inner defaults to sample at temperature 1; return_rollouts adds the exact anchor prompt


@dataclass(frozen=True, slots=True)
class AnchorPlan:
    """What the checks before sampling settle: the anchor, whether its vocabulary differs from
    the request model's, and the build_prompt arguments that fit its context."""

    anchor: Engine
    foreign: bool
    fit: dict[str, Any]


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


class SynthesisStrategy(RolloutStrategy):
    name = "synthesis"
    Params = SynthesisParams
    default_inner = {"strategy": "sample", "temperature": 1.0}
    choices_are_rollouts = False  # the choices are the anchor's answers

    def parse(self, raw: Mapping[str, Any]) -> BaseModel:
        params = super().parse(raw)
        given = params.rollout_texts
        if given is not None:
            if params.inner is not None:
                raise ParamError(
                    "decoding.inner: nothing is drawn when decoding.rollout_texts are given", "decoding.inner"
                )
            if "rollouts" in params.model_fields_set and params.rollouts != len(given):
                raise ParamError(
                    f"decoding.rollouts: {params.rollouts} does not match the {len(given)} rollout_texts given",
                    "decoding.rollouts",
                )
            params = params.model_copy(update={"rollouts": len(given)})
        return params

    def sampled_logprobs(self, params: SynthesisParams) -> bool:
        return True  # the choices are the anchor's, sampled token by token

    def check_params(self, params: SynthesisParams) -> None:
        if params.template is not None:
            check_template(params.template)

    def plan(self, req: DecodeRequest, params: SynthesisParams) -> AnchorPlan:
        """Every check that can be made before sampling, so a bad request costs nothing."""
        anchor = resolve_anchor(req, params.anchor_model)
        s = req.settings
        foreign = not same_vocabulary(anchor.tokenizer, req.engine.tokenizer)
        if foreign and s.logprobs:
            raise ParamError(
                f"logprobs: not available when decoding.anchor_model ({anchor.name!r}) has a different "
                "tokenizer from the request's model: its tokens cannot be reported in that vocabulary",
                "logprobs",
            )
        fit = dict(
            template=resolve_template(params.template, req.options.synthesis_template),
            max_context=anchor.max_context,
            answer_tokens=s.max_tokens,
            question=question_text(req) if params.include_question else None,
        )
        try:
            build_prompt(anchor.tokenizer, [""] * params.rollouts, **fit)
        except ContextLengthError as exc:
            param = "max_tokens" if s.max_tokens is not None else "decoding.template"
            raise ParamError(f"{param}: {exc} (anchor {anchor.name!r})", param) from None
        return AnchorPlan(anchor, foreign, fit)

    def cost(self, req: DecodeRequest, params: SynthesisParams) -> int:
        """The rollouts' (none when given), then n anchor answers of at most the anchor's budget."""
        plan = self.plan(req, params)
        answer = req.settings.max_tokens or plan.anchor.max_context // 2  # build_prompt's default room
        drawn = 0 if params.rollout_texts is not None else super().cost(req, params)
        return drawn + req.settings.n * answer

    def check(self, req: DecodeRequest, params: SynthesisParams) -> None:
        self.plan(req, params)
        if params.rollout_texts is None:
            self.check_rollouts(req, params, params.rollouts, choices=False)

    async def rollouts(self, req: DecodeRequest, params: SynthesisParams) -> tuple[StrategyResult, list[str]]:
        """The rollouts to synthesise from (drawn by the inner strategy, or given) and their texts."""
        if params.rollout_texts is not None:
            return StrategyResult(completions=[], completion_tokens=0), list(params.rollout_texts)
        drawn = await draw_rollouts(req, self.inner(params), params.rollouts, choices=False)
        return drawn, [completion_text(req.engine.tokenizer, c) for c in drawn.completions]

    async def run(
        self, req: DecodeRequest, params: SynthesisParams, on_token: TokenCallback | None = None
    ) -> StrategyResult:
        plan = self.plan(req, params)
        anchor = plan.anchor
        drawn, texts = await self.rollouts(req, params)
        try:
            prompt = build_prompt(anchor.tokenizer, texts, **plan.fit)
        except ContextLengthError as exc:
            raise ParamError(f"decoding.rollouts: {exc}", "decoding.rollouts") from None

        s = req.settings
        anchor_req = replace(req, prompt=prompt.ids, engine=anchor, prompt_text=None)
        outs = await sample_completions(anchor_req, s.n, ANCHOR_STREAM)
        for c in outs:
            text = completion_text(anchor.tokenizer, c)
            if plan.foreign:  # ids in the anchor's vocabulary: the edge must not decode them itself
                c.text = text
            c.metadata = {**c.metadata, "answer": extract_answer(text, params.extractor)}
        anchor_tokens = sum(len(c.tokens) for c in outs)
        meta = self.metadata(params, drawn, texts, prompt, outs, anchor)
        return StrategyResult(
            completions=outs,
            completion_tokens=drawn.completion_tokens + anchor_tokens,
            extra_prompt_tokens=drawn.extra_prompt_tokens + len(prompt.ids),
            metadata=meta,
        )

    def metadata(self, params, drawn, texts, prompt, outs, anchor: Engine) -> dict[str, Any]:
        answers = [extract_answer(t, params.extractor) for t in texts]
        scores = [sequence_score(c.logp) if c.logp is not None else 0.0 for c in drawn.completions]
        scores = scores or [0.0] * len(texts)  # given rollouts: votes alone rank the answers
        anchor_tokens = sum(len(c.tokens) for c in outs)
        meta: dict[str, Any] = {
            "strategy": self.name,
            "anchor_model": anchor.name,
            "inner": drawn.metadata if params.rollout_texts is None else None,
            "anchor_prompt_tokens": len(prompt.ids),
            "truncated": prompt.truncated,
            "rollout_tokens": prompt.lengths,
            "rollout_tokens_kept": prompt.kept,
            "answers": answers,
            "votes": majority_vote(answers, scores).table,
            "synthesis_answers": [c.metadata["answer"] for c in outs],
            "rollout_tokens_generated": drawn.completion_tokens,
            "tokens_generated": drawn.completion_tokens + anchor_tokens,
        }
        if params.return_rollouts:
            meta["rollouts"] = texts
            meta["anchor_prompt"] = anchor.tokenizer.decode(prompt.ids, skip_special_tokens=False)
        return meta
