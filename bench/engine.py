"""Engine benchmark, side by side in one run (CPU or CUDA):

1. tokens/s of HFEngine vs transformers' own `generate` on the same model and token count,
   at batch 1 and batch 16 (with --engine vllm: VLLMEngine too, on the same weights);
2. resampling suffixes from random cuts of a 512-token sequence with and without the prefix
   cache: tokens run through the model and wall time (vLLM: its prefix cache reset before every
   cut stands for "without").

    python -m bench.engine [--engine vllm] [--hidden 256 --layers 4 --tokens 64]  → bench/out/engine.json
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
from temper.decoding.engine import SampleSpec
from temper.decoding.engines.hf import HFEngine

OUT = Path(__file__).parent / "out"


def hf_generate_tps(engine: HFEngine, prompt: list[int], batch: int, tokens: int, reps: int) -> float:
    model = engine.model
    ids = torch.tensor([prompt] * batch, device=engine.device)
    kw = dict(do_sample=True, max_new_tokens=tokens, min_new_tokens=tokens, top_k=0, top_p=1.0,
              temperature=1.0, pad_token_id=engine.pad_id)
    kw["attention_mask"] = torch.ones_like(ids)
    model.generate(ids, **kw)  # warm-up
    t = time.perf_counter()
    for _ in range(reps):
        out = model.generate(ids, **kw)
    dt = time.perf_counter() - t
    assert out.shape[1] - ids.shape[1] == tokens
    return batch * tokens * reps / dt


def engine_tps(engine, prompt: list[int], batch: int, tokens: int, reps: int) -> float:
    async def run(seed0: int):
        specs = [SampleSpec(tuple(prompt), tokens, seed=seed0 + i, stop_ids=()) for i in range(batch)]
        out = await engine.sample(specs)
        assert all(len(o.tokens) == tokens for o in out)

    async def main():
        await clear_prefix_cache(engine)
        await run(10_000)  # warm-up
        t = time.perf_counter()
        for r in range(reps):
            await run(r * batch)
        return time.perf_counter() - t

    return batch * tokens * reps / asyncio.run(main())


def resample_cost(engine, base_len: int, cuts: list[int], suffix: int, reset_each: bool = False) -> dict:
    """Generate one base_len-token sequence, then resample `suffix` tokens from each cut
    (reset_each: clear the prefix cache before every cut, i.e. no reuse)."""
    async def main():
        prompt = (1, 2, 3, 4)
        await clear_prefix_cache(engine)
        base = (await engine.sample([SampleSpec(prompt, base_len, seed=1, stop_ids=())]))[0]
        f0, t0 = engine.stats.forward_tokens, time.perf_counter()
        for i, c in enumerate(cuts):
            if reset_each:
                await clear_prefix_cache(engine)
            await engine.sample([SampleSpec(prompt + tuple(base.tokens[:c]), suffix, seed=100 + i, stop_ids=())])
        return engine.stats.forward_tokens - f0, time.perf_counter() - t0

    fwd, dt = asyncio.run(main())
    return {"forward_tokens": fwd, "seconds": dt}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--engine", choices=["hf", "vllm"], default="hf",
                    help="vllm: also run VLLMEngine on the same weights, reported beside HFEngine")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--cuts", type=int, default=24)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads; 1 keeps timings stable on a shared 2-core machine, where a "
                         "second OpenMP thread spinning against the engine thread slows HFEngine ~10x "
                         "(0 = torch default); vLLM's CPU worker also runs with 1")
    a = ap.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rng = np.random.default_rng(0)
    cuts = sorted(int(c) for c in rng.integers(1, 512, size=a.cuts))
    with tempfile.TemporaryDirectory() as d:
        path = build_model(d, hidden=a.hidden, layers=a.layers, for_vllm=a.engine == "vllm")
        eng = HFEngine.from_pretrained(str(path), device=device)
        prompt = eng.tokenizer.apply_chat_template([{"role": "user", "content": "Benchmark prompt, please."}])
        result: dict = {"device": device, "torch_threads": torch.get_num_threads(),
                        "model": {"hidden": a.hidden, "layers": a.layers},
                        "new_tokens": a.tokens, "throughput": {}}
        vllm = load_vllm(path, device) if a.engine == "vllm" else None
        for batch in (1, 16):
            ours = engine_tps(eng, prompt, batch, a.tokens, a.reps)
            theirs = hf_generate_tps(eng, prompt, batch, a.tokens, a.reps)
            row = {"temper_tokens_per_s": ours, "hf_generate_tokens_per_s": theirs, "ratio": ours / theirs}
            line = (f"batch {batch:2d}: temper {ours:8.1f} tok/s  generate {theirs:8.1f} tok/s  "
                    f"ratio {ours / theirs:.2f}x")
            if vllm is not None:
                row["vllm_tokens_per_s"] = v = engine_tps(vllm, prompt, batch, a.tokens, a.reps)
                row["vllm_over_temper_hf"] = v / ours
                line += f"  vLLM {v:8.1f} tok/s ({v / ours:.2f}x HFEngine)"
            result["throughput"][f"batch_{batch}"] = row
            print(line, flush=True)

        cold = HFEngine.from_pretrained(str(path), device=device, prefix_cache_tokens=0)
        warm_eng = HFEngine.from_pretrained(str(path), device=device)
        result["resample_512"] = resample_report("HFEngine", resample_cost(warm_eng, 512, cuts, 16),
                                                 resample_cost(cold, 512, cuts, 16), len(cuts))
        if vllm is not None:
            result["vllm_resample_512"] = resample_report(
                "VLLMEngine", resample_cost(vllm, 512, cuts, 16), resample_cost(vllm, 512, cuts, 16, reset_each=True),
                len(cuts))
            close(vllm)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "engine.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {OUT / 'engine.json'}")


def resample_report(label: str, warm: dict, nocache: dict, n_cuts: int) -> dict:
    r = {"cuts": n_cuts, "suffix_tokens": 16, "with_cache": warm, "without_cache": nocache,
         "forward_token_ratio": nocache["forward_tokens"] / warm["forward_tokens"],
         "wall_time_ratio": nocache["seconds"] / warm["seconds"]}
    print(f"{label}: resample {n_cuts} suffixes of 16 from random cuts of 512 tokens: forward tokens "
          f"{warm['forward_tokens']} (cache) vs {nocache['forward_tokens']} (no cache) = "
          f"{r['forward_token_ratio']:.1f}x fewer; wall {warm['seconds']:.2f}s vs "
          f"{nocache['seconds']:.2f}s = {r['wall_time_ratio']:.1f}x faster", flush=True)
    return r


if __name__ == "__main__":
    main()
