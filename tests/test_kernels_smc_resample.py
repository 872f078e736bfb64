"""smc_resample: the torch twin against a Python loop and the laws of systematic resampling,
the Triton kernel against the twin (CPU, TRITON_INTERPRET=1, set by conftest without CUDA), an
sm_90 compile check (in a subprocess without the interpreter), and a CUDA run (gpu)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from kernel_helpers import interpreted, needs_triton, on_cuda, run_without_interpreter

from temper.decoding import power_math as pm
from temper.triton_kernels._triton import use_triton
from temper.triton_kernels.smc_resample import smc_resample, smc_resample_torch, smc_resample_triton


def make_case(R: int, N: int, seed: int = 0):
    """Spread-out log weights with dead particles and, when R > 2, an all-dead row."""
    g = torch.Generator().manual_seed(seed)
    log_w = torch.randn(R, N, generator=g) * 2 - 30  # far from 0: normalisation must shift
    log_w[0, : N // 2] = -torch.inf
    if R > 2:
        log_w[1] = -torch.inf
    return log_w, torch.rand(R, generator=g)


def loop_reference(log_w: torch.Tensor, u: torch.Tensor):
    R, N = log_w.shape
    weights, ess, anc = np.zeros((R, N)), np.zeros(R), np.zeros((R, N), dtype=np.int64)
    for r in range(R):
        lw = [float(x) for x in log_w[r]]
        mx = max(lw)
        e = [1.0] * N if mx == -math.inf else [math.exp(x - mx) for x in lw]
        w = [x / sum(e) for x in e]
        weights[r], ess[r] = w, 1.0 / sum(x * x for x in w)
        cdf = np.cumsum(w)
        for i in range(N):
            pos = (float(u[r]) + i) / N
            anc[r, i] = min(next((j for j in range(N) if cdf[j] > pos), N - 1), N - 1)
    return weights, ess, anc


def assert_matches(got, ref):
    torch.testing.assert_close(got.weights, ref.weights, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got.ess, ref.ess, atol=1e-5, rtol=1e-5)
    assert torch.equal(got.ancestors, ref.ancestors)


# ------------------------------------------------------------------------------- twin semantics


@pytest.mark.parametrize("N", [1, 2, 7, 64])
def test_twin_matches_python_loop(N):
    log_w, u = make_case(5, N, seed=N)
    out = smc_resample_torch(log_w, u)
    weights, ess, anc = loop_reference(log_w, u)
    np.testing.assert_allclose(out.weights.numpy(), weights, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(out.ess.numpy(), ess, rtol=1e-6)
    assert out.ancestors.tolist() == anc.tolist()


def test_twin_agrees_with_power_math():
    """The SMC strategy resamples with power_math on the host; the twin (and so the kernel)
    must give the same weights, ESS and ancestors."""
    log_w, u = make_case(6, 33, seed=5)
    out = smc_resample_torch(log_w, u)
    w = pm.normalized_weights(log_w.numpy())
    np.testing.assert_allclose(out.weights.numpy(), w, atol=1e-7)
    np.testing.assert_allclose(out.ess.numpy(), pm.ess(log_w.numpy()), rtol=1e-6)
    assert out.ancestors.tolist() == pm.systematic_resample(w, u.numpy()).tolist()


def test_twin_ess_and_offspring_laws():
    N = 16
    log_w = torch.stack([torch.zeros(N), torch.full((N,), -torch.inf), torch.randn(N) * 3])
    log_w[1, 5] = 0.0  # a single live particle
    u = torch.tensor([0.3, 0.7, 0.5])
    out = smc_resample_torch(log_w, u)
    assert out.ess[0].item() == pytest.approx(N) and out.ess[1].item() == pytest.approx(1.0)
    assert (out.ancestors[1] == 5).all()
    assert out.ancestors[0].tolist() == list(range(N))  # equal weights: everyone once
    # systematic resampling copies particle j ⌊N·w_j⌋ or ⌈N·w_j⌉ times
    copies = torch.bincount(out.ancestors[2], minlength=N).double()
    nw = N * out.weights[2].double()
    assert ((copies >= nw.floor() - 1e-9) & (copies <= nw.ceil() + 1e-9)).all()
    assert (out.ancestors.diff(dim=1) >= 0).all()  # sorted ancestors


def test_twin_dead_particles_never_chosen_and_all_dead_is_uniform():
    log_w, u = make_case(4, 50, seed=2)
    out = smc_resample_torch(log_w, u)
    assert (out.ancestors[0] >= 25).all()  # particles 0..24 of row 0 are dead
    assert torch.allclose(out.weights[1], torch.full((50,), 1 / 50))
    assert out.ess[1].item() == pytest.approx(50)


def test_dispatcher_on_cpu_is_the_twin():
    log_w, u = make_case(3, 9)
    got, ref = smc_resample(log_w, u), smc_resample_torch(log_w, u)
    assert all(torch.equal(x, y) for x, y in zip(got, ref, strict=True))


# ------------------------------------------------------------------------ kernel (interpreter)


@interpreted
@pytest.mark.parametrize("R,N", [(1, 1), (1, 5), (4, 37), (3, 64), (2, 1000)])
def test_kernel_matches_twin(R, N):
    log_w, u = make_case(R, N, seed=R + N)
    assert_matches(smc_resample_triton(log_w, u), smc_resample_torch(log_w, u))


@interpreted
def test_kernel_strided_and_equal_weights():
    wide = torch.zeros(3, 20)
    view = wide[:, 4:12]  # equal weights, stride(0) = 20
    u = torch.tensor([0.0, 0.5, 0.999])
    got = smc_resample_triton(view, u)
    assert_matches(got, smc_resample_torch(view.contiguous(), u))
    assert got.ancestors.tolist() == [list(range(8))] * 3


def compile_sm90() -> None:
    """Compile (no launch) for Hopper; run by the test below without the interpreter."""
    from kernel_helpers import compile_for

    from temper.triton_kernels.smc_resample import _smc_kernel

    f32 = "*fp32"
    for block_n, block_i in ((64, 64), (8192, 1)):
        compile_for(
            _smc_kernel,
            dict(lw_ptr=f32, lw_stride="i64", u_ptr=f32, w_ptr=f32, ess_ptr=f32, anc_ptr="*i64", N="i32"),
            dict(BLOCK_N=block_n, BLOCK_I=block_i), num_warps=4)


@pytest.mark.slow
@needs_triton
def test_kernel_compiles_for_sm90():
    pytest.importorskip("triton.backends.nvidia")
    run_without_interpreter(compile_sm90)


# ----------------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@needs_triton
@on_cuda
def test_kernel_on_cuda_matches_twin():
    for R, N in ((1, 8), (64, 256), (8, 8192)):
        log_w, u = (t.cuda() for t in make_case(R, N, seed=R))
        assert use_triton(log_w)
        assert_matches(smc_resample(log_w, u), smc_resample_torch(log_w, u))
