"""GPU benchmark of VLLMEngine (vLLM 0.33, model runner V2, Tier 2 logits processor) on a model of
Qwen2.5-1.5B's shape with random weights (vLLM's dummy loader: config only, nothing downloaded),
side by side in one run, fixed output length (EOS off: random weights rarely emit it):

1. power SMC (32 particles) latency ÷ plain sampling latency (Power-SMC's paper: 1.4–3.3×), and
   ÷ a plain batch of 32 sequences;
2. MH tokens generated per output token vs the no-reuse reference cost model
   (bench/reference.py), and wall time vs the reference algorithm run on the same engine
   with its prefix cache cleared before every proposal (no reuse);
3. Tier 2's overhead: the engine's tempered sampling (logits processor, sentinel column) vs vLLM's
   own temperature sampling of the same lengths, at batch 1 and 32.
Plain sampling = vLLM alone (SamplingParams(temperature=1/α), no processor, no bookkeeping).

    python -m bench.gpu_power [--tokens 256 --block-size 64 --steps 4]  → bench/out/gpu_power.json
Exits non-zero with one line when there is no CUDA or no vLLM; bench/gpu_check.sh runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).parent / "out"
QWEN25_1_5B = dict(  # Qwen/Qwen2.5-1.5B's config.json shape
    architectures=["Qwen2ForCausalLM"], vocab_size=151936, hidden_size=1536, intermediate_size=8960,
    num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
    rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True, hidden_act="silu", sliding_window=None,
    use_sliding_window=False,
)
SMOKE = dict(QWEN25_1_5B, vocab_size=1024, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2)  # --smoke: the script's logic on a CPU


def write_model(out: Path, shape: dict) -> Path:
    """config.json of Qwen2.5-1.5B's shape + a small byte tokenizer (ids ≪ the vocabulary, so the
    padded ids past it give Tier 2 its sentinel). No weights: vLLM's dummy loader makes them."""
    from transformers import GenerationConfig, Qwen2Config

    from temper.tiny_model import build_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    n = build_tokenizer(out)
    cfg = Qwen2Config(**shape, eos_token_id=n - 1, bos_token_id=None)
    cfg.save_pretrained(out)
    GenerationConfig(eos_token_id=n - 1).save_pretrained(out)
    return out


async def timed(make) -> float:
    t = time.perf_counter()
    await make()
    return time.perf_counter() - t


def native_plain(eng, prompt: list[int], L: int, temperature: float, n: int, seed: int):
    """vLLM alone: n requests of exactly L tokens at the given temperature."""
    from vllm import SamplingParams, TokensPrompt
    from vllm.sampling_params import RequestOutputKind

    async def run(llm):
        async def one(i: int):
            sp = SamplingParams(temperature=temperature, max_tokens=L, min_tokens=L, ignore_eos=True, seed=seed + i,
                                detokenize=False, output_kind=RequestOutputKind.FINAL_ONLY)
            async for _ in llm.generate(TokensPrompt(prompt_token_ids=prompt), sp, f"native-{seed}-{n}-{i}"):
                pass

        await asyncio.gather(*(one(i) for i in range(n)))

    return lambda: eng.on_vllm(run)


def tier2_plain(eng, prompt: list[int], L: int, alpha: float, n: int, seed: int):
    from temper.decoding.engine import SampleSpec

    async def run():
        specs = [SampleSpec(tuple(prompt), L, alpha=alpha, seed=seed + i, stop_ids=()) for i in range(n)]
        out = await eng.sample(specs)
        assert all(len(o.tokens) == L for o in out)

    return run


async def median_time(make, reps: int) -> float:
    return statistics.median([await timed(make) for _ in range(reps)])


async def measure(eng, prompt: list[int], a) -> dict:
    from bench.engines import clear_prefix_cache
    from bench.power import reference_mh, run_strategy

    L, alpha, B, N = a.tokens, a.alpha, a.block_size, a.steps
    r: dict = {}
    await median_time(native_plain(eng, prompt, 16, 1 / alpha, 2, 0), 1)  # warm-up
    await median_time(tier2_plain(eng, prompt, 16, alpha, 2, 0), 1)
    for n in (1, 32):
        r[f"plain_{n}_s"] = await median_time(native_plain(eng, prompt, L, 1 / alpha, n, 10), a.reps)
        r[f"tier2_{n}_s"] = await median_time(tier2_plain(eng, prompt, L, alpha, n, 10), a.reps)
        print(f"batch {n:2d}: vLLM plain {r[f'plain_{n}_s']:.3f}s, Tier 2 {r[f'tier2_{n}_s']:.3f}s "
              f"({r[f'tier2_{n}_s'] / r[f'plain_{n}_s']:.2f}x)", flush=True)
    smc = {"strategy": "power", "method": "smc", "alpha": alpha, "particles": 32}
    mh = {"strategy": "power", "method": "mh", "alpha": alpha, "block_size": B, "mcmc_steps": N}
    for key, dec in (("smc", smc), ("mh", mh)):
        runs = []
        for rep in range(a.reps):
            await clear_prefix_cache(eng)
            runs.append(await run_strategy(eng, prompt, dec, 1, L, seed=rep))
        r[key] = min(runs, key=lambda x: x["wall_s"])
        r[key]["wall_s"] = statistics.median(x["wall_s"] for x in runs)
        print(f"{key}: {r[key]['wall_s']:.3f}s, tokens generated {r[key]['tokens_generated']}", flush=True)
    await clear_prefix_cache(eng)
    r["mh_reference"] = await reference_mh(eng, prompt, alpha, L, B, N, 1, a.seed, reset_cache=True)
    print(f"mh reference (no reuse): {r['mh_reference']['wall_s']:.3f}s", flush=True)
    return r


def report(r: dict, a) -> dict:
    from bench.reference import mh_token_count

    L = a.tokens
    return {
        "1_smc32_over_plain": r["smc"]["wall_s"] / r["plain_1_s"],
        "1_smc32_over_plain_batch32": r["smc"]["wall_s"] / r["plain_32_s"],
        "1_paper_range": [1.4, 3.3],
        "2_mh_tokens_per_output_token": r["mh"]["tokens_generated"] / L,
        "2_mh_tokens_reference_model": mh_token_count(L, a.block_size, a.steps) / L,
        "2_mh_over_plain": r["mh"]["wall_s"] / r["plain_1_s"],
        "2_reference_over_mh_wall": r["mh_reference"]["wall_s"] / r["mh"]["wall_s"],
        "3_tier2_overhead_batch1": r["tier2_1_s"] / r["plain_1_s"],
        "3_tier2_overhead_batch32": r["tier2_32_s"] / r["plain_32_s"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=256, help="output length L")
    ap.add_argument("--prompt-tokens", type=int, default=200)
    ap.add_argument("--alpha", type=float, default=4.0)
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eager", action="store_true", help="no CUDA graphs / torch.compile (faster start)")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.5)
    ap.add_argument("--smoke", action="store_true", help="a tiny shape on any device, to test this script")
    a = ap.parse_args()
    import torch

    if not torch.cuda.is_available() and not a.smoke:
        sys.exit("gpu_power: FAILED: no CUDA device (torch.cuda.is_available() is False)")
    try:
        import vllm
    except ImportError as exc:
        sys.exit(f"gpu_power: FAILED: vLLM is not importable ({exc}); pip install -e '.[vllm]'")
    from bench.engines import close
    from temper.decoding.engines.vllm import VLLMEngine

    with tempfile.TemporaryDirectory() as d:
        path = write_model(Path(d) / "qwen2.5-1.5b-shape", SMOKE if a.smoke else QWEN25_1_5B)
        t = time.perf_counter()
        opts = dict(kv_cache_bytes=256 << 20, block_size=32) if a.smoke else {}
        eng = VLLMEngine.from_pretrained(
            str(path), dtype="float32" if a.smoke else "bfloat16", max_model_len=4096, enforce_eager=a.eager or a.smoke,
            gpu_memory_utilization=a.gpu_memory_utilization, engine_args_extra={"load_format": "dummy"}, **opts)
        start_s = time.perf_counter() - t
        print(f"vLLM {vllm.__version__} started in {start_s:.1f}s: runner {eng.runner}, tier {eng.tier}", flush=True)
        if eng.runner != "v2" or eng.tier != 2:
            print("gpu_power: WARNING: expected model runner v2 with Tier 2 on GPU", flush=True)
        eng.eos_ids = ()  # fixed output length
        prompt = (list(range(32, 32 + 200)) * 4)[: a.prompt_tokens]
        r = asyncio.run(measure(eng, prompt, a))
        close(eng)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (smoke)"
    result = {"device": device, "vllm": vllm.__version__, "runner": eng.runner,
              "tier": eng.tier, "start_s": start_s, "eager": a.eager,
              "params": {k: getattr(a, k) for k in ("tokens", "prompt_tokens", "alpha", "block_size", "steps", "reps")},
              "summary": report(r, a), "runs": r}
    for k, v in result["summary"].items():
        print(f"{k}: {v}")
    OUT.mkdir(parents=True, exist_ok=True)
    out = OUT / ("gpu_power_smoke.json" if a.smoke else "gpu_power.json")
    out.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
