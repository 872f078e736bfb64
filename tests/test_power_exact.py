"""Power sampling is exact: on ToyEngine, the empirical distribution of MH and SMC completions
matches p^α computed by enumeration; low-temperature sampling does not; the reference code's
truncated acceptance is biased where ours is not.

Each test drives all its chains (20 000 for the exactness checks) through ONE strategy run, so
every MH step / SMC interval is one batched ToyEngine call, and seeds make every number below
deterministic. Measured TVs are printed (pytest -s) for the record.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from toys import branchy, paper_toy, tv_distance

from bench.reference import reference_log_accept
from temper.decoding.engine import SampleSpec
from temper.decoding.engines.toy import ToyEngine, ToyModel
from temper.decoding.power_math import block_lengths
from temper.decoding.strategies.base import DecodeRequest, StrategyOptions
from temper.decoding.strategies.power import PowerStrategy
from temper.decoding.strategies.power_smc import checkpoints
from temper.decoding.strategies.settings import SamplingSettings

PROMPT = [0]
A, B, EOS = 0, 1, 2

def target(model: ToyModel, T: int, alpha: float) -> dict:
    return {k: w for k, (_, w) in model.enumerate(PROMPT, T, alpha).items()}


def low_temperature(model: ToyModel, T: int, alpha: float) -> dict:
    """Exact distribution of plain sampling at temperature 1/α, by enumeration."""
    out: dict = {}

    def walk(resp: tuple, logq: float) -> None:
        if len(resp) == T:
            out[resp] = np.exp(logq)
            return
        lp = model.logprobs(tuple(PROMPT) + resp)
        with np.errstate(invalid="ignore"):
            q = alpha * lp - np.logaddexp.reduce(alpha * lp)
        for v in range(model.vocab_size):
            if lp[v] == -np.inf:
                continue
            nxt = resp + (v,)
            if v == model.eos_id:
                out[nxt] = np.exp(logq + q[v])
            else:
                walk(nxt, logq + q[v])

    walk((), 0.0)
    return out


async def draw(model: ToyModel, decoding: dict, n: int, T: int, seed: int = 1):
    """n completions of one strategy run → (empirical distribution, metadata, engine calls).
    settings.n is validated ≤ 128 for clients; tests set it past validation."""
    engine = ToyEngine(model)
    settings = SamplingSettings(seed=seed, max_tokens=T)
    settings.n = n
    strategy = PowerStrategy()
    req = DecodeRequest(prompt=PROMPT, settings=settings, engine=engine, options=StrategyOptions(max_sequences=10**7))
    res = await strategy.run(req, strategy.parse(decoding))
    counts = Counter(tuple(c.tokens) for c in res.completions)
    assert len(res.completions) == n
    for c in res.completions:  # well-formed outputs
        assert (c.finish_reason == "stop") == (c.tokens[-1] == EOS) and EOS not in c.tokens[:-1]
        assert len(c.logp) == len(c.tokens)
    return {k: v / n for k, v in counts.items()}, res.metadata, engine.calls


N_EXACT = 20_000
T_EXACT = 5


async def check_exact(alpha: float, decoding: dict) -> tuple[dict, int]:
    """N_EXACT draws of one strategy run on the branchy toy: TV to p^α ≤ 0.05 and under a third of
    low-temperature sampling's. Returns (metadata, engine calls) for method-specific checks."""
    model = branchy()
    pi = target(model, T_EXACT, alpha)
    emp, meta, calls = await draw(model, {"alpha": alpha, **decoding}, N_EXACT, T_EXACT)
    tv = tv_distance(pi, emp)
    tv_low = tv_distance(pi, low_temperature(model, T_EXACT, alpha))
    extra = (f"acceptance={meta['acceptance_rate']:.3f}" if decoding["method"] == "mh"
             else f"resamples={meta['resample_count']}")
    print(f"\n{decoding['method'].upper()} α={alpha} {decoding}: TV={tv:.4f} (low temperature {tv_low:.4f}), "
          f"{extra}, tokens/sample={meta['tokens_generated'] / N_EXACT:.1f}")
    assert tv <= 0.05
    assert tv < tv_low / 3
    return meta, calls


@pytest.mark.parametrize(
    "alpha, decoding",
    [
        (2.0, {"block_size": 2, "mcmc_steps": 3}),
        pytest.param(4.0, {"block_size": 1, "mcmc_steps": 3}, marks=pytest.mark.slow),
    ],
)
async def test_mh_matches_p_alpha(alpha, decoding):
    meta, calls = await check_exact(alpha, {"method": "mh", **decoding})
    # at most one engine call per extension and per MH step, for all 20 000 chains together
    # (an extension with every chain finished is no call)
    blocks = len(block_lengths(T_EXACT, decoding["block_size"]))
    assert blocks + decoding["mcmc_steps"] <= calls <= blocks * (1 + decoding["mcmc_steps"])
    assert len(meta["acceptance_rate_per_block"]) == blocks


@pytest.mark.parametrize(
    "alpha, decoding",
    [
        # ess_threshold 0.9 so that resampling really happens (thousands of times)
        pytest.param(2.0, {"particles": 6, "resample_every": 2, "ess_threshold": 0.9}, marks=pytest.mark.slow),
        (4.0, {"particles": 4, "resample_every": 1, "ess_threshold": 0.9, "ramp_tokens": 3}),
    ],
)
async def test_smc_matches_p_alpha(alpha, decoding):
    meta, calls = await check_exact(alpha, {"method": "smc", **decoding})
    # at most one engine call per interval for all 20 000 × particles sequences
    assert calls <= len(checkpoints(T_EXACT, decoding["resample_every"], decoding.get("ramp_tokens", 0)))
    assert len(meta["ess_trace"]) >= 1 and meta["resample_count"] > 1000


async def test_paper_toy_low_temperature_is_not_p_alpha():
    """Paper §4.1-style toy: p^α puts .47 on `ab`, temperature 1/α only .31 (TV .163, exact).
    Both methods land far closer to p^α than low-temperature sampling can."""
    model, alpha, T, n = paper_toy(), 2.0, 2, 3000
    pi = target(model, T, alpha)
    tv_low = tv_distance(pi, low_temperature(model, T, alpha))
    assert tv_low == pytest.approx(0.1629, abs=1e-3)
    mh, *_ = await draw(model, {"alpha": alpha, "block_size": 2, "mcmc_steps": 6}, n, T)
    isir, *_ = await draw(model, {"alpha": alpha, "block_size": 2, "mcmc_steps": 4, "proposals": 4}, n, T)
    smc, *_ = await draw(model, {"method": "smc", "alpha": alpha, "particles": 16, "resample_every": 1}, n, T)
    tvs = {"MH": tv_distance(pi, mh), "i-SIR M=4": tv_distance(pi, isir), "SMC": tv_distance(pi, smc)}
    print(f"\npaper toy α=2: TV low temperature={tv_low:.4f}, "
          + ", ".join(f"{k}={v:.4f}" for k, v in tvs.items()))
    for tv in tvs.values():
        assert tv_low - tv > 0.1


async def reference_chains(model: ToyModel, alpha: float, n: int, T: int, steps: int, seed: int = 0) -> dict:
    """The Karan & Du algorithm on one block of T tokens, vectorised over n chains: extend from
    q (EOS ends early), then each step cuts uniformly over the *current* length, resamples at
    most up to it, and accepts with the truncated comparison (power_math.reference_log_accept)."""
    engine = ToyEngine(model)
    rng = np.random.default_rng(seed)

    def seeds():
        return rng.integers(0, 2**62, n).tolist()

    first = await engine.sample([SampleSpec(prefix=tuple(PROMPT), max_new_tokens=T, alpha=alpha, seed=s)
                                 for s in seeds()])
    state = [(list(s.tokens), s.log_w.astype(np.float64)) for s in first]
    for _ in range(steps):
        cuts = [int(rng.integers(0, len(x))) for x, _ in state]
        props = await engine.sample([
            SampleSpec(prefix=(*PROMPT, *x[:c]), max_new_tokens=len(x) - c, alpha=alpha, seed=s)
            for (x, _), c, s in zip(state, cuts, seeds(), strict=True)
        ])
        log_u = np.log(1.0 - rng.random(n))
        for b, ((x, lw), c, y) in enumerate(zip(state, cuts, props, strict=True)):
            if log_u[b] < reference_log_accept(lw[c:], y.log_w):
                state[b] = (x[:c] + list(y.tokens), np.concatenate([lw[:c], y.log_w]))
    counts = Counter(tuple(x) for x, _ in state)
    return {k: v / n for k, v in counts.items()}


async def test_eos_heavy_toy_reference_is_biased_ours_is_not():
    """EOS is likely here, so proposals are often shorter than the state they are compared
    with. The reference's truncated comparison and shrinking length drift far from p^α even
    with many steps; the fixed-length padded chain (same steps, same toy) converges."""
    model = ToyModel(vocab_size=3, seed=1, eos_logit=1.0, sharpness=1.0)
    alpha, T, n, steps = 2.0, 5, 3000, 12
    pi = target(model, T, alpha)
    ref = await reference_chains(model, alpha, n, T, steps)
    ours, *_ = await draw(model, {"alpha": alpha, "block_size": T, "mcmc_steps": steps}, n, T)
    isir, *_ = await draw(model, {"alpha": alpha, "block_size": T, "mcmc_steps": steps, "proposals": 2}, n, T)
    tv_ref, tv_ours, tv_isir = tv_distance(pi, ref), tv_distance(pi, ours), tv_distance(pi, isir)
    tv_low = tv_distance(pi, low_temperature(model, T, alpha))
    print(f"\nEOS-heavy toy α=2: TV reference={tv_ref:.4f}, ours MH={tv_ours:.4f}, ours i-SIR M=2="
          f"{tv_isir:.4f}, low temperature={tv_low:.4f}")
    assert tv_ref > 0.3
    assert tv_ours < 0.05 and tv_isir < 0.05


async def test_early_stop_is_biased_and_the_default_is_not():
    """Ending a chain at the first block boundary where it holds EOS (the reference's and
    research §9's `break`) freezes a sample of an intermediate target p(x_{≤t_k})^α; the default
    keeps finished chains moving through later blocks, so it reaches p^α over the full length."""
    model = ToyModel(vocab_size=3, seed=1, eos_logit=1.0, sharpness=1.0)
    alpha, T, n = 2.0, 5, 3000
    pi = target(model, T, alpha)
    dec = {"alpha": alpha, "block_size": 1, "mcmc_steps": 6}
    exact, *_ = await draw(model, dec, n, T)
    early, *_ = await draw(model, {**dec, "early_stop": True}, n, T)
    tv_exact, tv_early = tv_distance(pi, exact), tv_distance(pi, early)
    print(f"\nearly stop α=2: TV default={tv_exact:.4f}, early_stop={tv_early:.4f}")
    assert tv_exact < 0.03 and tv_early > 0.07
