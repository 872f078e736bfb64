"""PrefixCache against a brute-force longest-common-prefix oracle."""

from __future__ import annotations

import numpy as np
import torch

from temper.decoding.engines.prefix_cache import PrefixCache


def kv_of(tokens):
    # KV stand-in whose "position" values are the tokens themselves: [2, L]
    return torch.tensor(tokens, dtype=torch.float32)[None, :].repeat(2, 1)


def test_match_and_insert_against_brute_force():
    rng = np.random.default_rng(0)
    cache = PrefixCache(max_tokens=10**6, seq_dim=1)
    stored: list[list[int]] = []
    for _ in range(200):
        if stored and rng.random() < 0.6:  # fork from a stored sequence, like MH / SMC do
            base = stored[rng.integers(len(stored))]
            seq = base[: rng.integers(0, len(base) + 1)] + list(rng.integers(0, 3, rng.integers(1, 6)))
        else:
            seq = list(rng.integers(0, 3, rng.integers(1, 12)))
        q = list(rng.integers(0, 3, rng.integers(1, 12))) if rng.random() < 0.3 else seq
        best = max((next((i for i, (a, b) in enumerate(zip(s, q, strict=False)) if a != b), min(len(s), len(q)))
                    for s in stored), default=0)
        m, kv = cache.match(q)
        assert m == best
        if m:
            assert kv[0].tolist() == q[:m]
        cache.insert(seq, kv_of(seq))
        stored.append(seq)
    # storage is shared: never more than the distinct tokens of the trie
    assert cache.total_tokens <= sum(len(s) for s in stored)


def test_budget_evicts_least_recently_used():
    cache = PrefixCache(max_tokens=8, seq_dim=1)
    cache.insert([1, 2, 3, 4], kv_of([1, 2, 3, 4]))
    cache.insert([5, 6, 7, 8], kv_of([5, 6, 7, 8]))
    cache.match([1, 2, 3, 4])  # touch the first
    cache.insert([9, 9, 9], kv_of([9, 9, 9]))
    assert cache.total_tokens <= 8
    assert cache.match([1, 2, 3, 4])[0] == 4
    assert cache.match([5, 6, 7, 8])[0] == 0


def test_disabled_cache_stores_nothing():
    cache = PrefixCache(max_tokens=0, seq_dim=1)
    cache.insert([1, 2], kv_of([1, 2]))
    assert cache.match([1, 2]) == (0, None)
    assert cache.total_tokens == 0


def test_limit_keeps_last_token_out():
    cache = PrefixCache(max_tokens=100, seq_dim=1)
    cache.insert([1, 2, 3], kv_of([1, 2, 3]))
    assert cache.match([1, 2, 3], limit=2)[0] == 2


def test_pinned_paths_survive_eviction_until_unpinned():
    cache = PrefixCache(max_tokens=12, seq_dim=1)
    state = tuple(range(10))
    cache.insert(state, kv_of(state))
    n = cache.pin(state[:7])  # ends inside the edge: split there, the head is pinned
    assert n == 7
    for k in range(3):  # newer entries push the budget
        other = (100 + k,) * 6
        cache.insert(other, kv_of(other))
    assert cache.match(state)[0] >= 7  # the pinned head survived, its unpinned tail may not
    assert cache.total_tokens <= 12 + 7
    cache.unpin(state[:7], n)
    for k in range(3):
        other = (200 + k,) * 6
        cache.insert(other, kv_of(other))
    assert cache.match(state)[0] == 0  # unpinned: evicted like anything else
    assert cache.total_tokens <= 12
