"""Power sampling where the tempered proposal cannot reach p^α: TV from the exact target against
generated tokens, for every method, on enumerable toys whose largest target/proposal ratio is
in the hundreds (issue 14's hard case: an unlikely first token followed by a near-certain end).

Every point is R independent requests (n = 1 each, distinct seeds, run concurrently on one
ToyEngine) through the real strategy; TV is measured against p^α computed by enumeration, and
cost is the mean number of generated tokens per response (every proposal, particle, rollout and
candidate). The noise floor is the mean TV of R exact draws from p^α.

    python -m bench.power_toys [--responses 2000] [--quick]
        → bench/out/power_toys.json, bench/out/power_toys.png (and docs/power_toys.png)
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np

from temper.decoding.engines.toy import ToyEngine, ToyModel
from temper.decoding.strategies.base import DecodeRequest, StrategyOptions
from temper.decoding.strategies.power import PowerStrategy
from temper.decoding.strategies.settings import SamplingSettings

OUT = Path(__file__).parent / "out"
DOCS = Path(__file__).parents[1] / "docs"
A, B, C, E = 0, 1, 2, 3

# name: (next-token table keyed by the response so far, T, look-ahead candidates K). Contexts
# missing from a table are uniform.
TOYS = {
    # lookahead.md §5: "aE" has 0.18 of p^α, the proposal draws it with probability 0.0004
    "rare-short (T=3)": ({
        (): [0.115, 0.815, 0.060, 0.010], (A,): [0.004, 0.003, 0.003, 0.990], (B,): [0.40, 0.33, 0.25, 0.02],
        (B, A): [0.45, 0.30, 0.20, 0.05], (B, B): [0.30, 0.30, 0.30, 0.10], (B, C): [0.40, 0.30, 0.20, 0.10],
        (C,): [0.30, 0.30, 0.30, 0.10],
    }, 3, 3),
    # deeper: the pivotal `a` is followed by a near-certain 3-token answer "abcE" (0.29 of p^α,
    # proposal probability 8e-5); `b` is likely and ends after one more (uniform) token. Rollouts
    # of 2 tokens do not see the whole future of `a`. K = 4: uniform contexts tie all tokens.
    "rare-deep (T=5)": ({
        (): [0.08, 0.84, 0.06, 0.02], (A,): [0.01, 0.97, 0.01, 0.01], (A, B): [0.01, 0.01, 0.97, 0.01],
        (A, B, C): [0.01, 0.01, 0.01, 0.97], (B,): [0.34, 0.33, 0.32, 0.01],
    }, 5, 4),
}
ALPHA = 4.0


def configs(T: int, K: int, quick: bool) -> list[tuple[str, str, dict]]:
    LA = {"lookahead_k": K, "lookahead_h": 2, "lookahead_threshold": 1.0}
    mh_steps = [0, 5, 20, 40] if quick else [0, 5, 10, 20, 40, 80]
    out = [("mh", f"steps={s}", {"method": "mh", "block_size": T, "mcmc_steps": s}) for s in mh_steps]
    out += [("mh+lookahead", f"steps={s}", {"method": "mh", "block_size": T, "mcmc_steps": s,
                                            "proposal": "lookahead", "lookahead_m": 2, **LA})
            for s in ([0, 2, 5] if quick else [0, 1, 2, 5, 10])]
    out += [("smc", f"N={n}", {"method": "smc", "particles": n, "resample_every": 1})
            for n in ([8, 64, 256] if quick else [8, 32, 128, 512])]
    out += [("smc+lookahead", f"N={n}", {"method": "smc", "particles": n, "resample_every": 1,
                                         "proposal": "lookahead", "lookahead_m": 1, **LA})
            for n in ([1, 4] if quick else [1, 2, 4, 8, 16])]
    out += [("lookahead sampler", f"M={m}", {"method": "lookahead", "block_size": 1, "lookahead_k": K,
                                             "lookahead_m": m, "lookahead_h": 2})
            for m in ([1, 4] if quick else [1, 2, 4, 8])]
    return out


def target(model: ToyModel, T: int) -> dict[tuple, float]:
    return {k: w for k, (_, w) in model.enumerate([0], T, ALPHA).items()}


def tv(p: dict, q: dict) -> float:
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q))


async def point(model: ToyModel, T: int, decoding: dict, R: int, pi: dict, rare: tuple) -> dict:
    engine = ToyEngine(model)
    strategy = PowerStrategy()
    params = strategy.parse({"alpha": ALPHA, **decoding})
    opts = StrategyOptions(max_sequences=10**6)

    async def one(seed: int):
        req = DecodeRequest(prompt=[0], settings=SamplingSettings(seed=seed, max_tokens=T), engine=engine, options=opts)
        return await strategy.run(req, params)

    t0 = time.perf_counter()
    results = await asyncio.gather(*(one(s) for s in range(R)))
    emp = Counter(tuple(r.completions[0].tokens) for r in results)
    law = {k: v / R for k, v in emp.items()}
    return {"tv": tv(pi, law), "tokens_per_response": float(np.mean([r.completion_tokens for r in results])),
            "rare_answer_freq": law.get(rare, 0.0), "wall_s": time.perf_counter() - t0}


def low_temp_prob(model: ToyModel, resp: tuple, T: int) -> float:
    """Probability that the tempered proposal (temperature 1/α) draws `resp`."""
    lp = 0.0
    for j in range(len(resp)):
        logits = ALPHA * model.logprobs((0, *resp[:j]))
        lp += logits[resp[j]] - np.logaddexp.reduce(logits)
    return float(np.exp(lp))


def noise_floor(pi: dict, R: int, reps: int = 200) -> float:
    keys = list(pi)
    p = np.array([pi[k] for k in keys])
    rng = np.random.default_rng(0)
    return float(np.mean([0.5 * np.abs(rng.multinomial(R, p) / R - p).sum() for _ in range(reps)]))


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    toys = result["toys"]
    fig, axes = plt.subplots(1, len(toys), figsize=(6.5 * len(toys), 4.6))
    for ax, (name, toy) in zip(np.atleast_1d(axes), toys.items(), strict=True):
        for method in dict.fromkeys(p["method"] for p in toy["points"]):
            pts = sorted((p for p in toy["points"] if p["method"] == method), key=lambda p: p["tokens_per_response"])
            ax.plot([p["tokens_per_response"] for p in pts], [p["tv"] for p in pts], "o-", label=method)
        ax.axhline(0.05, color="k", ls=":", lw=1, label="TV 0.05")
        ax.axvline(toy["budget_40_step_mh"], color="grey", ls="--", lw=1, label="40-step MH budget")
        ax.axhspan(0, toy["noise_floor"], color="grey", alpha=0.15, label="sampling noise")
        ax.set_xscale("log")
        ax.set_xlabel("generated tokens per response")
        ax.set_ylabel("TV from p^α")
        ax.set_title(f"{name}: max π/q = {toy['max_ratio']:.0f}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


async def main_async(R: int, quick: bool) -> dict:
    out: dict = {"alpha": ALPHA, "responses_per_point": R, "toys": {}}
    for name, (table, T, K) in TOYS.items():
        model = ToyModel(vocab_size=4, table=table, prompt_len=1)
        pi = target(model, T)
        ratios = {k: w / low_temp_prob(model, k, T) for k, w in pi.items()}
        rare = max((k for k in pi if ratios[k] >= 100), key=pi.get)  # the likeliest answer q cannot reach
        toy = {"T": T, "max_ratio": max(ratios.values()), "rare_answer": list(rare), "rare_answer_target": pi[rare],
               "rare_answer_ratio": ratios[rare], "noise_floor": noise_floor(pi, R), "points": []}
        for method, label, dec in configs(T, K, quick):
            r = await point(model, T, dec, R, pi, rare)
            toy["points"].append({"method": method, "config": label, **r})
            print(f"{name:18s} {method:18s} {label:9s} TV {r['tv']:.4f}  tokens/response "
                  f"{r['tokens_per_response']:8.1f}  rare answer {r['rare_answer_freq']:.3f}  ({r['wall_s']:.1f}s)",
                  flush=True)
            gc.collect()
        toy["budget_40_step_mh"] = next(p["tokens_per_response"] for p in toy["points"]
                                        if p["method"] == "mh" and p["config"] == "steps=40")
        within = [p for p in toy["points"] if p["tokens_per_response"] <= toy["budget_40_step_mh"] and p["tv"] <= 0.05]
        toy["methods_reaching_tv_0.05_within_budget"] = sorted({p["method"] for p in within})
        out["toys"][name] = toy
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--responses", type=int, default=2000, help="independent requests per point")
    ap.add_argument("--quick", action="store_true", help="fewer points")
    a = ap.parse_args()
    result = asyncio.run(main_async(a.responses, a.quick))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "power_toys.json").write_text(json.dumps(result, indent=2))
    plot(result, OUT / "power_toys.png")
    DOCS.mkdir(exist_ok=True)
    plot(result, DOCS / "power_toys.png")
    for name, toy in result["toys"].items():
        print(f"{name}: max ratio {toy['max_ratio']:.0f} (answer {toy['rare_answer']}: p^α "
              f"{toy['rare_answer_target']:.3f}, ratio {toy['rare_answer_ratio']:.0f}), noise floor "
              f"{toy['noise_floor']:.4f}, 40-step MH budget {toy['budget_40_step_mh']:.1f} tokens; TV ≤ 0.05 within "
              f"it: {toy['methods_reaching_tv_0.05_within_budget']}")
    print(f"wrote {OUT / 'power_toys.json'}, {OUT / 'power_toys.png'}, {DOCS / 'power_toys.png'}")


if __name__ == "__main__":
    main()
