"""lookahead_math against brute force: the paper's power-conditional estimate (Eq. 4) and its
jackknife (Eq. 5–6) written out loop by loop, the tilt and mixture of the look-ahead proposal,
rollout weights, and which listed tokens lie in a truncated proposal's kept set (against the
engines' own kept_mask)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from temper.decoding import lookahead_math as lm
from temper.triton_kernels.tempered_sample import kept_mask


def brute_phat(log_base, lam, drop=None):
    K, M = lam.shape
    cols = [s for s in range(M) if s != drop]
    zeta = [sum(math.exp(lam[k, s]) for s in cols) / len(cols) for k in range(K)]
    w = [math.exp(log_base[k]) * zeta[k] for k in range(K)]
    return np.array(w) / sum(w)


@pytest.mark.parametrize("K, M", [(3, 1), (4, 2), (5, 6)])
def test_power_conditional_matches_the_paper_formulas(K, M):
    rng = np.random.default_rng(K * 10 + M)
    for _ in range(10):
        log_base = rng.normal(size=K) * 2
        lam = rng.normal(size=(K, M)) * 2 - 3
        lam[0] = 0.0  # a terminal candidate: ζ = 1
        np.testing.assert_allclose(lm.power_conditional(log_base, lam, jackknife=False), brute_phat(log_base, lam),
                                   rtol=1e-12)
        got = lm.power_conditional(log_base, lam, jackknife=True)
        if M == 1:
            np.testing.assert_allclose(got, brute_phat(log_base, lam), rtol=1e-12)
            continue
        full = brute_phat(log_base, lam)
        jk = M * full - (M - 1) / M * sum(brute_phat(log_base, lam, drop=s) for s in range(M))
        assert jk.sum() == pytest.approx(1.0)
        jk = np.clip(jk, 0, None)
        np.testing.assert_allclose(got, jk / jk.sum(), rtol=1e-9, atol=1e-15)


def test_jackknife_reduces_the_ratio_bias():
    """Over many rollout draws, E[p̂_JK] is closer to the true conditional than E[p̂]."""
    rng = np.random.default_rng(1)
    log_base = np.log([0.6, 0.3, 0.1])
    mu, sd = np.array([-3.0, -1.0, -0.5]), np.array([1.5, 1.0, 0.5])  # λ ~ normal per candidate
    truth = np.exp(log_base + mu + sd**2 / 2)
    truth /= truth.sum()
    M, R = 4, 6000
    plain = np.zeros(3)
    jk = np.zeros(3)
    for _ in range(R):
        lam = mu[:, None] + sd[:, None] * rng.normal(size=(3, M))
        plain += lm.power_conditional(log_base, lam, False) / R
        jk += lm.power_conditional(log_base, lam, True) / R
    assert np.abs(jk - truth).sum() < 0.7 * np.abs(plain - truth).sum()


def test_tilt_and_mixture():
    log_q = np.log([0.7, 0.2, 0.1])
    log_zeta = np.log([0.01, 0.5, 1.0])
    t = np.exp(lm.tilt_log_probs(log_q, log_zeta))
    want = np.array([0.007, 0.1, 0.1])
    np.testing.assert_allclose(t, want / want.sum())
    eps = 0.05
    for v in range(3):
        r = lm.mixture_log_prob(math.log(t[v]), log_q[v], eps)
        assert math.exp(r) == pytest.approx((1 - eps) * t[v] + eps * math.exp(log_q[v]))
    assert math.exp(lm.mixture_log_prob(-math.inf, math.log(0.3), eps)) == pytest.approx(eps * 0.3)
    assert lm.mixture_log_prob(-1.0, -2.0, 1.0) == -2.0


def test_rollout_weights_q_and_p():
    sum_logp, sum_log_w = np.array([-3.0, -1.0]), np.array([-0.5, -0.2])
    np.testing.assert_allclose(lm.rollout_log_weight("q", 4.0, sum_logp, sum_log_w), sum_log_w)
    np.testing.assert_allclose(lm.rollout_log_weight("p", 4.0, sum_logp, sum_log_w), 3.0 * sum_logp)
    np.testing.assert_allclose(lm.log_zeta_hat(np.log([[0.2, 0.4], [1.0, 1.0]])), np.log([0.3, 1.0]))


@pytest.mark.parametrize("top_k, top_p", [(0, 1.0), (2, 1.0), (5, 1.0), (0, 0.6), (0, 0.95), (3, 0.8)])
def test_kept_count_agrees_with_the_engines_kept_mask(top_k, top_p):
    rng = np.random.default_rng(top_k * 7 + int(top_p * 100))
    alpha, K = 2.0, 6
    for _ in range(50):
        logits = rng.normal(size=12) * 1.5
        lp = logits - np.logaddexp.reduce(logits)
        scaled = torch.tensor(alpha * lp)[None]
        mask = kept_mask(scaled, torch.tensor([top_k]), torch.tensor([top_p]))
        keep = np.ones(12, bool) if mask is None else mask[0].numpy()
        log_z = float(np.logaddexp.reduce(alpha * lp[keep]))
        order = np.argsort(-lp, kind="stable")[:K]
        n = lm.kept_count(lp[order], log_z, alpha)
        assert keep[order[:n]].all()  # never a token outside the kept set
        # and every kept listed token with a q-mass above the tolerance is found
        q = np.exp(alpha * lp[order] - log_z)
        missed = [j for j in range(n, K) if keep[order[j]]]
        assert all(q[j] < 1e-3 for j in missed)
