"""Power sampling is exact end to end: on ToyEngine, the empirical distribution of MH, SMC and
look-ahead-proposal completions matches p^α computed by enumeration — with stop strings and
top-k / top-p in the request — low-temperature sampling does not, and the reference code's
truncated acceptance is biased where ours is not.

Each test drives all its chains through ONE strategy run (chains are tasks whose calls share
the ToyEngine's steps), and seeds make every number below deterministic. The default set
uses a few thousand chains; the 20 000-chain versions are `slow`. Noise-free checks of the
same kernels are in test_power_kernels.py. Measured TVs are printed (pytest -s).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from power_oracle import Toy, assert_matches, mh_schedule_law, tempered_table
from test_power_kernels import lookahead_table
from toys import branchy, paper_toy, tv_distance

from bench.reference import reference_log_accept
from temper.decoding.engine import SampleSpec
from temper.decoding.engines.toy import ToyEngine, ToyModel
from temper.decoding.power_math import block_lengths
from temper.decoding.strategies.base import DecodeRequest, StrategyOptions
from temper.decoding.strategies.power import PowerStrategy
from temper.decoding.strategies.power_params import PowerParams
from temper.decoding.strategies.power_smc import checkpoints
from temper.decoding.strategies.settings import SamplingSettings

PROMPT = [0]
A, B, EOS = 0, 1, 2

pytestmark = pytest.mark.usefixtures("no_gc")


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


async def draw(model: ToyModel, decoding: dict, n: int, T: int, seed: int = 1, **settings):
    """n completions of one strategy run → (empirical distribution, metadata, engine).
    settings.n is validated ≤ 128 for clients; tests set it past validation."""
    engine = ToyEngine(model)
    settings = SamplingSettings(seed=seed, max_tokens=T, **settings)
    settings.n = n
    strategy = PowerStrategy()
    req = DecodeRequest(prompt=PROMPT, settings=settings, engine=engine, options=StrategyOptions(max_sequences=10**7))
    res = await strategy.run(req, strategy.parse(decoding))
    counts = Counter(tuple(c.tokens) for c in res.completions)
    assert len(res.completions) == n
    eos = model.eos_id
    for c in res.completions:  # well-formed outputs
        assert len(c.logp) == len(c.tokens) and eos not in c.tokens[:-1]
        if not settings.stop:
            assert (c.finish_reason == "stop") == (c.tokens[-1] == eos)
    return {k: v / n for k, v in counts.items()}, res.metadata, engine


N_EXACT = 4000
T_EXACT = 5


async def check_exact(alpha: float, decoding: dict, n: int = N_EXACT, tol: float = 0.05) -> tuple[dict, ToyEngine]:
    """n draws of one strategy run on the branchy toy: TV to p^α ≤ tol and under a third of
    low-temperature sampling's. Returns (metadata, engine) for method-specific checks."""
    model = branchy()
    pi = target(model, T_EXACT, alpha)
    emp, meta, engine = await draw(model, {"alpha": alpha, **decoding}, n, T_EXACT)
    tv = tv_distance(pi, emp)
    tv_low = tv_distance(pi, low_temperature(model, T_EXACT, alpha))
    extra = (f"acceptance={meta['acceptance_rate']:.3f}" if decoding["method"] == "mh"
             else f"resamples={meta['resample_count']}")
    print(f"\n{decoding['method'].upper()} α={alpha} {decoding} n={n}: TV={tv:.4f} (low temperature {tv_low:.4f}), "
          f"{extra}, tokens/sample={meta['tokens_generated'] / n:.1f}")
    assert tv <= tol
    assert tv < tv_low / 3
    return meta, engine


@pytest.mark.parametrize(
    "alpha, decoding, n",
    [
        (2.0, {"block_size": 2, "mcmc_steps": 3}, N_EXACT),
        pytest.param(2.0, {"block_size": 2, "mcmc_steps": 3}, 20_000, marks=pytest.mark.slow),
        pytest.param(4.0, {"block_size": 1, "mcmc_steps": 3}, 20_000, marks=pytest.mark.slow),
        pytest.param(2.0, {"block_size": 5, "mcmc_steps": 10, "proposals": 3}, 20_000, marks=pytest.mark.slow),
    ],
)
async def test_mh_matches_p_alpha(alpha, decoding, n):
    meta, engine = await check_exact(alpha, {"method": "mh", **decoding}, n, tol=0.05 if n < 10_000 else 0.03)
    # chains are their own tasks, yet they share engine steps: no more steps than one chain's
    # own sequential depth (its extension, then ≤ t_k tokens per move)
    blocks = block_lengths(T_EXACT, decoding["block_size"])
    assert engine.steps <= T_EXACT + decoding["mcmc_steps"] * sum(blocks)
    assert len(meta["acceptance_rate_per_block"]) == len(blocks)
    assert meta["abandoned_proposals"] > 0  # early rejection at work


@pytest.mark.parametrize(
    "alpha, decoding, n",
    [
        # ess_threshold 0.9 so that resampling really happens (thousands of times)
        (4.0, {"particles": 4, "resample_every": 1, "ess_threshold": 0.9, "ramp_tokens": 3}, N_EXACT),
        pytest.param(2.0, {"particles": 6, "resample_every": 2, "ess_threshold": 0.9}, 20_000, marks=pytest.mark.slow),
        pytest.param(4.0, {"particles": 4, "resample_every": 1, "ess_threshold": 0.9, "ramp_tokens": 3}, 20_000,
                     marks=pytest.mark.slow),
    ],
)
async def test_smc_matches_p_alpha(alpha, decoding, n):
    meta, engine = await check_exact(alpha, {"method": "smc", **decoding}, n, tol=0.05 if n < 10_000 else 0.04)
    # at most one engine call per interval for all n × particles sequences
    assert engine.calls <= len(checkpoints(T_EXACT, decoding["resample_every"], decoding.get("ramp_tokens", 0)))
    assert len(meta["ess_trace"]) >= 1 and meta["resample_count"] > n // 20


STOP_TOY = dict(vocab_size=4, seed=3, eos_logit=-1.0, sharpness=1.0)
LA = {"lookahead_k": 3, "lookahead_m": 2, "lookahead_h": 2}


@pytest.mark.parametrize(
    "decoding, settings",
    [
        ({"block_size": 2, "mcmc_steps": 2}, {"stop": ["ba", "cc"]}),
        ({"block_size": 4, "mcmc_steps": 2, "proposals": 2}, {"stop": ["ba"], "top_k": 3}),
        ({"block_size": 3, "mcmc_steps": 2, "early_rejection": False}, {"stop": ["ac"], "top_p": 0.97}),
        ({"block_size": 2, "mcmc_steps": 2, "proposal": "lookahead", "lookahead_threshold": 0.7, **LA},
         {"stop": ["ba"]}),
        pytest.param({"block_size": 4, "mcmc_steps": 3, "proposal": "lookahead", "lookahead_threshold": 1.0, **LA},
                     {"stop": ["cc"], "top_k": 3}, marks=pytest.mark.slow),
    ],
)
async def test_mh_returns_the_exact_law_of_its_schedule(decoding, settings):
    """Stop strings inside the sampler and top-k / top-p: the chains' empirical law matches the
    exact law of the whole schedule (extensions, blocks, moves; power_oracle.mh_schedule_law),
    cell by cell. The target is p^α over responses that end at their first stop string (absorbing,
    like EOS) and keep to the kept set; the returned text is cut before the stop string."""
    model, alpha, T, n = ToyModel(**STOP_TOY), 2.0, 4, 3000
    toy = Toy(model, alpha, prompt=tuple(PROMPT), top_k=settings.get("top_k", 0), top_p=settings.get("top_p", 1.0),
              stops=settings["stop"])
    table = tempered_table(toy)
    if decoding.get("proposal") == "lookahead":  # the seeded r of this request (seed 1)
        cfg = PowerParams(**{k: v for k, v in decoding.items() if k.startswith("lookahead")},
                          proposal="lookahead").lookahead(T)
        table, _ = await lookahead_table(toy, cfg, seed=1)
    law = mh_schedule_law(toy, table, T, decoding["block_size"], decoding["mcmc_steps"], decoding.get("proposals", 1))
    emp, meta, engine = await draw(model, {"alpha": alpha, **decoding}, n, T, **settings)
    tv = assert_matches(emp, law, n)
    ended = [x for x in emp if any(s in engine.tokenizer.decode(list(x)) for s in settings["stop"])]
    assert ended
    print(f"\nMH {decoding} {settings}: TV to its exact law {tv:.4f}, that law's TV to p^α "
          f"{tv_distance(law, toy.target(T)):.4f} ({len(law)} responses, {len(ended)} seen ending at a stop string)")


@pytest.mark.parametrize(
    "decoding, settings",
    [
        ({"particles": 32, "resample_every": 1}, {"stop": ["ba", "cc"], "top_p": 0.9}),
        ({"particles": 8, "resample_every": 1, "proposal": "lookahead", "lookahead_threshold": 1.0, **LA},
         {"stop": ["cc"], "top_k": 3}),
    ],
)
async def test_smc_with_stop_strings_and_truncation(decoding, settings):
    """SMC is exact only as N grows (its evidence is exact at any N: test_power_smc.py), so here
    the returned law must be within the sampling noise plus a small finite-N margin of p^α."""
    model, alpha, T, n = ToyModel(**STOP_TOY), 2.0, 4, 2000
    toy = Toy(model, alpha, prompt=tuple(PROMPT), top_k=settings.get("top_k", 0), top_p=settings.get("top_p", 1.0),
              stops=settings["stop"])
    pi = toy.target(T)
    emp, meta, _ = await draw(model, {"alpha": alpha, "method": "smc", **decoding}, n, T, **settings)
    tv, floor = tv_distance(pi, emp), noise_floor(pi, n)
    print(f"\nSMC {decoding} {settings}: TV {tv:.4f} (sampling noise {floor:.4f})")
    assert set(emp) <= set(pi) and tv < floor + 0.03


def noise_floor(pi: dict, n: int) -> float:
    """Mean TV of n exact draws from pi."""
    p = np.array(list(pi.values()))
    rng = np.random.default_rng(0)
    return float(np.mean([0.5 * np.abs(rng.multinomial(n, p) / n - p).sum() for _ in range(100)]))


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
