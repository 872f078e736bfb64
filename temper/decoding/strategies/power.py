"""`power`: sample whole responses from p(x)^α (research/power_sampling.md §9, /work/notes/lookahead.md).

What this is: the strategy — the checks on a request, its worst-case cost, the final
completions and metadata — dispatching to one of three algorithms (their shared parameters
and token budget live in power_params.py, the cost bounds in power_cost.py):
  * method "mh"        (power_mh.py): blockwise Metropolis-Hastings / i-SIR, cuts over the real
                        length, early rejection, chains as their own tasks (exact);
  * method "smc"       (power_smc.py): Power-SMC with systematic resampling (exact as N grows;
                        its evidence estimate is unbiased at any N);
  * method "lookahead" (power_lookahead_sampler.py): the MCMC-free sampler of Ji et al. (biased).
proposal "lookahead" (mh, smc) draws each token at a gated context from the look-ahead proposal
r (power_lookahead.py) instead of q; weights use r's actual probabilities, so the target stays
exactly p^α. n is the number of independent chains / particle systems / responses.

What this is not: the math (temper.decoding.power_math, lookahead_math, the Triton kernels) or
token streaming: a power sample is only final at the end of the run (`streams_tokens` False).

Proposals are tempered samples of the request's model; the request's temperature is ignored
(α sets it) but its top_k / top_p apply, which makes the target p^α restricted to the kept
tokens (log_w accounts for the truncation, §2.3). Stop tokens and stop strings end a
response wherever they appear, inside every proposal, particle and rollout (absorbing), so
the target is p^α of the text the user gets.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence

import numpy as np

from temper.decoding.counting_engine import CountingEngine
from temper.decoding.engine import TokenCallback
from temper.decoding.errors import ParamError
from temper.decoding.strategies.base import DecodeRequest, Strategy
from temper.decoding.strategies.completion import Completion, StrategyResult, apply_stops, fill_logprobs
from temper.decoding.strategies.power_cost import check_in_flight, power_cost
from temper.decoding.strategies.power_decode import SuffixDecoder
from temper.decoding.strategies.power_lookahead import Lookahead
from temper.decoding.strategies.power_lookahead_sampler import run_lookahead
from temper.decoding.strategies.power_mh import run_mh
from temper.decoding.strategies.power_params import MH_ONLY, SAMPLER_ONLY, SMC_ONLY, PowerParams, token_budget
from temper.decoding.strategies.power_smc import run_smc

ALGORITHMS = {"mh": run_mh, "smc": run_smc, "lookahead": run_lookahead}


async def finish_completions(
    req: DecodeRequest,
    outputs: Sequence[tuple[Sequence[int], np.ndarray]],
    metadata: Sequence[dict],
) -> list[Completion]:
    """Completions from final (tokens, logp) pairs: the tokens end at the first stop token
    (states never hold tokens past it), finish_reason "stop" iff they end with one, stop
    strings cut the text as in `sample`, and top-k alternatives come from one score call."""
    stop = set(req.stop_ids())
    s = req.settings
    out = []
    for (tokens, logp), meta in zip(outputs, metadata, strict=True):
        tokens = [int(t) for t in tokens]
        finish = "stop" if tokens and tokens[-1] in stop else "length"
        c = Completion(tokens=tokens, finish_reason=finish, logp=np.asarray(logp, np.float32), metadata=meta)
        out.append(apply_stops(req.engine.tokenizer, c, s.stop))
    await fill_logprobs(req.engine, req.prompt, out, top_k=s.top_logprobs)
    return out


class PowerStrategy(Strategy):
    name = "power"
    Params = PowerParams
    streams_tokens = False  # nothing is final before the chain / particle system ends

    @classmethod
    def json_schemas(cls) -> list[dict]:
        """One schema per method: a knob of the other method is a 400, so neither lists it."""
        full = PowerParams.model_json_schema()
        foreign = {
            "mh": (*SMC_ONLY, *SAMPLER_ONLY),
            "smc": (*MH_ONLY, *SAMPLER_ONLY, "block_size"),
            "lookahead": (*MH_ONLY, *SMC_ONLY, "proposal", "lookahead_eps"),
        }
        variants = []
        for method, others in foreign.items():
            props = {k: v for k, v in full["properties"].items() if k not in others}
            props["method"] = {**props["method"], "enum": [method]}
            required = ["method"] if method != "mh" else []  # mh is the default
            variants.append({**full, "properties": props, "required": required})
        return variants

    def check(self, req: DecodeRequest, params: PowerParams) -> None:
        if not req.prompt:
            raise ParamError("prompt: must hold at least one token", "prompt")
        T = token_budget(req, params)  # the 400 for a prompt that fills the context
        check_in_flight(params, int(req.settings.n), T, req.options.max_sequences)
        s = req.settings
        if params.uses_lookahead and params.lookahead_rollout == "p" and (s.top_k_or_off or s.top_p < 1):
            raise ParamError(
                "lookahead_rollout: 'p' rollouts sample the untruncated model, so they cannot estimate the "
                "future factor of a top_k / top_p request; use 'q'",
                "decoding.lookahead_rollout",
            )

    def cost(self, req: DecodeRequest, params: PowerParams) -> int:
        return power_cost(params, int(req.settings.n), token_budget(req, params))

    def cost_knob(self, params: PowerParams) -> str:
        if params.uses_lookahead:
            return "decoding.lookahead_m"
        return "decoding.particles" if params.method == "smc" else "decoding.mcmc_steps"

    async def run(
        self, req: DecodeRequest, params: PowerParams, on_token: TokenCallback | None = None
    ) -> StrategyResult:
        t0 = time.perf_counter()
        self.check(req, params)
        max_tokens = token_budget(req, params)
        seed = params.seed if params.seed is not None else req.settings.seed
        n = int(req.settings.n)
        calls = CountingEngine(req.engine)
        la_cfg = params.lookahead(max_tokens)
        la = None
        if la_cfg is not None:  # rollout seeds are a function of (this seed, context) for the whole request
            la = Lookahead(SuffixDecoder(req, params.alpha, calls), la_cfg,
                           seed if seed is not None else secrets.randbits(63))
        algo = ALGORITHMS[params.method]
        outputs, chain_meta, meta = await algo(req, params, n=n, max_tokens=max_tokens, seed=seed, calls=calls, la=la)
        completions = await finish_completions(req, outputs, chain_meta)
        metadata = {
            "strategy": self.name,
            "method": params.method,
            "proposal": "lookahead" if params.method == "lookahead" else params.proposal,
            "alpha": params.alpha,
            "n": n,
            "max_tokens": max_tokens,
            "tokens_generated": calls.tokens,
            "forward_passes": calls.forward_passes,
            "engine_calls": calls.calls,
            **meta,
            "wall_seconds": time.perf_counter() - t0,
        }
        if la is not None:
            metadata |= {"lookahead": {"k": la_cfg.k, "m": la_cfg.m, "h": la_cfg.h, "threshold": la_cfg.threshold,
                                       "eps": la_cfg.eps, "rollout": la_cfg.rollout,
                                       "rollout_tokens": la.rollout_tokens, "contexts": la.contexts}}
        return StrategyResult(completions=completions, completion_tokens=calls.tokens, metadata=metadata)
