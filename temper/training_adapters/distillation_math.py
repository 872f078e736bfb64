"""On-policy distillation math: Thinking Machines' recipe (tinker-cookbook
`distillation/train_on_policy.py`, research/training_methods.md §3).

The student samples tokens; the teacher scores exactly those tokens. Per token, the
single-sample estimate of the reverse KL(student ‖ teacher) is

    rkl_t = log p_S(x_t | x_<t) − log p_T(x_t | x_<t)

(log p_S is the log-prob under the distribution the token was sampled from), and the advantage
is A_t = −coef · mask_t · rkl_t. With a discount γ > 0 each token is charged the discounted KL of
its future too, A_t = −coef · mask_t · Σ_{k≥t} γ^(k−t) mask_k · rkl_k; γ = 0 (the recipe's
default) charges each token only its own KL. Prompt and padding positions (mask 0) get 0.

Alignment: a causal LM fed tokens[:-1] predicts targets tokens[1:]. For a sequence of P prompt
tokens and C completion tokens (length L = P + C), the per-target arrays have length L − 1 and
completion token j sits at target index P − 1 + j.

Pure numpy over [..., T] arrays; no model, no transport.
"""

from __future__ import annotations

import numpy as np


def _same_shape(**arrays: np.ndarray) -> None:
    shapes = {name: np.shape(a) for name, a in arrays.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError("shapes differ: " + ", ".join(f"{k} {v}" for k, v in shapes.items()))


def reverse_kl(sampled_logprobs: np.ndarray, teacher_logprobs: np.ndarray) -> np.ndarray:
    """[..., T] log p_S − log p_T of each sampled token (float64)."""
    s = np.asarray(sampled_logprobs, dtype=np.float64)
    t = np.asarray(teacher_logprobs, dtype=np.float64)
    _same_shape(sampled_logprobs=s, teacher_logprobs=t)
    return s - t


def discounted_future_sum(x: np.ndarray, discount: float) -> np.ndarray:
    """[..., T] out_t = Σ_{k≥t} discount^(k−t) · x_k along the last axis (discount 0: x itself)."""
    if not 0.0 <= discount <= 1.0:
        raise ValueError(f"discount: must be in [0, 1], got {discount}")
    x = np.asarray(x, dtype=np.float64)
    if discount == 0.0:
        return x.copy()
    out = np.empty_like(x)
    acc = np.zeros(x.shape[:-1])
    for t in range(x.shape[-1] - 1, -1, -1):  # T steps over the whole batch at once
        acc = x[..., t] + discount * acc
        out[..., t] = acc
    return out


def kl_advantages(rkl: np.ndarray, mask: np.ndarray, coef: float = 1.0, discount: float = 0.0) -> np.ndarray:
    """[..., T] A_t = −coef · mask_t · Σ_{k≥t} discount^(k−t) · mask_k · rkl_k (see the module)."""
    if not np.isfinite(coef) or coef < 0:
        raise ValueError(f"coef: must be a finite number >= 0, got {coef}")
    m = np.asarray(mask, dtype=np.float64)
    r = np.asarray(rkl, dtype=np.float64)
    _same_shape(rkl=r, mask=m)
    # where the mask is 0 the KL is not ours to charge: zero it before summing, so that a
    # -inf teacher log-prob on a prompt or padding position cannot leak into the sum
    masked = np.where(m > 0, r, 0.0)
    return -coef * m * discounted_future_sum(masked, discount)


def masked_mean(x: np.ndarray, mask: np.ndarray) -> float:
    """Σ x·mask / Σ mask (the mean per-token value over masked positions); NaN when empty."""
    m = np.asarray(mask, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    _same_shape(x=x, mask=m)
    total = m.sum()
    return float(np.where(m > 0, x, 0.0).sum() / total) if total > 0 else float("nan")


def completion_targets(prompt_len: int, completion_len: int) -> slice:
    """The target indices of a completion's tokens in the [L − 1] per-target arrays."""
    if prompt_len < 1:
        raise ValueError(f"prompt_len: must be >= 1 (the first token is never a target), got {prompt_len}")
    if completion_len < 0:
        raise ValueError(f"completion_len: must be >= 0, got {completion_len}")
    return slice(prompt_len - 1, prompt_len - 1 + completion_len)


def align_to_targets(values: np.ndarray, prompt_len: int, width: int, fill: float = 0.0) -> np.ndarray:
    """[width] per-target array holding a completion's per-token `values` [C] at their target
    indices and `fill` elsewhere (prompt and padding)."""
    values = np.asarray(values)
    where = completion_targets(prompt_len, len(values))
    if where.stop > width:
        raise ValueError(f"width: {width} targets cannot hold {len(values)} tokens after a {prompt_len}-token prompt")
    out = np.full(width, fill, dtype=np.float64)
    out[where] = values
    return out
