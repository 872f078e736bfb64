"""tempered_logits: the twin against brute force and against `tempered_sample` (same q, same
log_w), the Triton kernel against the twin (CPU, TRITON_INTERPRET=1, set by conftest without
CUDA), an sm_90 compile check, and a CUDA run (gpu)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from kernel_helpers import interpreted, needs_triton, on_cuda, run_without_interpreter

from temper.triton_kernels import rng
from temper.triton_kernels._triton import use_triton
from temper.triton_kernels.tempered_logits import (
    tempered_logits,
    tempered_logits_torch,
    tempered_logits_triton,
)
from temper.triton_kernels.tempered_sample import tempered_sample_torch


def make_case(B: int, V: int, seed: int = 0):
    """Logits with -inf entries and ties; a mix of α, greedy and top-k rows."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, V, generator=g) * 3
    if V > 8:
        logits[0, 3:7] = -torch.inf
        logits[-1, 1::2] = logits[-1, 0::2][: V // 2]
    alpha = torch.tensor([1.0, 4.0, math.inf, 0.5, 2.0, 1.0, 3.0])[torch.arange(B) % 7]
    top_k = torch.tensor([0, 5, 3, 1, 0, V + 3, 2])[torch.arange(B) % 7]
    return logits, alpha, top_k


def test_twin_matches_brute_force():
    logits, alpha, top_k = make_case(7, 40, seed=1)
    for exclude in (None, 11):
        out = tempered_logits_torch(logits, alpha, top_k, exclude=exclude)
        ell = logits.double().numpy()
        for b in range(7):
            a = float(alpha[b])
            if math.isinf(a):
                assert torch.equal(out.logits[b], logits[b]) and float(out.log_z[b]) == 0.0
                continue
            s = a * (ell[b] - np.logaddexp.reduce(ell[b]))
            if exclude is not None:
                s[exclude] = -np.inf
            k = int(top_k[b])
            if k > 0:
                s = np.where(s >= np.sort(s)[::-1][min(k, 40) - 1], s, -np.inf)
            np.testing.assert_allclose(out.logits[b].numpy(), s, atol=1e-5)
            assert float(out.log_z[b]) == pytest.approx(np.logaddexp.reduce(s), abs=1e-5)


def test_twin_agrees_with_tempered_sample():
    """Drawing from softmax(out) with tempered_sample's own noise gives its token, and log_z is its
    log_w (= α·logp − logq), top-k and top-p included."""
    B, V = 64, 50
    logits, alpha, top_k = make_case(B, V, seed=2)
    alpha = torch.where(torch.isinf(alpha), torch.full_like(alpha, 2.0), alpha)
    top_p = torch.tensor([1.0, 0.9, 0.5, 1.0])[torch.arange(B) % 4]
    seeds, offsets = torch.arange(B) * 7919, torch.arange(B) * 13
    ref = tempered_sample_torch(logits, alpha, seeds, offsets, top_k, top_p)
    out = tempered_logits_torch(logits, alpha, top_k, top_p)
    token = (out.logits + rng.gumbel(seeds, offsets, V)).argmax(-1)
    assert (token == ref.token).float().mean() > 0.95  # ties from rounding may flip a rare draw
    same = token == ref.token
    logq = out.logits.gather(1, token[:, None])[:, 0] - out.log_z
    torch.testing.assert_close(out.log_z, ref.log_w, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logq[same], ref.logq[same], atol=1e-5, rtol=1e-5)


def test_excluded_column_is_never_kept_but_counts_in_log_p():
    logits = torch.tensor([[0.0, 1.0, 5.0, 2.0]])
    out = tempered_logits_torch(logits, torch.tensor([2.0]), exclude=2)
    assert out.logits[0, 2] == -torch.inf
    lse = torch.logsumexp(logits[0], 0)
    torch.testing.assert_close(out.logits[0, 1], 2.0 * (1.0 - lse))  # log p over the full row


@interpreted
@pytest.mark.parametrize("exclude", [None, 7])
def test_kernel_matches_twin(exclude):
    logits, alpha, top_k = make_case(9, 300, seed=3)
    for k in (None, top_k):
        ref = tempered_logits_torch(logits, alpha, k, exclude=exclude)
        got = tempered_logits_triton(logits, alpha, k, exclude=exclude, block=64)  # several blocks
        torch.testing.assert_close(got.log_z, ref.log_z, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got.logits, ref.logits, atol=1e-5, rtol=1e-5)


@interpreted
def test_kernel_rejects_top_p():
    logits, alpha, _ = make_case(2, 16)
    with pytest.raises(ValueError):
        tempered_logits_triton(logits, alpha, top_p=torch.tensor([0.9, 1.0]))


def test_dispatcher_uses_twin_on_cpu():
    logits, alpha, top_k = make_case(5, 30)
    assert not use_triton(logits)
    out = tempered_logits(logits, alpha, top_k, torch.full((5,), 0.8), exclude=3)
    ref = tempered_logits_torch(logits, alpha, top_k, torch.full((5,), 0.8), exclude=3)
    assert torch.equal(out.logits, ref.logits) and torch.equal(out.log_z, ref.log_z)


def compile_sm90(dtype: str) -> None:
    """Compile (no launch) for Hopper; run by the test below without the interpreter."""
    from kernel_helpers import compile_for

    from temper.triton_kernels.tempered_logits import _tl_kernel

    for has_kth in (True, False):
        for has_ex in (True, False):
            compile_for(
                _tl_kernel,
                dict(logits_ptr=dtype, stride_in="i64", out_ptr="*fp32", stride_out="i64", alpha_ptr="*fp32",
                     kth_ptr="*fp32", logz_ptr="*fp32", V="i32", EXCLUDE="i32"),
                dict(HAS_KTH=has_kth, HAS_EXCLUDE=has_ex, BLOCK=4096), num_warps=8)


@pytest.mark.slow
@needs_triton
@pytest.mark.parametrize("dtype", ["*fp32", "*bf16"])
def test_kernel_compiles_for_sm90(dtype):
    pytest.importorskip("triton.backends.nvidia")
    run_without_interpreter(compile_sm90, dtype)


@pytest.mark.gpu
@needs_triton
@on_cuda
def test_kernel_on_cuda_matches_twin():
    for B, V in ((1, 32_768), (33, 151_936)):
        logits, alpha, top_k = (t.cuda() for t in make_case(B, V, seed=B))
        assert use_triton(logits)
        for k in (None, top_k):
            got = tempered_logits(logits, alpha, k, exclude=V - 1)
            ref = tempered_logits_torch(logits, alpha, k, exclude=V - 1)
            torch.testing.assert_close(got.log_z, ref.log_z, atol=1e-4, rtol=1e-5)
            torch.testing.assert_close(got.logits, ref.logits, atol=1e-4, rtol=1e-5)
