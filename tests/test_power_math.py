"""power_math against brute force: segment and suffix sums, MH / i-SIR decisions (and their
invariance of π by exact enumeration), weights / ESS, systematic resampling, ramp re-weighting,
the reference's truncated acceptance, the analytic token count. The kernels' torch twins are
checked against these functions in tests/test_kernels_*.py."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from bench.reference import mh_token_count, reference_log_accept
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


def test_segment_sums_are_per_array_totals():
    rng = np.random.default_rng(8)
    parts = [rng.normal(size=k).astype(np.float32) for k in (3, 0, 1, 7)]
    got = pm.segment_sums(parts)
    assert got.dtype == np.float64 and got.shape == (4,)
    np.testing.assert_allclose(got, [float(np.sum(x, dtype=np.float64)) for x in parts], rtol=1e-12)
    assert pm.segment_sums([np.zeros(0)] * 2).tolist() == [0.0, 0.0] and pm.segment_sums([]).shape == (0,)


def test_choose_next_with_one_proposal_is_the_metropolis_rule():
    cur = np.array([-1.0, -1.0, -5.0, -np.inf])
    prop = np.array([-0.5, -3.0, -5.0, -1.0])
    # log r = prop − cur = [0.5, -2, 0, inf]; accept iff log u < log r
    u = np.array([0.9, math.exp(-2.0) * 0.999, 0.5, 0.3])
    assert pm.choose_next(cur, prop[:, None], u).tolist() == [1, 1, 1, 1]
    assert pm.choose_next(np.array([-1.0]), np.array([[-3.0]]), np.array([math.exp(-2.0) * 1.001])).tolist() == [0]
    # both -inf: log r is NaN, and the chain keeps its state
    assert pm.choose_next(np.array([-np.inf]), np.array([[-np.inf]]), np.array([0.5])).tolist() == [0]


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
    assert reference_log_accept(cur, same_len) == pytest.approx(same_len.sum() - cur.sum())
    short = np.array([-0.05])  # proposal hit EOS after one token
    exact = short.sum() - cur.sum()  # the exact log r: padding counts 0
    ref = reference_log_accept(cur, short)
    assert ref == pytest.approx(-0.05 + 0.1)
    assert ref < exact  # it under-accepts EOS-shortened proposals (§3.6)


def test_token_count_matches_schedule_enumeration_and_research_table():
    L, B, N, M = 679, 192, 10, 1
    brute = L
    for t in pm.block_lengths(L, B):
        brute += N * M * sum(t - i for i in range(t)) / t  # uniform cut i, resample t − i tokens
    assert mh_token_count(L, B, N, M) == pytest.approx(brute)
    assert mh_token_count(L, B, N) / L == pytest.approx(14.5, abs=0.05)  # research §4 table
    assert mh_token_count(3072, 192, 10) / 3072 == pytest.approx(43.5, abs=0.05)
    assert pm.block_lengths(5, 2) == [2, 4, 5]


def test_mh_log_accept_is_the_ratio_with_the_hastings_factor():
    """π(y)ρ(y)Q(x_i:) / (π(x)ρ(x)Q(y_i:)) with ρ = 1/ℓ, against the formula's parts."""
    rng = np.random.default_rng(11)
    for _ in range(20):
        cur, prop = rng.normal(size=2) * 3
        lx, ly = rng.integers(1, 50, size=2)
        want = math.log(math.exp(prop) * (1 / ly) / (math.exp(cur) * (1 / lx)))
        assert pm.mh_log_accept(cur, lx, prop, ly) == pytest.approx(want, rel=1e-12, abs=1e-12)
    got = pm.mh_log_accept(np.array([-1.0, -2.0]), np.array([3, 4]), np.array([-0.5, -1.0]), np.array([2, 8]))
    np.testing.assert_allclose(got, [0.5 + math.log(3 / 2), 1.0 + math.log(4 / 8)])


def test_reject_bound_is_never_below_the_final_log_accept():
    """Early rejection is exact iff the bound after m tokens is ≥ log A of every completion.
    Enumerate every continuation (log_w ≤ 0 per token, lengths up to t) of every partial sum."""
    rng = np.random.default_rng(12)
    for _ in range(200):
        t, i = int(rng.integers(3, 9)), 0
        i = int(rng.integers(0, t - 1))
        L, cur = int(rng.integers(i + 1, t + 1)), -float(rng.exponential(2.0))
        prefix = -rng.exponential(0.5, size=t - i)  # the proposal's log_w, one per token
        for m in range(1, t - i):  # unfinished after m tokens
            bound = pm.mh_reject_bound(prefix[:m].sum(), cur, L, i, m)
            for end in range(m + 1, t - i + 1):  # it may end at any later length
                final = pm.mh_log_accept(cur, L, prefix[:end].sum(), i + end)
                assert final <= bound + 1e-12


def test_isir_gumbel_choice_draws_proportionally_to_exp_scores():
    """argmax(score + Gumbel) picks j with probability softmax(score)_j (Gumbel-max), the rule
    i-SIR uses once its noise is fixed up front."""
    rng = np.random.default_rng(13)
    sums, lens = np.array([-2.0, -1.0, -3.5]), np.array([4, 2, 7])
    scores = pm.isir_scores(sums, lens)
    np.testing.assert_allclose(scores, sums - np.log(lens))
    n = 200_000
    g = pm.gumbel(1.0 - rng.random((n, 3)))
    freq = np.bincount(np.argmax(scores + g, axis=1), minlength=3) / n
    want = np.exp(scores - brute_lse(list(scores)))
    np.testing.assert_allclose(freq, want, atol=4 * np.sqrt(want * (1 - want) / n).max())
