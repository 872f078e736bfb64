"""The arithmetic of power sampling (target π ∝ p^α), as small pure numpy functions.

What this is: the decisions the MH and SMC strategies make from per-token log-weights
log_w_t = α·log p_t − log q_t (for a tempered proposal this is log Z_t, research/power_sampling.md
§2.3), all in float64 on host arrays (power_mh / power_smc call these directly):
  * MH / i-SIR:  per-sample and suffix sums of log_w, the accept / choose decision, the
                 Hastings factor of cuts drawn over a state's real length, and the bounds that
                 let a proposal be abandoned early without changing any decision;
  * SMC:         normalised weights, effective sample size, systematic resampling, and the
                 re-weighting that keeps the target p^α while the proposal exponent ramps up;
  * schedule:    the fixed logical block lengths of blockwise MH.
(The Karan & Du reference algorithm's acceptance and cost model, the baseline of the tests and
benchmarks, live in bench/reference.py, not here: they are not temper's.)
Each function is unit-tested against brute force (tests/test_power_math.py). The Triton kernels
`triton_kernels.mh_accept` / `smc_resample` are the same decisions on device tensors; their torch
twins are cross-checked against these functions (tests/test_kernels_*.py).

What this is not: any sampling of tokens, engine call or per-request state. Randomness comes in
as uniforms, so every function is deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def logsumexp(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """log Σ exp(x) along `axis`, in float64; all -inf gives -inf."""
    x = np.asarray(x, dtype=np.float64)
    mx = np.max(x, axis=axis, keepdims=True)
    mx = np.where(np.isfinite(mx), mx, 0.0)
    with np.errstate(divide="ignore"):
        return np.log(np.sum(np.exp(x - mx), axis=axis)) + np.squeeze(mx, axis=axis)


def logmeanexp(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """log of the mean of exp(x) along `axis`."""
    x = np.asarray(x, dtype=np.float64)
    return logsumexp(x, axis) - math.log(x.shape[axis])


# ------------------------------------------------------------------------------------------ MH


def segment_sums(parts: Sequence[np.ndarray]) -> np.ndarray:
    """Σ of each array in `parts`, in float64, in one vectorised pass (an empty array sums to 0):
    the per-sample totals of log_w or log p over one engine call's samples."""
    lens = np.fromiter((len(x) for x in parts), dtype=np.int64, count=len(parts))
    if not lens.sum():
        return np.zeros(len(parts))
    flat = np.concatenate([np.asarray(x, dtype=np.float64) for x in parts])
    return np.bincount(np.repeat(np.arange(len(parts)), lens), weights=flat, minlength=len(parts))


def suffix_sums(log_w: np.ndarray, length: np.ndarray, cut: np.ndarray) -> np.ndarray:
    """Σ_{cut ≤ j < length} log_w[..., j] in float64.

    log_w [..., T] is indexed by absolute response position; positions at or past `length` are
    absorbing EOS padding (p = q = 1 there, so they add 0 whatever the array holds). `length`
    and `cut` broadcast against log_w's leading dims.
    """
    log_w = np.asarray(log_w, dtype=np.float64)
    pos = np.arange(log_w.shape[-1])
    keep = (pos >= np.asarray(cut)[..., None]) & (pos < np.asarray(length)[..., None])
    return np.where(keep, log_w, 0.0).sum(-1)


def categorical(logits: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF draw from softmax(logits [B, K]) with one uniform u [B] in [0, 1) per row:
    the first k whose cumulative weight exceeds u·total. A row with no finite logit gives 0."""
    logits = np.asarray(logits, dtype=np.float64)
    mx = logits.max(axis=1, keepdims=True)
    dead = ~np.isfinite(mx[:, 0])
    w = np.exp(logits - np.where(np.isfinite(mx), mx, 0.0))
    cdf = np.cumsum(w, axis=1)
    target = np.asarray(u, dtype=np.float64) * cdf[:, -1]
    k = (cdf <= target[:, None]).sum(axis=1)
    return np.where(dead, 0, np.minimum(k, logits.shape[1] - 1))


def choose_next(cur_sum: np.ndarray, prop_sum: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Next state among [current, proposal 1..M] → index in 0..M (0 = keep current).

    cur_sum [B], prop_sum [B, M]: suffix sums of log_w from a shared cut; u [B] in (0, 1).
    M = 1 is Metropolis-Hastings: accept iff log u < log r = prop_sum − cur_sum (NaN, both -inf,
    rejects). That difference is the whole MH ratio: π(y)q(x_suffix)/(π(x)q(y_suffix)) with
    π ∝ p^α telescopes per token into exp(α·log p − log q) = Z_t; the shared prefix cancels, and
    the cut-choice probabilities cancel because both states have the same fixed logical length
    (§3.6, §9). M > 1 is iterated SIR: pick ∝ exp(suffix sum) over current + proposals, which
    leaves π invariant because all M + 1 candidates are exchangeable draws conditioned on the
    cut prefix. Same contract as triton_kernels.mh_accept's choice.
    """
    prop_sum = np.asarray(prop_sum, dtype=np.float64)
    cur_sum = np.asarray(cur_sum, dtype=np.float64)
    if prop_sum.shape[1] == 1:
        with np.errstate(divide="ignore", invalid="ignore"):
            return (np.log(np.asarray(u, dtype=np.float64)) < prop_sum[:, 0] - cur_sum).astype(np.int64)
    return categorical(np.concatenate([cur_sum[:, None], prop_sum], axis=1), u).astype(np.int64)


def _arr(x):
    """Python / numpy scalars pass through (the per-chain decisions are scalar and run once per
    token in the hot loop), anything else becomes a float64 array."""
    return x if isinstance(x, (int, float, np.integer, np.floating)) else np.asarray(x, dtype=np.float64)


def _log(x):
    x = _arr(x)
    return math.log(x) if isinstance(x, (int, float, np.integer, np.floating)) else np.log(x)


def mh_log_accept(cur_sum, cur_len, prop_sum, prop_len):
    """log A of an MH move at a cut drawn uniformly over the current state's REAL length.

    cur_sum / prop_sum: Σ log_w of the current / proposed suffix from the cut (log_w =
    α·log p − log r of each token under the proposal r that drew it; log Z_t for a tempered
    one); cur_len / prop_len: ℓ(x), ℓ(y), the states' lengths including their stop token.
    The move "cut at i" is picked with probability ρ_i(x) = 1/ℓ(x) and its reverse with
    1/ℓ(y), so A = π(y)ρ_i(y)Q(x_i:)/(π(x)ρ_i(x)Q(y_i:)) gains log ℓ(x) − log ℓ(y) (Green's
    state-dependent move mixture: each move type is reversible on its own). Without that
    factor the chain is biased (a small per-step defect, a large stationary one).
    Scalars in, a float out; arrays broadcast."""
    return _arr(prop_sum) - _arr(cur_sum) + _log(cur_len) - _log(prop_len)


def mh_reject_bound(partial_sum, cur_sum, cur_len, cut, decoded, slack: float = 0.0):
    """Upper bound on log A for an UNFINISHED tempered proposal after `decoded` tokens from `cut`.

    Valid when every future log_w ≤ 0 (α ≥ 1 and a tempered, possibly truncated proposal:
    log Σ_{u∈S} p(u)^α ≤ 0): the proposal's sum can only fall, and its length is at least
    cut + decoded + 1. So once the bound is ≤ log u the move is rejected whatever comes next:
    stopping it there makes the same decision with fewer tokens (early rejection). `slack`
    covers float error in the engine's log_w (fp32 values can come out a hair above 0)."""
    return mh_log_accept(cur_sum, cur_len, partial_sum, _arr(cut) + _arr(decoded) + 1) + slack


def isir_scores(suffix_sum, length):
    """i-SIR log weights with real-length cuts: Σ log_w(suffix) − log ℓ(state), one per candidate
    (current state and proposals, sharing the cut). The candidate chosen ∝ exp(score) leaves π
    invariant: the weight of z is π(z)ρ_i(z)/Q(z_i:) up to a factor shared by all candidates."""
    return _arr(suffix_sum) - _log(length)


def gumbel(u):
    """Gumbel(0, 1) noise from uniforms u in (0, 1): argmax(score + gumbel) is a draw ∝ exp(score),
    and the noise is fixed before any score is known, so a candidate whose best possible score
    plus its noise is already below another's known total can be dropped without changing the
    draw (early rejection for i-SIR)."""
    return -_log(-_log(u))


# ----------------------------------------------------------------------------------------- SMC


def normalized_weights(log_w: np.ndarray) -> np.ndarray:
    """softmax over the last axis (particles); a row with no finite weight becomes uniform."""
    log_w = np.asarray(log_w, dtype=np.float64)
    mx = log_w.max(axis=-1, keepdims=True)
    dead = ~np.isfinite(mx)
    e = np.where(dead, 1.0, np.exp(log_w - np.where(dead, 0.0, mx)))
    return e / e.sum(axis=-1, keepdims=True)


def ess(log_w: np.ndarray) -> np.ndarray:
    """Effective sample size 1 / Σ w² of the normalised weights (N when equal, 1 when one)."""
    w = normalized_weights(log_w)
    return 1.0 / (w * w).sum(axis=-1)


def systematic_resample(weights: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Ancestors [R, N] for normalised weights [R, N] and one uniform u [R] in [0, 1) per row:
    a_i = first j with cdf_j > (u + i) / N. Each particle j is copied ⌊N·w_j⌋ or ⌈N·w_j⌉ times
    and E[copies] = N·w_j, with less variance than multinomial resampling."""
    weights = np.asarray(weights, dtype=np.float64)
    R, N = weights.shape
    cdf = np.cumsum(weights, axis=1)
    pos = (np.asarray(u, dtype=np.float64)[:, None] + np.arange(N)[None, :]) / N
    anc = np.array([np.searchsorted(c, p, side="right") for c, p in zip(cdf, pos, strict=True)], dtype=np.int64)
    return np.minimum(anc.reshape(R, N), N - 1)


def ramp_alpha(end: int, alpha: float, ramp_tokens: int) -> float:
    """Proposal/target exponent for tokens up to position `end` (exclusive) under a linear ramp
    1 → α over the first `ramp_tokens` tokens (0 = no ramp: α throughout)."""
    if ramp_tokens <= 0 or end >= ramp_tokens:
        return float(alpha)
    return 1.0 + (float(alpha) - 1.0) * max(end, 0) / ramp_tokens


def ramp_reweight(cum_logp: np.ndarray, alpha_old: float, alpha_new: float) -> np.ndarray:
    """Log-weight increment when the intermediate target moves from p^α_old to p^α_new over the
    tokens already drawn: (α_new − α_old)·log p(history). Applied to every particle, finished
    ones included, so the final target is p^α whatever schedule the proposal followed."""
    return (float(alpha_new) - float(alpha_old)) * np.asarray(cum_logp, dtype=np.float64)


# ------------------------------------------------------------------------------------ schedule


def block_lengths(max_tokens: int, block_size: int) -> list[int]:
    """Fixed logical lengths t_k of the blockwise schedule: B, 2B, ..., capped by max_tokens."""
    n_blocks = -(-max_tokens // block_size)
    return [min((k + 1) * block_size, max_tokens) for k in range(n_blocks)]
