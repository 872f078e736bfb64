"""`power`: sample whole responses from p(x)^α (research/power_sampling.md §9).

What this is: the strategy — the checks on a request, the final completions and metadata —
dispatching to one of two algorithms that target the same distribution (the parameters and
token budget they share live in power_params.py):
  * method "mh"  (power_mh.py):  blockwise Metropolis-Hastings / i-SIR with fixed logical block
                                  lengths and absorbing EOS (exact, unlike the reference code);
  * method "smc" (power_smc.py): Power-SMC, particles at temperature 1/α with systematic
                                  resampling and an optional α ramp.
n is the number of independent chains / particle systems; each gives one completion.

What this is not: the math (temper.decoding.power_math, the Triton kernels) or token streaming:
a power sample is only final at the end of the run, so `streams_tokens` is False.

Proposals are tempered samples of the request's model; the request's temperature is ignored
(α sets it) but its top_k / top_p apply, which makes the target p^α restricted to the kept
tokens (log_w accounts for the truncation, §2.3).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from temper.decoding.counting_engine import CountingEngine
from temper.decoding.engine import TokenCallback
from temper.decoding.errors import ParamError
from temper.decoding.power_math import block_lengths
from temper.decoding.strategies.base import DecodeRequest, Strategy
from temper.decoding.strategies.completion import Completion, StrategyResult, apply_stops, fill_logprobs
from temper.decoding.strategies.power_mh import run_mh
from temper.decoding.strategies.power_params import MH_ONLY, SMC_ONLY, PowerParams, token_budget
from temper.decoding.strategies.power_smc import run_smc


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
        variants = []
        for method, foreign in (("mh", SMC_ONLY), ("smc", MH_ONLY)):
            props = {k: v for k, v in full["properties"].items() if k not in foreign}
            props["method"] = {**props["method"], "enum": [method]}
            required = ["method"] if method != "mh" else []
            variants.append({**full, "properties": props, "required": required})
        return variants

    def check(self, req: DecodeRequest, params: PowerParams) -> None:
        if not req.prompt:
            raise ParamError("prompt: must hold at least one token", "prompt")
        token_budget(req, params)  # the 400 for a prompt that fills the context
        n = int(req.settings.n)
        width, field = (params.particles, "particles") if params.method == "smc" else (params.proposals, "proposals")
        limit = req.options.max_sequences
        if n * width > limit:
            raise ParamError(
                f"n: {n} × {field} {width} = {n * width} sequences in flight exceed this server's "
                f"limit of {limit} per request",
                "n",
            )

    def cost(self, req: DecodeRequest, params: PowerParams) -> int:
        """Worst case, no response ending early: SMC decodes every particle to the budget T;
        MH extends each chain to T and every step of block k resamples up to t_k tokens per
        proposal (a cut at 0)."""
        T, n = token_budget(req, params), int(req.settings.n)
        if params.method == "smc":
            return n * params.particles * T
        return n * (T + params.mcmc_steps * params.proposals * sum(block_lengths(T, params.block_size)))

    def cost_knob(self, params: PowerParams) -> str:
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
        algo = run_mh if params.method == "mh" else run_smc
        outputs, chain_meta, meta = await algo(req, params, n=n, max_tokens=max_tokens, seed=seed, calls=calls)
        completions = await finish_completions(req, outputs, chain_meta)
        metadata = {
            "strategy": self.name,
            "method": params.method,
            "alpha": params.alpha,
            "n": n,
            "max_tokens": max_tokens,
            "tokens_generated": calls.tokens,
            "forward_passes": calls.forward_passes,
            "engine_calls": calls.calls,
            **meta,
            "wall_seconds": time.perf_counter() - t0,
        }
        return StrategyResult(completions=completions, completion_tokens=calls.tokens, metadata=metadata)
