"""The arithmetic of look-ahead power sampling (Ji et al., "Scalable Power Sampling",
arXiv 2601.21590; /work/notes/lookahead.md), as small pure numpy functions.

The exact next-token conditional of π ∝ p^α is π(v | c) ∝ p(v|c)^α · ζ(c, v), where the future
factor ζ(c, v) = Σ_f p(f | c, v)^α sums over the completions f of (c, v). A tempered proposal
q ∝ p^α drops ζ; these functions estimate it from rollouts and use the estimate two ways:
  * the paper's sampler: draw from p̂ ∝ p^α·ζ̂ over the top-K candidates, optionally with the
    jackknife correction (Eq. 4–6). Biased (O(1/M), O(1/M²) with the jackknife, plus the
    top-K and horizon truncations, which do not vanish with M);
  * a proposal r = (1−ε)·t + ε·q with the tilt t ∝ q·ζ̂ on the candidates, whose actual
    probability enters MH ratios and SMC weights, so the target stays exactly p^α.

Rollout weights: a rollout f drawn from q contributes λ = Σ log_w(f) = log p^α(f)/q(f); one drawn
from p contributes λ = (α−1)·Σ log p(f). Either way ζ̂ = mean exp(λ) is unbiased for ζ.

Shapes: K candidates, M rollouts per candidate. Everything in float64, log space.
What this is not: any engine call or per-request state (power_lookahead.py draws the rollouts).
"""

from __future__ import annotations

import math

import numpy as np

from temper.decoding.power_math import logmeanexp, logsumexp


def rollout_log_weight(mode: str, alpha: float, sum_logp: np.ndarray, sum_log_w: np.ndarray) -> np.ndarray:
    """λ of each rollout: Σ log_w for rollouts from q ("q"), (α−1)·Σ log p for rollouts from p ("p")."""
    if mode == "q":
        return np.asarray(sum_log_w, dtype=np.float64)
    return (float(alpha) - 1.0) * np.asarray(sum_logp, dtype=np.float64)


def log_zeta_hat(lam: np.ndarray) -> np.ndarray:
    """log ζ̂ = log mean_m exp(λ_m) over the last axis: lam [..., M] → [...]."""
    return logmeanexp(lam, axis=-1)


def normalize_log(x: np.ndarray) -> np.ndarray:
    """log softmax over the last axis (a row of all -inf stays -inf)."""
    x = np.asarray(x, dtype=np.float64)
    return x - logsumexp(x, axis=-1)[..., None]


def power_conditional(log_base: np.ndarray, lam: np.ndarray, jackknife: bool) -> np.ndarray:
    """The paper's estimate of π(· | c) over K candidates (Eq. 4; Eq. 5–6 with the jackknife).

    log_base [K]: α·log p of each candidate (token or block); lam [K, M]: rollout weights, the
    s-th rollout of every candidate paired by index s (a terminal candidate has λ = 0 in every
    column). p̂ ∝ exp(log_base)·ζ̂. Jackknife (M ≥ 2): p̂_JK = M·p̂ − (M−1)·mean_s p̂_{−s}, where
    p̂_{−s} leaves column s out of every ζ̂; entries can be negative: clipped at 0 and
    renormalised, and if nothing stays positive, p̂ itself (the paper is silent; all three
    public ports clip). Returns probabilities [K] summing to 1."""
    log_base = np.asarray(log_base, dtype=np.float64)
    lam = np.asarray(lam, dtype=np.float64)
    p_full = np.exp(normalize_log(log_base + log_zeta_hat(lam)))
    M = lam.shape[1]
    if not jackknife or M < 2:
        return p_full
    loo = np.stack([log_zeta_hat(np.delete(lam, s, axis=1)) for s in range(M)], axis=1)  # [K, M]
    p_loo = np.exp(normalize_log((log_base[:, None] + loo).T))  # [M, K]
    pj = np.clip(M * p_full - (M - 1) * p_loo.mean(axis=0), 0.0, None)
    total = pj.sum()
    return pj / total if total > 0 else p_full


def tilt_log_probs(log_q: np.ndarray, log_zeta: np.ndarray) -> np.ndarray:
    """log t over the candidates: t(v) = q(v)·ζ̂(v) / Σ_u q(u)·ζ̂(u). log_q, log_zeta [K]."""
    return normalize_log(np.asarray(log_q, dtype=np.float64) + np.asarray(log_zeta, dtype=np.float64))


def mixture_log_prob(log_t: float, log_q: float, eps: float) -> float:
    """log r(v) = log((1−ε)·t(v) + ε·q(v)); log_t = -inf for a token outside the candidates."""
    if eps >= 1.0:
        return float(log_q)
    return float(np.logaddexp(math.log1p(-eps) + log_t, math.log(eps) + log_q))


def kept_count(top_logps: np.ndarray, log_z: float, alpha: float, rel_tol: float = 1e-4) -> int:
    """How many of the listed most likely tokens (raw log-probs top_logps [K], descending) lie
    in the kept set S(c) of a truncated tempered proposal, given log_z = log Σ_{u∈S} p(u)^α (the
    engine's log_w at c). Top-k and top-p both keep a prefix of the tokens sorted by p (q ∝ p^α
    sorts the same way), so token i is kept iff the p^α mass of the tokens before it is still
    short of Z_S. The tolerance errs towards leaving a token out: a candidate set must lie
    inside S (a token outside it has no target mass), while a missed tiny candidate only loses
    its tilt. At least one token is always kept."""
    lp = np.asarray(top_logps, dtype=np.float64)
    mass = np.exp(alpha * lp - float(log_z))  # p^α / Z_S of each listed token
    before = np.cumsum(mass) - mass
    return max(1, int(np.sum(before < 1.0 - rel_tol)))
