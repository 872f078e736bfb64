"""HFEngine specifics: exact log-probs, prefix reuse, batching, loading errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from temper.decoding.engine import SampleSpec
from temper.decoding.engines.hf import EngineLoadError, HFEngine


def chat_prompt(engine, text="tell me"):
    return tuple(engine.tokenizer.apply_chat_template([{"role": "user", "content": text}]))


def count_model_tokens(engine):
    """Count tokens entering the model via a hook on the input embeddings."""
    counter = {"tokens": 0}

    def hook(_module, args):
        counter["tokens"] += args[0].numel()

    engine.model.get_input_embeddings().register_forward_pre_hook(hook)
    return counter


@pytest.mark.parametrize("alpha", [1.0, 4.0])
async def test_logp_and_log_normaliser_match_fresh_forward(hf_engine, alpha):
    p = chat_prompt(hf_engine)
    out = await hf_engine.sample([SampleSpec(p, 12, alpha=alpha, seed=s, stop_ids=()) for s in range(3)])
    for s in out:
        full = torch.tensor([list(p) + s.tokens])
        with torch.no_grad():
            logits = hf_engine.model(full).logits[0, len(p) - 1 : -1].float()  # [T, V]
        lp = torch.log_softmax(logits, -1)
        ref_logp = lp.gather(1, torch.tensor(s.tokens)[:, None])[:, 0].numpy()
        np.testing.assert_allclose(s.logp, ref_logp, atol=1e-4)
        ref_logz = (torch.logsumexp(alpha * logits, -1) - alpha * torch.logsumexp(logits, -1)).numpy()
        np.testing.assert_allclose(s.log_w, ref_logz, atol=1e-4)
        np.testing.assert_allclose(s.log_w, alpha * s.logp - s.logq, atol=1e-4)


async def test_prefix_reuse_computes_only_new_positions(tiny_model_dir):
    eng = HFEngine.from_pretrained(str(tiny_model_dir), device="cpu", dtype="float32")
    counter = count_model_tokens(eng)
    p = chat_prompt(eng)
    base = (await eng.sample([SampleSpec(p, 40, seed=1, stop_ids=())]))[0]
    # resample suffixes from cuts inside the generated part: the prefix is cached, so only the
    # cut's last token is recomputed (its logits are needed), then one token per decode step
    for cut in (5, 17, 33):
        before = counter["tokens"]
        prefix = p + tuple(base.tokens[:cut])
        s = (await eng.sample([SampleSpec(prefix, 4, seed=9, stop_ids=())]))[0]
        assert s.cached_prefix_tokens == len(prefix) - 1
        assert s.computed_prefix_tokens == 1
        assert counter["tokens"] - before == 1 + (len(s.tokens) - 1)

    # same seed, cache disabled: same tokens, but the whole prefix is recomputed
    cold = HFEngine.from_pretrained(str(tiny_model_dir), device="cpu", dtype="float32", prefix_cache_tokens=0)
    cold_counter = count_model_tokens(cold)
    prefix = p + tuple(base.tokens[:17])
    warm_s = (await eng.sample([SampleSpec(prefix, 8, seed=21, stop_ids=())]))[0]
    cold_s = (await cold.sample([SampleSpec(prefix, 8, seed=21, stop_ids=())]))[0]
    assert warm_s.tokens == cold_s.tokens
    np.testing.assert_allclose(warm_s.logp, cold_s.logp, atol=1e-4)
    assert cold_s.cached_prefix_tokens == 0
    assert cold_counter["tokens"] == len(prefix) + len(cold_s.tokens) - 1


async def test_siblings_run_as_one_batch(hf_engine):
    p = chat_prompt(hf_engine)
    before = hf_engine.stats.forward_passes
    out = await hf_engine.sample([SampleSpec(p, 10, seed=s, stop_ids=()) for s in range(8)])
    assert all(len(o.tokens) == 10 for o in out)
    # one prefill shared by the 8 siblings, then one batched pass per further token
    assert hf_engine.stats.forward_passes - before == 1 + 9


async def test_ragged_prefixes_batched_agree_with_solo(hf_engine, tiny_model_dir):
    p = chat_prompt(hf_engine, "a longer question here")
    specs = [SampleSpec(p[: 6 + 3 * i], 7, alpha=2.0, seed=40 + i, stop_ids=()) for i in range(4)]
    together = await hf_engine.sample(specs)
    solo_engine = HFEngine.from_pretrained(str(tiny_model_dir), device="cpu", dtype="float32", prefix_cache_tokens=0)
    for spec, t in zip(specs, together, strict=True):
        alone = (await solo_engine.sample([spec]))[0]
        assert alone.tokens == t.tokens
        np.testing.assert_allclose(alone.logp, t.logp, atol=1e-4)


async def test_prefix_cache_budget_is_enforced(tiny_model_dir):
    eng = HFEngine.from_pretrained(str(tiny_model_dir), device="cpu", dtype="float32", prefix_cache_tokens=64)
    p = chat_prompt(eng)
    for s in range(5):
        await eng.sample([SampleSpec(p + (s,), 30, seed=s, stop_ids=())])
    assert eng.prefix_cache.total_tokens <= 64


def test_unknown_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(EngineLoadError, match="no model directory"):
        HFEngine.from_pretrained(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(EngineLoadError, match="cannot load"):
        HFEngine.from_pretrained(str(tmp_path / "empty"))
    with pytest.raises(EngineLoadError, match="dtype"):
        HFEngine.from_pretrained(str(tmp_path / "empty"), dtype="float8")


async def test_bf16_loads_and_samples(tiny_model_dir):
    eng = HFEngine.from_pretrained(str(tiny_model_dir), device="cpu", dtype="bfloat16")
    s = (await eng.sample([SampleSpec(chat_prompt(eng), 5, seed=0, stop_ids=())]))[0]
    assert len(s.tokens) == 5 and s.logp.dtype == np.float32


def test_default_model_is_bundled():
    from temper.decoding.engines.hf import DEFAULT_MODEL_PATH

    assert (DEFAULT_MODEL_PATH / "config.json").is_file()
    assert (DEFAULT_MODEL_PATH / "tokenizer.json").is_file()


@pytest.mark.gpu
async def test_cuda_bf16_matches_cpu_tokens_mostly(tiny_model_dir):
    eng = HFEngine.from_pretrained(str(tiny_model_dir), device="cuda", dtype="float32")
    s = (await eng.sample([SampleSpec(chat_prompt(eng), 8, seed=0, stop_ids=())]))[0]
    assert len(s.tokens) == 8


async def test_batched_prefill_mixing_cached_and_fresh_prefixes(tiny_model_dir):
    warm = HFEngine.from_pretrained(str(tiny_model_dir), device="cpu", dtype="float32")
    cold = HFEngine.from_pretrained(str(tiny_model_dir), device="cpu", dtype="float32", prefix_cache_tokens=0)
    p = chat_prompt(warm)
    base = (await warm.sample([SampleSpec(p, 30, seed=3, stop_ids=())]))[0]
    specs = [SampleSpec(p + tuple(base.tokens[:c]), 6, alpha=4.0, seed=c, stop_ids=()) for c in (2, 11, 25)]
    specs.append(SampleSpec(chat_prompt(warm, "something else entirely"), 6, seed=99, stop_ids=()))
    passes = warm.stats.forward_passes
    together = await warm.sample(specs)
    assert warm.stats.forward_passes - passes == 6  # one batched prefill + 5 decode steps
    assert [s.computed_prefix_tokens for s in together[:3]] == [1, 1, 1]
    assert together[3].computed_prefix_tokens > 5  # only the chat-template opening was cached
    for spec, t in zip(specs, together, strict=True):
        alone = (await cold.sample([spec]))[0]
        assert alone.tokens == t.tokens
        np.testing.assert_allclose(alone.log_w, t.log_w, atol=1e-4)


async def test_callback_stop_on_first_token_keeps_exactly_one(hf_engine):
    p = chat_prompt(hf_engine)
    out = await hf_engine.sample([SampleSpec(p, 10, seed=1, stop_ids=())], lambda i, t: False)
    assert len(out[0].tokens) == 1 and out[0].finish_reason == "stop"
    assert out[0].logp.shape == (1,)
    # the engine keeps serving, and the cached KV matches the kept tokens
    again = await hf_engine.sample([SampleSpec(p + tuple(out[0].tokens), 3, seed=2, stop_ids=())])
    assert len(again[0].tokens) == 3


async def test_batch_empties_and_refills(hf_engine):
    """All rows finishing at once leaves no batch; the next call builds a fresh one."""
    p = chat_prompt(hf_engine)
    for r in range(3):
        out = await hf_engine.sample([SampleSpec(p, 3, seed=r * 10 + i, stop_ids=()) for i in range(4)])
        assert [len(o.tokens) for o in out] == [3, 3, 3, 3]
        # rows done at their first token never join; the old batch is all finished rows
        one = await hf_engine.sample([SampleSpec(p, 1, seed=r, stop_ids=()) for _ in range(2)])
        assert [len(o.tokens) for o in one] == [1, 1]
    assert hf_engine.queue_depth == 0


async def test_a_failing_step_fails_its_callers_instead_of_hanging(hf_engine, monkeypatch):
    import asyncio

    p = chat_prompt(hf_engine)

    def boom(*a, **k):
        raise RuntimeError("model exploded")

    monkeypatch.setattr(hf_engine.scheduler, "admit", boom)
    with pytest.raises(RuntimeError, match="exploded"):
        await asyncio.wait_for(hf_engine.sample([SampleSpec(p, 3, seed=1)]), timeout=30)
    monkeypatch.undo()
    out = await hf_engine.sample([SampleSpec(p, 3, seed=1, stop_ids=())])
    assert len(out[0].tokens) == 3


async def test_finished_samples_are_cached_when_the_call_returns(hf_engine):
    p = chat_prompt(hf_engine)
    s = (await hf_engine.sample([SampleSpec(p, 12, seed=4, stop_ids=())]))[0]
    # prefix + all generated tokens but the last (whose KV was never computed)
    assert hf_engine.prefix_cache.match(p + tuple(s.tokens))[0] == len(p) + len(s.tokens) - 1
