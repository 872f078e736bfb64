"""power_math against brute force: suffix sums, MH / i-SIR decisions (and their invariance of π
by exact enumeration), weights / ESS, systematic resampling, ramp re-weighting, the reference's
truncated acceptance, the analytic token count; plus the Triton kernels' torch twins against
these functions."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from temper.decoding import power_math as pm


def brute_lse(x):
    m = max(x)
    return m + math.log(sum(math.exp(v - m) for v in x)) if m > -math.inf else -math.inf


def test_logsumexp_and_logmeanexp():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 7)) * 30
    x[0, :3] = -np.inf
    for r in range(5):
        assert pm.logsumexp(x)[r] == pytest.approx(brute_lse(list(x[r])))
        assert pm.logmeanexp(x)[r] == pytest.approx(brute_lse(list(x[r])) - math.log(7))
    assert pm.logsumexp(np.full((1, 3), -np.inf))[0] == -np.inf


def test_suffix_sums_count_only_cut_to_length():
    rng = np.random.default_rng(1)
    lw = rng.normal(size=(6, 9)).astype(np.float32)
    length = rng.integers(0, 10, size=6)
    cut = rng.integers(0, 10, size=6)
    got = pm.suffix_sums(lw, length, cut)
    for b in range(6):
        want = sum(float(lw[b, j]) for j in range(9) if cut[b] <= j < length[b])
        assert got[b] == pytest.approx(want, abs=1e-6)


def test_mh_accept_is_metropolis_rule():
    cur = np.array([-1.0, -1.0, -5.0, -np.inf])
    prop = np.array([-0.5, -3.0, -5.0, -1.0])
    # log r = prop − cur; accept iff log u < log r
    u = np.array([0.9, math.exp(-2.0) * 0.999, 0.5, 0.3])
    assert pm.mh_log_accept(cur, prop).tolist()[:3] == [0.5, -2.0, 0.0]
    assert pm.mh_accept(cur, prop, u).tolist() == [True, True, True, True]
    assert not pm.mh_accept(np.array([-1.0]), np.array([-3.0]), np.array([math.exp(-2.0) * 1.001]))[0]
    # M = 1 in choose_next is the same decision
    assert pm.choose_next(cur, prop[:, None], u).tolist() == [1, 1, 1, 1]


def test_categorical_inverse_cdf_matches_softmax_on_a_uniform_grid():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=5) * 2
    logits[2] = -np.inf
    K = 200_000
    u = (np.arange(K) + 0.5) / K  # a fine grid = the exact integral over u up to 1/K
    k = pm.categorical(np.tile(logits, (K, 1)), u)
    freq = np.bincount(k, minlength=5) / K
    want = np.exp(logits - brute_lse(list(logits)))
    np.testing.assert_allclose(freq, want, atol=5 / K)
    assert freq[2] == 0.0


def test_choose_next_isir_frequencies():
    cur = np.array([-2.0])
    prop = np.array([[-1.0, -3.0, -0.5]])
    K = 100_000
    u = (np.arange(K) + 0.5) / K
    c = pm.choose_next(np.repeat(cur, K), np.repeat(prop, K, 0), u)
    freq = np.bincount(c, minlength=4) / K
    v = [-2.0, -1.0, -3.0, -0.5]
    want = [math.exp(x - brute_lse(v)) for x in v]
    np.testing.assert_allclose(freq, want, atol=5 / K)


@pytest.mark.parametrize("M", [1, 2, 3])
def test_mh_and_isir_kernels_leave_target_invariant(M):
    """Brute force: on a 4-state space with target π and independent proposal q, the kernel
    'draw M from q, choose by choose_next with sums log π − log q' satisfies πK = π exactly
    (integrating u over a fine grid and enumerating all proposal tuples)."""
    rng = np.random.default_rng(3 + M)
    S = 4
    pi = rng.dirichlet(np.ones(S))
    q = rng.dirichlet(np.ones(S))
    lw = np.log(pi) - np.log(q)  # the "suffix sum" of a state
    G = 4000
    u = (np.arange(G) + 0.5) / G
    K = np.zeros((S, S))
    for x in range(S):
        for ys in itertools.product(range(S), repeat=M):
            pq = np.prod([q[y] for y in ys])
            c = pm.choose_next(np.full(G, lw[x]), np.tile(lw[list(ys)], (G, 1)), u)
            cand = [x, *ys]
            for ci, cnt in zip(*np.unique(c, return_counts=True), strict=True):
                K[x, cand[ci]] += pq * cnt / G
    np.testing.assert_allclose(K.sum(1), 1.0, atol=1e-12)
    np.testing.assert_allclose(pi @ K, pi, atol=2e-3)  # grid error ~1/G per jump
    assert np.diag(K).max() < 0.99  # and it does move (not the trivial identity kernel)


def test_weights_and_ess_brute_force():
    lw = np.array([[0.0, math.log(2), -np.inf, math.log(1)], [-np.inf] * 4, [5.0] * 4])
    w = pm.normalized_weights(lw)
    np.testing.assert_allclose(w[0], [0.25, 0.5, 0.0, 0.25])
    np.testing.assert_allclose(w[1], [0.25] * 4)  # no information: uniform
    e = pm.ess(lw)
    assert e[0] == pytest.approx(1 / (0.25**2 + 0.5**2 + 0.25**2))
    assert e[2] == pytest.approx(4.0)
    assert pm.ess(np.array([0.0, -np.inf, -np.inf]))[()] == pytest.approx(1.0)


def test_systematic_resampling_counts_are_floor_or_ceil_and_unbiased():
    rng = np.random.default_rng(4)
    N = 7
    w = rng.dirichlet(np.ones(N) * 0.7)
    G = 20_000
    u = (np.arange(G) + 0.5) / G
    anc = pm.systematic_resample(np.tile(w, (G, 1)), u)  # [G, N]
    counts = np.stack([np.bincount(a, minlength=N) for a in anc])
    assert (counts >= np.floor(N * w) - 1e-9).all() and (counts <= np.ceil(N * w) + 1e-9).all()
    np.testing.assert_allclose(counts.mean(0), N * w, atol=N / G * 2)
    assert (np.diff(anc, axis=1) >= 0).all()  # ancestors come out sorted
    # a one-hot weight copies that particle everywhere
    assert pm.systematic_resample(np.array([[0.0, 1.0, 0.0]]), np.array([0.99])).tolist() == [[1, 1, 1]]


def test_ramp_staircase_reweighting_targets_p_alpha():
    """Whatever the exponent staircase of the proposal, Σ (α_i·logp − logq) over tokens plus
    the ramp re-weighting at each change plus the final step to α equals α·log p(x) − log q(x):
    the importance weight of p^α against the proposal that was actually used."""
    rng = np.random.default_rng(5)
    alpha, T, R = 4.0, 40, 25
    logits = rng.normal(size=(T, 6)) * 2
    logp_all = logits - np.array([brute_lse(list(r)) for r in logits])[:, None]
    toks = rng.integers(0, 6, size=T)
    ends = [5, 10, 13, 20, 25, 30, 40]
    W = cum = 0.0
    log_q_total = 0.0
    a_prev, pos = None, 0
    for end in ends:
        a = pm.ramp_alpha(end, alpha, R)
        if a_prev is not None and a != a_prev:
            W += float(pm.ramp_reweight(np.array(cum), a_prev, a))
        a_prev = a
        for t in range(pos, end):
            lp = logp_all[t, toks[t]]
            lq = a * lp - brute_lse(list(a * logp_all[t]))
            W += a * lp - lq  # the engine's log_w at exponent a
            cum += lp
            log_q_total += lq
        pos = end
    W += float(pm.ramp_reweight(np.array(cum), a_prev, alpha))  # no-op here: the ramp ended
    assert W == pytest.approx(alpha * cum - log_q_total, rel=1e-12, abs=1e-9)
    assert pm.ramp_alpha(0, alpha, R) == 1.0 and pm.ramp_alpha(R, alpha, R) == alpha
    assert pm.ramp_alpha(10, alpha, 0) == alpha


def test_reference_acceptance_truncates_the_current_suffix():
    cur = np.array([-0.1, -0.2, -0.3, -0.4])
    same_len = np.array([-0.5, -0.1, -0.1, -0.1])
    assert pm.reference_log_accept(cur, same_len) == pytest.approx(
        float(pm.mh_log_accept(cur.sum(), same_len.sum()))
    )
    short = np.array([-0.05])  # proposal hit EOS after one token
    exact = float(pm.mh_log_accept(cur.sum(), short.sum()))  # padding counts 0
    ref = pm.reference_log_accept(cur, short)
    assert ref == pytest.approx(-0.05 + 0.1)
    assert ref < exact  # it under-accepts EOS-shortened proposals (§3.6)


def test_token_count_matches_schedule_enumeration_and_research_table():
    L, B, N, M = 679, 192, 10, 1
    brute = L
    for t in pm.block_lengths(L, B):
        brute += N * M * sum(t - i for i in range(t)) / t  # uniform cut i, resample t − i tokens
    assert pm.mh_token_count(L, B, N, M) == pytest.approx(brute)
    assert pm.mh_token_count(L, B, N) / L == pytest.approx(14.5, abs=0.05)  # research §4 table
    assert pm.mh_token_count(3072, 192, 10) / 3072 == pytest.approx(43.5, abs=0.05)
    assert pm.block_lengths(5, 2) == [2, 4, 5]


# ------------------------------------------------------------------- kernels' twins vs power_math


def test_mh_accept_twin_matches_power_math():
    from temper.triton_kernels.mh_accept import mh_accept_torch

    rng = np.random.default_rng(6)
    for M in (1, 4):
        B, T = 64, 12
        cur = rng.normal(size=(B, T)).astype(np.float32) - 1
        cur_len = rng.integers(1, T + 1, size=B)
        cut = rng.integers(0, T, size=B)
        prop = rng.normal(size=(B, M, T)).astype(np.float32) - 1
        prop_len = np.minimum(cut[:, None] + rng.integers(1, T, size=(B, M)), T)
        u = rng.random(B).astype(np.float32) * 0.999 + 0.0005
        res = mh_accept_torch(*(torch.from_numpy(a) for a in (cur, cur_len, cut, prop, prop_len, u)))
        cs = pm.suffix_sums(cur, cur_len, cut)
        ps = pm.suffix_sums(prop, prop_len, cut[:, None])
        np.testing.assert_allclose(res.cur_sum.numpy(), cs, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(res.prop_sum.numpy(), ps, rtol=1e-5, atol=1e-5)
        assert (res.choice.numpy() == pm.choose_next(cs, ps, u.astype(np.float64))).all()


def test_smc_resample_twin_matches_power_math():
    from temper.triton_kernels.smc_resample import smc_resample_torch

    rng = np.random.default_rng(7)
    lw = (rng.normal(size=(16, 32)) * 3).astype(np.float32)
    lw[0, 5:] = -np.inf
    u = rng.random(16).astype(np.float32)
    res = smc_resample_torch(torch.from_numpy(lw), torch.from_numpy(u))
    w = pm.normalized_weights(lw)
    np.testing.assert_allclose(res.weights.numpy(), w, atol=1e-6)
    np.testing.assert_allclose(res.ess.numpy(), pm.ess(lw), rtol=1e-5)
    assert (res.ancestors.numpy() == pm.systematic_resample(w, u.astype(np.float64))).all()
