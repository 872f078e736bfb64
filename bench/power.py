"""Power-sampling benchmark on a tiny HF model (CPU by default), side by side in one run:

1. tokens generated (and run through the model) per output token by every method — plain,
   MH, SMC, MH and SMC with the look-ahead proposal, the paper's look-ahead sampler by tokens
   and by blocks — and for MH the analytic count of the schedule (bench/reference.py's
   mh_token_count) and the paper's approximation N·L/(4B);
2. wall time of one MH response and one SMC response (32 particles) relative to plain sampling
   of the same output length;
3. our MH (chains as tasks on the engine's continuous batching, proposals forking from its KV
   prefix cache) vs the reference algorithm's cost model (Karan & Du code: every proposal is
   its own generate call that re-prefills prompt + prefix, no KV reuse, one chain at a time) on
   the same model and parameters: forward tokens and wall time;
4. the engine's KV hints on and off (bench/power_engine.py): `retain` under a small prefix
   cache, `resident` SMC particles, rows joining a running batch.

Timings are CPU wall clock with one torch thread by default (--threads): a model this small
gains nothing from more, and on a shared machine spinning intra-op threads make timings erratic.

EOS is switched off for every run (like vLLM benchmarks' ignore_eos) so all methods decode the
same fixed lengths and the analytic count applies exactly; a random tiny model would otherwise
end at arbitrary points.

With --engine vllm every method also runs on VLLMEngine (same weights; the model then gets
head_dim 32 and a padded vocabulary id for vLLM), reported relative to plain sampling on vLLM.

    python -m bench.power [--engine vllm] [--tokens 256 --block-size 64 --steps 4 --chains 8]
        → bench/out/power.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.engines import build_model, clear_prefix_cache, close, load_vllm
from bench.power_engine import engine_hints
from bench.reference import mh_token_count, reference_log_accept
from temper.decoding.engine import SampleSpec
from temper.decoding.engines.hf import HFEngine
from temper.decoding.power_math import block_lengths
from temper.decoding.strategies.base import DecodeRequest
from temper.decoding.strategies.registry import parse_decoding
from temper.decoding.strategies.settings import SamplingSettings

OUT = Path(__file__).parent / "out"
# The reference's MATH500 prompt (research/power_sampling.md §3.3) around a short question; the
# tiny model's byte tokenizer makes it ~200 tokens, the size that every reference proposal
# re-prefills.
PROMPT = ("Can you solve the following math problem? Let $f(x) = 3x^2 - 5x + 2$. Find the sum of "
          "the roots of $f(x) = 0$, and express your answer as a common fraction. Please reason step "
          "by step, and put your final answer within \\boxed{}.")


def load(path: Path, device: str, **kw) -> HFEngine:
    eng = HFEngine.from_pretrained(str(path), device=device, dtype="float32", **kw)
    eng.eos_ids = ()  # fixed-length decoding for every method (see the module docstring)
    return eng


async def run_strategy(eng: HFEngine, prompt: list[int], decoding: dict, n: int, L: int, seed: int) -> dict:
    strategy, params = parse_decoding(decoding)
    settings = SamplingSettings(n=n, max_tokens=L, seed=seed)  # the decoding object sets α / temperature
    f0, p0 = eng.stats.forward_tokens, eng.stats.forward_passes
    t = time.perf_counter()
    res = await strategy.run(DecodeRequest(prompt=list(prompt), settings=settings, engine=eng), params)
    wall = time.perf_counter() - t
    assert all(len(c.tokens) == L for c in res.completions), [len(c.tokens) for c in res.completions]
    return {
        "wall_s": wall,
        "output_tokens": sum(len(c.tokens) for c in res.completions),
        "tokens_generated": res.completion_tokens,
        "forward_tokens": eng.stats.forward_tokens - f0,
        "forward_passes": eng.stats.forward_passes - p0,
        "metadata": {k: v for k, v in res.metadata.items() if k not in ("ess_trace",)},
    }


async def reference_mh(eng: HFEngine, prompt: list[int], alpha: float, L: int, B: int, steps: int,
                       chains: int, seed: int) -> dict:
    """The reference loop (research/power_sampling.md §3.2): per block, extend to k·B, then
    `steps` times cut uniformly over the current length, regenerate the suffix in its own call
    (prefix re-prefilled: the engine has no prefix cache), accept with the reference rule.
    Chains run one after another."""
    rng = np.random.default_rng(seed)
    f0, p0 = eng.stats.forward_tokens, eng.stats.forward_passes
    t = time.perf_counter()
    generated = accepted = moves = 0

    async def propose(prefix: list[int], max_new: int):
        spec = SampleSpec(tuple(prompt + prefix), max_new, alpha=alpha, stop_ids=(),
                          seed=int(rng.integers(2**62)))
        return (await eng.sample([spec]))[0]

    for _ in range(chains):
        x: list[int] = []
        lw = np.zeros(0)
        for t_k in block_lengths(L, B):
            ext = await propose(x, t_k - len(x))
            x, lw = x + ext.tokens, np.concatenate([lw, ext.log_w])
            generated += len(ext.tokens)
            for _ in range(steps):
                i = int(rng.integers(0, len(x)))
                y = await propose(x[:i], len(x) - i)
                generated += len(y.tokens)
                moves += 1
                if np.log(1.0 - rng.random()) < reference_log_accept(lw[i:], y.log_w):
                    x, lw = x[:i] + y.tokens, np.concatenate([lw[:i], y.log_w])
                    accepted += 1
    return {
        "wall_s": time.perf_counter() - t,
        "tokens_generated": generated,
        "forward_tokens": eng.stats.forward_tokens - f0,
        "forward_passes": eng.stats.forward_passes - p0,
        "acceptance_rate": accepted / moves if moves else None,
    }


def method_runs(a, L: int) -> list[tuple[str, dict, int, int]]:
    """(name, decoding object, n, output length) for every method. Look-ahead settings are small
    (the random tiny model gates every position: each costs 1 + K·M·h tokens) and run on
    shorter outputs; the JSON reports per-output-token ratios, so lengths need not match."""
    alpha, B, N, La = a.alpha, a.block_size, a.steps, a.la_tokens
    la = {"lookahead_k": 2, "lookahead_m": 2, "lookahead_h": 8}
    mh = {"strategy": "power", "method": "mh", "alpha": alpha, "block_size": B, "mcmc_steps": N}
    smc = {"strategy": "power", "method": "smc", "alpha": alpha, "particles": a.particles}
    plain = {"strategy": "sample", "temperature": 1.0 / alpha}
    return [
        ("plain", plain, 1, L), ("plain_batch", plain, a.particles, L),
        ("mh", mh, 1, L), ("mh_chains", mh, a.chains, L), ("smc", smc, 1, L),
        ("mh_lookahead", {**mh, "block_size": La // 2, "mcmc_steps": 2, "proposal": "lookahead",
                          "lookahead_threshold": 0.5, **la}, 1, La),
        ("smc_lookahead", {**smc, "particles": 8, "resample_every": La // 4, "proposal": "lookahead",
                           "lookahead_threshold": 0.5, **la}, 1, La),
        ("lookahead_tokens", {"strategy": "power", "method": "lookahead", "alpha": alpha, "block_size": 1, **la},
         1, La),
        ("lookahead_blocks", {"strategy": "power", "method": "lookahead", "alpha": alpha, "block_size": B,
                              "lookahead_candidates": 8, "lookahead_k": 4, "lookahead_m": 4, "lookahead_h": B}, 1, L),
    ]


def run_methods(eng, prompt: list[int], a, L: int, label: str = "") -> dict:
    async def go() -> dict:
        await run_strategy(eng, prompt, {"strategy": "sample", "temperature": 0.25}, 1, 16, seed=99)  # warm-up
        r: dict = {}
        for key, dec, n, length in method_runs(a, L):
            await clear_prefix_cache(eng)  # each run starts cold; reuse within a run only
            r[key] = res = await run_strategy(eng, prompt, dec, n, length, seed=a.seed)
            res["tokens_per_output_token"] = res["tokens_generated"] / res["output_tokens"]
            res["forward_tokens_per_output_token"] = res["forward_tokens"] / res["output_tokens"]
            print(f"{label}{key:17s} n={n:2d} L={length}: {res['wall_s']:6.2f}s, per output token: generated "
                  f"{res['tokens_per_output_token']:7.2f}, forward {res['forward_tokens_per_output_token']:7.2f}",
                  flush=True)
        return r

    return asyncio.run(go())


def summary(a, L: int, prompt: list[int], r: dict, ref: dict, hints: dict) -> dict:
    B, N = a.block_size, a.steps
    analytic = mh_token_count(L, B, N) / L
    # sampling spread of the measured count: a step in block k resamples t_k − i tokens with i
    # uniform, variance (t_k² − 1)/12; steps and chains are independent
    std = (sum(N * (t * t - 1) / 12 for t in block_lengths(L, B)) / a.chains) ** 0.5 / L
    plain_s = r["plain"]["wall_s"]
    return {
        "device": a.device,
        "torch_threads": torch.get_num_threads(),
        "model": {"hidden": a.hidden, "layers": a.layers, "params": "random tiny Llama"},
        "params": {"alpha": a.alpha, "output_tokens": L, "block_size": B, "mcmc_steps": N, "chains": a.chains,
                   "particles": a.particles, "prompt_tokens": len(prompt), "lookahead_output_tokens": a.la_tokens},
        "1_tokens_per_output_token": {
            "mh_measured": r["mh_chains"]["tokens_per_output_token"],
            "mh_analytic": analytic,
            "mh_analytic_std_of_measurement": std,
            "paper_approximation": N * L / (4 * B),
            "every_method": {k: {"generated": v["tokens_per_output_token"],
                                 "forward": v["forward_tokens_per_output_token"]} for k, v in r.items()},
        },
        "2_latency_vs_plain": {
            "plain_s": plain_s,
            **{f"{k}_over_plain": r[k]["wall_s"] / plain_s for k in ("mh", "smc", "plain_batch")},
            # how much of SMC's cost is only the wider batch (memory-bound attention on a CPU)
            "smc_over_plain_batch": r["smc"]["wall_s"] / r["plain_batch"]["wall_s"],
            "target_smc_within_2x": r["smc"]["wall_s"] / plain_s <= 2.0,
        },
        "3_vs_reference_cost_model": {
            key: {
                "chains": 1 if key == "mh" else a.chains,
                "ours": {k: r[key][k] for k in ("wall_s", "tokens_generated", "forward_tokens", "forward_passes")},
                "reference": ref[key],
                "forward_token_ratio": ref[key]["forward_tokens"] / r[key]["forward_tokens"],
                "forward_pass_ratio": ref[key]["forward_passes"] / r[key]["forward_passes"],
                "wall_time_ratio": ref[key]["wall_s"] / r[key]["wall_s"],
                "target_3x_less_wall": ref[key]["wall_s"] / r[key]["wall_s"] >= 3.0,
            }
            for key in ("mh", "mh_chains")
        },
        "4_engine_hints": hints,
        "runs": r,
    }


def vllm_summary(r: dict) -> dict:
    plain_s = r["plain"]["wall_s"]
    return {
        "plain_s": plain_s,
        **{f"{k}_over_plain": r[k]["wall_s"] / plain_s for k in ("mh", "smc", "plain_batch")},
        "mh_tokens_per_output_token": r["mh_chains"]["tokens_per_output_token"],
        "every_method": {k: {"generated": v["tokens_per_output_token"], "wall_s": v["wall_s"]} for k, v in r.items()},
    }


def report(result: dict) -> None:
    t, lat = result["1_tokens_per_output_token"], result["2_latency_vs_plain"]
    p = result["params"]
    print(f"1. MH tokens per output token: measured {t['mh_measured']:.2f} ({p['chains']} chains), analytic "
          f"{t['mh_analytic']:.2f} ± {t['mh_analytic_std_of_measurement']:.2f}, paper approx "
          f"{t['paper_approximation']:.2f}")
    print(f"2. vs plain ({lat['plain_s']:.2f}s): MH {lat['mh_over_plain']:.1f}x, SMC({p['particles']}) "
          f"{lat['smc_over_plain']:.2f}x (target ≤ 2x); SMC vs plain batch of {p['particles']}: "
          f"{lat['smc_over_plain_batch']:.2f}x")
    for v in result["3_vs_reference_cost_model"].values():
        print(f"3. {v['chains']} chain(s): reference / ours = forward tokens {v['forward_token_ratio']:.1f}x, "
              f"wall {v['wall_time_ratio']:.1f}x (target ≥ 3x)")
    for name, h in result["4_engine_hints"].items():
        print(f"4. {name:8s}: off {h['off']['wall_s']:.2f}s / {h['off']['forward_tokens']} forward tokens, "
              f"on {h['on']['wall_s']:.2f}s / {h['on']['forward_tokens']} forward tokens")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", choices=["hf", "vllm"], default="hf",
                    help="vllm: also run every method on VLLMEngine (same weights), reported beside HFEngine")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=256, help="output length L")
    ap.add_argument("--la-tokens", type=int, default=64, help="output length of the look-ahead runs")
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=4, help="MH steps per block")
    ap.add_argument("--chains", type=int, default=8, help="independent chains for items 1 and 3")
    ap.add_argument("--particles", type=int, default=32)
    ap.add_argument("--alpha", type=float, default=4.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads; 1 keeps timings stable on a shared machine (0 = torch default)")
    a = ap.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    L = a.tokens
    with tempfile.TemporaryDirectory() as d:
        path = build_model(d, hidden=a.hidden, layers=a.layers, for_vllm=a.engine == "vllm")
        eng = load(path, a.device)
        prompt = eng.tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}])
        r = run_methods(eng, prompt, a, L, "HFEngine   ")
        r_vllm = None
        if a.engine == "vllm":
            veng = load_vllm(path, a.device)
            veng.eos_ids = ()  # fixed-length decoding, as for HFEngine
            r_vllm = run_methods(veng, prompt, a, L, "VLLMEngine ")
            close(veng)
        hints = engine_hints(eng, prompt)
        ref_eng = load(path, a.device, prefix_cache_tokens=0)
        ref: dict = {}
        for key, chains in (("mh", 1), ("mh_chains", a.chains)):
            ref[key] = asyncio.run(reference_mh(ref_eng, prompt, a.alpha, L, a.block_size, a.steps, chains, a.seed))
            print(f"reference {key:10s} chains={chains}: {ref[key]['wall_s']:.2f}s, forward tokens "
                  f"{ref[key]['forward_tokens']}", flush=True)
    result = summary(a, L, prompt, r, ref, hints)
    report(result)
    if r_vllm is not None:  # the same methods on vLLM, relative to plain sampling on vLLM
        result["vllm"] = vllm_summary(r_vllm)
        v = result["vllm"]
        print(f"vLLM: vs its plain ({v['plain_s']:.2f}s): MH {v['mh_over_plain']:.1f}x, "
              f"SMC {v['smc_over_plain']:.2f}x; MH tokens per output token {v['mh_tokens_per_output_token']:.2f}")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "power.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {OUT / 'power.json'}")


if __name__ == "__main__":
    main()
