"""LocalTransport: rollouts, scores and weight updates on Engine objects in this process.

The request path is the server's, minus HTTP: prompts are tokenised as /v1/completions and
/v1/chat/completions tokenise them, the strategy is parsed and checked before anything runs,
and each prompt is one strategy run (all prompts side by side, so the engine batches them).
Rollouts carry the engine's weight_version; `update_weights` loads a checkpoint into an engine
(Engine.load_weights), except into the models named `frozen` (a CaT anchor, an OPD teacher),
as `temper serve --frozen` refuses them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from temper.decoding.engine import Engine, Scored
from temper.decoding.errors import ParamError
from temper.decoding.strategies.base import DecodeRequest, Strategy, StrategyOptions
from temper.decoding.strategies.completion import StrategyResult, completion_text
from temper.decoding.strategies.registry import parse_decoding
from temper.training_adapters.prompt_input import PromptError, PromptInput
from temper.training_adapters.rollout import Rollout, RolloutConfig, RolloutGroup
from temper.training_adapters.transport import gather_all
from temper.training_adapters.vocabulary import Vocabulary, vocabulary_of


@dataclass(frozen=True, slots=True)
class Plan:
    """A checked rollout request: the model, the strategy and one DecodeRequest per prompt."""

    model: str
    strategy: Strategy
    params: BaseModel
    requests: list[DecodeRequest]


def check_ids(engine: Engine, ids: Sequence[int], where: str) -> None:
    vocab = engine.tokenizer.vocab_size
    bad = next((t for t in ids if not 0 <= t < vocab), None)
    if bad is not None:
        raise PromptError(f"{where}: token id {bad} is outside the vocabulary [0, {vocab}) of {engine.name!r}")


def prompt_ids(engine: Engine, p: PromptInput, where: str) -> list[int]:
    """The prompt's token ids as the server's routes would make them."""
    if p.text is not None:
        ids = engine.tokenizer.encode(p.text, add_special_tokens=True)
    elif p.token_ids is not None:
        ids = list(p.token_ids)
        check_ids(engine, ids, where)
    else:
        try:
            ids = engine.tokenizer.apply_chat_template([dict(m) for m in p.messages or ()])
        except Exception as exc:  # templates raise whatever jinja raises
            raise PromptError(f"{where}: the chat template of {engine.name!r} rejected the messages: {exc}") from None
    if not ids:
        raise PromptError(f"{where}: tokenises to no tokens")
    if len(ids) >= engine.max_context:
        raise PromptError(
            f"{where}: {len(ids)} tokens do not fit the context of {engine.name!r} ({engine.max_context} tokens)"
        )
    return ids


class LocalTransport:
    def __init__(
        self,
        engines: Engine | Mapping[str, Engine],
        options: StrategyOptions | None = None,
        frozen: Iterable[str] = (),
    ):
        self.engines: dict[str, Engine] = dict(engines) if isinstance(engines, Mapping) else {engines.name: engines}
        if not self.engines:
            raise ValueError("engines: need at least one")
        self.frozen = frozenset(frozen)
        unknown = sorted(self.frozen - set(self.engines))
        if unknown:
            raise ValueError(f"frozen: unknown model(s) {', '.join(unknown)}; loaded: {', '.join(self.engines)}")
        self.options = options if options is not None else StrategyOptions()
        self.description = f"in-process ({', '.join(self.engines)})"

    @classmethod
    def from_pretrained(
        cls,
        models: str | os.PathLike | Mapping[str, str | os.PathLike],
        *,
        device: str = "cpu",
        dtype: str = "float32",
        options: StrategyOptions | None = None,
        frozen: Iterable[str] = (),
    ) -> LocalTransport:
        """Load HF model directories: one path (served under its directory name) or {name: path}."""
        from temper.decoding.engines.hf import HFEngine

        paths = dict(models) if isinstance(models, Mapping) else {Path(models).name: models}
        engines = {
            name: HFEngine.from_pretrained(path, name=name, device=device, dtype=dtype) for name, path in paths.items()
        }
        return cls(engines, options, frozen)

    def engine(self, model: str | None) -> tuple[str, Engine]:
        name = model if model is not None else next(iter(self.engines))
        if name not in self.engines:
            raise ParamError(f"model: unknown model {name!r}; loaded: {', '.join(self.engines)}", "model")
        return name, self.engines[name]

    async def default_model(self) -> str:
        return next(iter(self.engines))

    def plan(self, prompts: Sequence[PromptInput], config: RolloutConfig) -> Plan:
        name, engine = self.engine(config.model)
        strategy, params = parse_decoding(config.decoding)
        settings = strategy.settings(config.settings(), params)
        requests = []
        for i, p in enumerate(prompts):
            where = f"prompts[{i}]"
            req = DecodeRequest(
                prompt=prompt_ids(engine, p, where),
                settings=settings,
                engine=engine,
                engines=self.engines,
                prompt_text=p.question,
                options=self.options,
            )
            try:
                req.max_new_tokens()
                strategy.check(req, params)
            except ParamError as exc:
                raise ParamError(f"{where}: {exc.message}", exc.param) from None
            requests.append(req)
        return Plan(name, strategy, params, requests)

    async def check(self, prompts: Sequence[PromptInput], config: RolloutConfig) -> None:
        self.plan(prompts, config)

    async def generate(self, prompts: Sequence[PromptInput], config: RolloutConfig) -> list[RolloutGroup]:
        plan = self.plan(prompts, config)
        results = await gather_all(plan.strategy.run(req, plan.params) for req in plan.requests)
        return [self.group(plan, req, res) for req, res in zip(plan.requests, results, strict=True)]

    def group(self, plan: Plan, req: DecodeRequest, result: StrategyResult) -> RolloutGroup:
        # only strategies that draw each token from one known distribution have its log-probs
        per_token = plan.strategy.sampled_logprobs(plan.params)
        rollouts = [
            Rollout(
                token_ids=list(c.tokens),
                text=completion_text(req.engine.tokenizer, c),
                finish_reason=c.finish_reason,
                logprobs=c.logq if per_token else None,
                metadata=dict(c.metadata),
            )
            for c in result.completions
        ]
        version = req.engine.weight_version  # loads wait for running sequences: one version per run
        return RolloutGroup(list(req.prompt), rollouts, plan.model, version, dict(result.metadata))

    async def score(
        self,
        sequences: Sequence[Sequence[int]],
        start: int | Sequence[int] = 1,
        top_k: int = 0,
        model: str | None = None,
    ) -> list[Scored]:
        _, engine = self.engine(model)
        for i, seq in enumerate(sequences):
            check_ids(engine, seq, f"sequences[{i}]")
        return await engine.score([list(s) for s in sequences], start=start, top_k=top_k)

    async def vocabulary(self, model: str | None = None) -> Vocabulary:
        name, engine = self.engine(model)
        return vocabulary_of(name, engine.tokenizer)

    async def update_weights(self, path: str, model: str | None = None) -> int:
        name, engine = self.engine(model)
        if name in self.frozen:
            raise ParamError(f"model: {name!r} is frozen; its weights cannot change", "model")
        await engine.load_weights(path)
        return engine.weight_version

    async def close(self) -> None:
        await gather_all(e.close() for e in self.engines.values())
