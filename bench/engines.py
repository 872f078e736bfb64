"""What the benchmarks share about engines: one model builder both engines can run, loaders,
and clearing a prefix cache whatever the engine.

vLLM's CPU attention needs head_dim ≥ 32 and its Tier 2 log normaliser a padded vocabulary id, so
a benchmark that runs vLLM builds its tiny model with both (the transformers engine runs the very
same weights, for a side-by-side comparison).
"""

from __future__ import annotations

from pathlib import Path

from temper.tiny_model import build_tiny_model

VLLM_CPU_OPTIONS = dict(max_model_len=4096, kv_cache_bytes=1 << 30, block_size=32)


def build_model(out: str | Path, *, hidden: int, layers: int, for_vllm: bool) -> Path:
    heads = 8
    head_dim = max(32, hidden // heads) if for_vllm else None
    return build_tiny_model(out, hidden=hidden, layers=layers, heads=heads, kv_heads=4, max_positions=4096,
                            head_dim=head_dim, reserved_vocab=8 if for_vllm else 0)


def load_vllm(path: str | Path, device: str, **kw):
    """VLLMEngine in fp32 (the transformers engine's dtype here); vLLM picks CPU or GPU itself."""
    from temper.decoding.engines.vllm import VLLMEngine

    opts = dict(VLLM_CPU_OPTIONS) if device == "cpu" else {"max_model_len": 4096}
    opts.update(kw)
    return VLLMEngine.from_pretrained(str(path), dtype="float32", **opts)


async def clear_prefix_cache(engine) -> None:
    if hasattr(engine, "prefix_cache"):  # HFEngine
        engine.prefix_cache.clear()
    else:
        await engine.reset_prefix_cache()


def close(engine) -> None:
    import asyncio

    asyncio.run(engine.close())
