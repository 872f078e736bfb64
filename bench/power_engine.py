"""The HF engine under power-sampling loads, each hint on and off side by side (called by
bench/power.py; forward tokens and wall time, same seeds, same model):

1. retain: 8 MH-like chains propose from cuts of their current states while the prefix cache
   holds the states but not the proposals too. Without `retain` a state's tail ages out of the
   cache behind the rejected proposals and a later cut into it re-prefills; with it, the states
   stay and each proposal computes one prefix token.
2. resident: SMC-like particles continue at every checkpoint, a quarter of them replaced by
   copies of others (resampling). Resident particles are continued in place and only copies
   copy a row; otherwise each checkpoint re-admits every particle through the prefix cache.
3. joins: rows joining a running batch of 32 every step; a join writes only its own slot, so a
   step with a join should cost about what a step without one costs.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

from temper.decoding.engine import SampleSpec
from temper.decoding.engines.hf import HFEngine


def measure(eng: HFEngine, work) -> dict:
    f0, p0 = eng.stats.forward_tokens, eng.stats.forward_passes
    t = time.perf_counter()
    asyncio.run(work())
    return {"wall_s": time.perf_counter() - t, "forward_tokens": eng.stats.forward_tokens - f0,
            "forward_passes": eng.stats.forward_passes - p0}


def retain_run(eng: HFEngine, prompt: tuple, retain: bool, chains: int = 8, steps: int = 20,
               length: int = 96) -> dict:
    """`chains` MH-like chains side by side: each proposes from a random cut of its state, and
    30% of proposals are accepted (the proposal becomes the state)."""

    async def chain(c: int):
        rng = np.random.default_rng(c)
        first = await eng.sample([SampleSpec(prompt, length, seed=c, stop_ids=())])
        state = prompt + tuple(first[0].tokens)
        for s in range(steps):
            cut = len(prompt) + int(rng.integers(0, length))
            keep = state if retain else ()
            y = (await eng.sample([SampleSpec(state[:cut], len(state) - cut, alpha=4.0, seed=1000 * c + s,
                                              stop_ids=(), retain=keep)]))[0]
            if rng.random() < 0.3:
                state = state[:cut] + tuple(y.tokens)

    async def work():
        await asyncio.gather(*(chain(c) for c in range(chains)))

    eng.prefix_cache.clear()
    return measure(eng, work)


def resident_run(eng: HFEngine, prompt: tuple, resident: bool, particles: int = 32, interval: int = 16,
                 checkpoints: int = 8) -> dict:
    rng = np.random.default_rng(1)

    async def work():
        seqs = [prompt] * particles
        for c in range(checkpoints):
            out = await eng.sample([SampleSpec(s, interval, alpha=4.0, seed=c * 1000 + i, stop_ids=(),
                                               resident=resident) for i, s in enumerate(seqs)])
            full = [s + tuple(o.tokens) for s, o in zip(seqs, out, strict=True)]
            anc = np.arange(particles)
            anc[rng.choice(particles, particles // 4, replace=False)] = rng.integers(0, particles, particles // 4)
            seqs = [full[a] for a in anc]

    eng.prefix_cache.clear()
    return measure(eng, work)


def join_run(eng: HFEngine, prompt: tuple, joins: bool, rows: int = 32, steps: int = 64) -> dict:
    async def work():
        p0 = eng.stats.forward_passes
        base = asyncio.ensure_future(eng.sample([SampleSpec(prompt, steps, seed=i, stop_ids=()) for i in range(rows)]))
        while eng.stats.forward_passes < p0 + 2:  # the batch is running, its prompt cached
            await asyncio.sleep(0.001)
        if joins:  # one short request joins every step while the batch runs
            others = []
            for s in range(steps - 8):
                others.append(asyncio.ensure_future(eng.sample([SampleSpec(prompt + (s % 7,), 2, seed=9000 + s,
                                                                           stop_ids=())])))
                await asyncio.sleep(0)
            await asyncio.gather(*others)
        await base

    eng.prefix_cache.clear()
    return measure(eng, work)


def engine_hints(eng: HFEngine, prompt: list[int]) -> dict:
    p = tuple(prompt)
    budget = eng.prefix_cache.max_tokens
    eng.prefix_cache.max_tokens = len(p) + 8 * 96 + 128  # the 8 states fit, their proposals do not
    out = {"retain": {k: retain_run(eng, p, k) for k in (False, True)}}
    eng.prefix_cache.max_tokens = budget
    out["resident"] = {k: resident_run(eng, p, k) for k in (False, True)}
    out["joins"] = {k: join_run(eng, p, k) for k in (False, True)}
    return {name: {("on" if k else "off"): v for k, v in runs.items()} for name, runs in out.items()}
