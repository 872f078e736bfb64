"""HFEngine's running batch and KV hints: sequences join without moving anyone's KV, resident
samples are continued in place (the first continuation adopts the slot, copies copy one row),
`cache=False` samples are not kept, `retain` pins a caller's state while the samples that
branch off it run. Every behaviour is checked against a cold engine (no prefix cache) drawing the
same seeded tokens, so a KV mix-up shows as different tokens."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from temper.decoding.engine import SampleSpec
from temper.decoding.engines.hf import HFEngine


def chat_prompt(engine, text="tell me"):
    return tuple(engine.tokenizer.apply_chat_template([{"role": "user", "content": text}]))


def model_tokens(engine):
    counter = {"tokens": 0}
    engine.model.get_input_embeddings().register_forward_pre_hook(
        lambda _m, args: counter.__setitem__("tokens", counter["tokens"] + args[0].numel())
    )
    return counter


@pytest.fixture
def cold(tiny_model_dir):
    return HFEngine.from_pretrained(str(tiny_model_dir), device="cpu", dtype="float32", prefix_cache_tokens=0)


async def same_as_cold(cold, specs, got) -> None:
    for spec, g in zip(specs, got, strict=True):
        ref = (await cold.sample([spec]))[0]
        assert ref.tokens == g.tokens
        np.testing.assert_allclose(ref.logp, g.logp, atol=1e-4)
        np.testing.assert_allclose(ref.log_w, g.log_w, atol=1e-4)


async def test_resident_samples_are_continued_in_place(hf_engine, cold):
    p = chat_prompt(hf_engine)
    first = (await hf_engine.sample([SampleSpec(p, 6, seed=1, stop_ids=(), resident=True)]))[0]
    counter = model_tokens(hf_engine)
    passes = hf_engine.stats.forward_passes
    specs = [SampleSpec(p + tuple(first.tokens), 5, seed=s, stop_ids=(), resident=True) for s in (2, 3, 4)]
    got = await hf_engine.sample(specs)
    # no prefill: one adopts the parked row, two copy it; each step feeds one token per row
    assert hf_engine.stats.forward_passes - passes == 5
    assert counter["tokens"] == 3 * 5
    assert [g.cached_prefix_tokens for g in got] == [len(specs[0].prefix) - 1] * 3
    await same_as_cold(cold, specs, got)


async def test_unclaimed_resident_rows_go_to_the_prefix_cache(hf_engine):
    p = chat_prompt(hf_engine)
    a, b = await hf_engine.sample([SampleSpec(p, 6, seed=s, stop_ids=(), resident=True) for s in (1, 2)])
    # the caller continues `a` only: `b` is freed at once, its KV cached for later
    await hf_engine.sample([SampleSpec(p + tuple(a.tokens), 3, seed=5, stop_ids=())])
    assert hf_engine.prefix_cache.match(p + tuple(b.tokens))[0] == len(p) + len(b.tokens) - 1
    assert hf_engine.queue_depth == 0


async def test_cache_false_samples_are_not_kept(hf_engine):
    p = chat_prompt(hf_engine, "no cache please")
    s = (await hf_engine.sample([SampleSpec(p, 8, seed=3, stop_ids=(), cache=False)]))[0]
    assert hf_engine.prefix_cache.match(p + tuple(s.tokens))[0] == 0
    s = (await hf_engine.sample([SampleSpec(p, 8, seed=3, stop_ids=())]))[0]
    assert hf_engine.prefix_cache.match(p + tuple(s.tokens))[0] == len(p) + 7


@pytest.mark.parametrize("retain", [True, False])
async def test_retain_keeps_a_state_while_branches_come_and_go(tiny_model_dir, retain):
    eng = HFEngine.from_pretrained(str(tiny_model_dir), device="cpu", dtype="float32", prefix_cache_tokens=160)
    p = chat_prompt(eng)
    state = p + tuple((await eng.sample([SampleSpec(p, 40, seed=1, stop_ids=())]))[0].tokens)
    for k in range(6):  # proposals from cuts of the state, each cached when it finishes
        cut = len(p) + 20 - 3 * k  # earlier and earlier: the state past the cut is not touched by lookups
        keep = state if retain else ()
        await eng.sample([SampleSpec(state[:cut], 30, seed=10 + k, stop_ids=(), retain=keep)])
    kept = eng.prefix_cache.match(state)[0]
    assert eng.prefix_cache.total_tokens <= 160
    if retain:
        assert kept == len(state) - 1  # the whole state survived (its last token never had KV)
    else:
        assert kept < len(state) - 1  # without the hint, the newer branches pushed it out


async def test_rows_join_a_running_batch_and_keep_their_tokens(hf_engine, cold):
    p = chat_prompt(hf_engine, "a longer question here")
    long_spec = SampleSpec(p, 30, alpha=2.0, seed=7, stop_ids=())
    task = asyncio.ensure_future(hf_engine.sample([long_spec]))
    for _ in range(5):
        await asyncio.sleep(0.01)
    joiners = [SampleSpec(p[: 8 + 3 * i], 6 + i, alpha=2.0, seed=40 + i, stop_ids=()) for i in range(4)]
    joined = await hf_engine.sample(joiners)
    first = await task
    await same_as_cold(cold, [long_spec, *joiners], first + joined)


async def test_buffers_grow_past_their_first_size(hf_engine, cold):
    """More rows than the first slot allocation, and a window past its first column count:
    the buffers are re-laid out, every row's KV with them."""
    p = chat_prompt(hf_engine)
    specs = [SampleSpec(p[: 10 + i], 270 - 20 * i, alpha=4.0, seed=i, stop_ids=()) for i in range(12)]
    got = await hf_engine.sample(specs)
    assert [len(g.tokens) for g in got] == [s.max_new_tokens for s in specs]
    await same_as_cold(cold, specs[::4], got[::4])
