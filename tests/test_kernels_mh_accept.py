"""mh_accept: the torch twin against a Python loop and the MH / i-SIR laws, the Triton kernel
against the twin (CPU, TRITON_INTERPRET=1, set by conftest without CUDA), an sm_90 compile check
(in a subprocess without the interpreter), and a CUDA run (gpu)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from kernel_helpers import CHI2_999, interpreted, needs_triton, on_cuda, run_without_interpreter

from temper.decoding import power_math as pm
from temper.triton_kernels._triton import use_triton
from temper.triton_kernels.mh_accept import mh_accept, mh_accept_torch, mh_accept_triton


def make_case(B: int, M: int, T: int, seed: int = 0):
    """Ragged lengths, cuts past the end (all-padding rows) and -inf entries."""
    g = torch.Generator().manual_seed(seed)
    cur = torch.randn(B, T, generator=g) * 0.3 - 0.2
    prop = torch.randn(B, M, T, generator=g) * 0.3 - 0.2
    cur_len = torch.randint(0, T + 1, (B,), generator=g)
    prop_len = torch.randint(0, T + 1, (B, M), generator=g)
    cut = torch.randint(0, T + 1, (B,), generator=g)
    if B > 2:
        cut[1] = T + 5  # all padding: every sum is 0
        cur[2, cut[2]:] = -torch.inf  # the current state is impossible from the cut on
        cur_len[2] = T
    if B > 3 and M > 1:
        prop[3, 0] = -torch.inf
        prop_len[3, 0], cut[3] = T, 0
    u = torch.rand(B, generator=g).clamp(1e-6, 1 - 1e-6)
    return cur, cur_len, cut, prop, prop_len, u


def loop_reference(cur, cur_len, cut, prop, prop_len, u):
    """Plain Python over rows and positions, float64."""
    B, M, T = prop.shape
    cur_sum, prop_sum, choice = np.zeros(B), np.zeros((B, M)), np.zeros(B, dtype=np.int64)
    for b in range(B):
        c = int(cut[b])
        cur_sum[b] = sum(float(cur[b, j]) for j in range(c, min(int(cur_len[b]), T)))
        for m in range(M):
            prop_sum[b, m] = sum(float(prop[b, m, j]) for j in range(c, min(int(prop_len[b, m]), T)))
        if M == 1:
            with np.errstate(invalid="ignore"):
                choice[b] = int(math.log(float(u[b])) < prop_sum[b, 0] - cur_sum[b])
            continue
        v = [cur_sum[b], *prop_sum[b]]
        mx = max(v)
        if mx == -math.inf:
            continue
        w = [math.exp(x - mx) for x in v]
        target, acc = float(u[b]) * sum(w), 0.0
        for i, wi in enumerate(w):
            acc += wi
            if acc > target:
                choice[b] = i
                break
        else:
            choice[b] = M
    return cur_sum, prop_sum, choice


def assert_matches(got, ref):
    torch.testing.assert_close(got.cur_sum, ref.cur_sum, atol=1e-5, rtol=1e-5, equal_nan=True)
    torch.testing.assert_close(got.prop_sum, ref.prop_sum, atol=1e-5, rtol=1e-5, equal_nan=True)
    assert torch.equal(got.choice, ref.choice), (got.choice, ref.choice)


# ------------------------------------------------------------------------------- twin semantics


@pytest.mark.parametrize("M", [1, 2, 5])
def test_twin_matches_python_loop(M):
    args = make_case(9, M, 23, seed=M)
    out = mh_accept_torch(*args)
    cur_sum, prop_sum, choice = loop_reference(*args)
    np.testing.assert_allclose(out.cur_sum.numpy(), cur_sum, atol=1e-5)
    np.testing.assert_allclose(out.prop_sum.numpy(), prop_sum, atol=1e-5)
    assert out.choice.tolist() == choice.tolist()
    assert out.cur_sum[1] == 0 and (out.prop_sum[1] == 0).all()  # all-padding row


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy: -inf - -inf on the -inf rows
def test_twin_agrees_with_power_math():
    """The strategies decide with power_math on the host; the twin (and so the kernel) must
    make the same decision from the same sums."""
    for M in (1, 4):
        cur, cur_len, cut, prop, prop_len, u = make_case(12, M, 17, seed=10 + M)
        out = mh_accept_torch(cur, cur_len, cut, prop, prop_len, u)
        cs = pm.suffix_sums(cur.numpy(), cur_len.numpy(), cut.numpy())
        ps = pm.suffix_sums(prop.numpy(), prop_len.numpy(), cut.numpy()[:, None])
        np.testing.assert_allclose(out.cur_sum.numpy(), cs, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(out.prop_sum.numpy(), ps, rtol=1e-5, atol=1e-5)
        assert out.choice.tolist() == pm.choose_next(cs, ps, u.numpy()).tolist()


def test_twin_mh_rate_and_edges():
    """Acceptance rate = min(1, exp(Δ)); -inf current always moves; both -inf keep."""
    n = 20_000
    cur = torch.zeros(n, 4)
    prop = torch.full((n, 1, 4), -0.25)  # Δ = 2 · (-0.25) over positions 2, 3
    u = torch.rand(n, generator=torch.Generator().manual_seed(0))
    out = mh_accept_torch(cur, torch.full((n,), 4), torch.full((n,), 2), prop, torch.full((n, 1), 4), u)
    assert abs(out.choice.float().mean().item() - math.exp(-0.5)) < 0.015  # 4.5 sigma
    ninf = torch.full((2, 3), -torch.inf)
    out = mh_accept_torch(ninf, torch.tensor([3, 3]), torch.tensor([0, 0]),
                          torch.stack([torch.zeros(1, 3), torch.full((1, 3), -torch.inf)]),
                          torch.tensor([[3], [3]]), torch.tensor([0.5, 0.5]))
    assert out.choice.tolist() == [1, 0]


def test_twin_isir_chi_square():
    """i-SIR picks current / proposals with probability ∝ exp(sum)."""
    n, sums = 20_000, torch.tensor([0.0, -1.0, 0.5, -0.2])  # current, then M = 3 proposals
    cur = sums[0].expand(n, 1).contiguous()
    prop = sums[1:].view(1, 3, 1).expand(n, 3, 1).contiguous()
    u = torch.rand(n, generator=torch.Generator().manual_seed(1))
    out = mh_accept_torch(cur, torch.ones(n, dtype=torch.long), torch.zeros(n, dtype=torch.long),
                          prop, torch.ones(n, 3, dtype=torch.long), u)
    counts = np.bincount(out.choice.numpy(), minlength=4).astype(np.float64)
    expected = torch.softmax(sums.double(), 0).numpy() * n
    assert ((counts - expected) ** 2 / expected).sum() < CHI2_999[3]


def test_dispatcher_on_cpu_is_the_twin():
    args = make_case(6, 3, 11)
    got, ref = mh_accept(*args), mh_accept_torch(*args)
    assert all(torch.equal(x, y) for x, y in zip(got, ref, strict=True))


# ------------------------------------------------------------------------ kernel (interpreter)


@interpreted
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy: -inf - -inf on the -inf rows
@pytest.mark.parametrize("B,M,T", [(1, 1, 1), (7, 1, 37), (9, 2, 50), (9, 5, 300), (4, 3, 3000)])
def test_kernel_matches_twin(B, M, T):
    args = make_case(B, M, T, seed=B * M + T)
    assert_matches(mh_accept_triton(*args), mh_accept_torch(*args))


@interpreted
def test_kernel_strided_inputs():
    cur, cur_len, cut, prop, prop_len, u = make_case(5, 3, 20, seed=4)
    wide_cur = torch.zeros(5, 29)
    wide_cur[:, 3:23] = cur
    wide_prop = torch.zeros(5, 4, 20)
    wide_prop[:, :3] = prop
    got = mh_accept_triton(wide_cur[:, 3:23], cur_len, cut, wide_prop[:, :3], prop_len, u)
    assert_matches(got, mh_accept_torch(cur, cur_len, cut, prop, prop_len, u))


def compile_sm90() -> None:
    """Compile (no launch) for Hopper; run by the test below without the interpreter."""
    from kernel_helpers import compile_for

    from temper.triton_kernels.mh_accept import _mh_kernel

    f32, i64 = "*fp32", "*i64"
    for is_mh, block_c in ((True, 2), (False, 8)):
        compile_for(
            _mh_kernel,
            dict(cur_ptr=f32, cur_stride="i64", cur_len_ptr=i64, cut_ptr=i64, prop_ptr=f32,
                 prop_stride_b="i64", prop_stride_m="i64", prop_len_ptr=i64, u_ptr=f32, cur_sum_ptr=f32,
                 prop_sum_ptr=f32, choice_ptr=i64, M="i32", T_CUR="i32", T_PROP="i32"),
            dict(IS_MH=is_mh, BLOCK_C=block_c, BLOCK_T=512), num_warps=4)


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
    for B, M, T in ((1, 1, 64), (64, 1, 2048), (32, 8, 1024)):
        args = [t.cuda() for t in make_case(B, M, T, seed=B)]
        assert use_triton(args[0])
        assert_matches(mh_accept(*args), mh_accept_torch(*args))
