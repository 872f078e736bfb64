"""tempered_sample: the torch twin against brute force and a chi-square test, the Triton kernel
against the twin (CPU, TRITON_INTERPRET=1, set by conftest without CUDA), an sm_90 compile check
(in a subprocess without the interpreter), and a CUDA run (gpu)."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from kernel_helpers import CHI2_999, chi2, interpreted, needs_triton, on_cuda, run_without_interpreter

from temper.triton_kernels import rng
from temper.triton_kernels._triton import jit, tl, use_triton
from temper.triton_kernels.tempered_sample import (
    tempered_sample,
    tempered_sample_torch,
    tempered_sample_triton,
    truncation,
)


def make_case(B: int, V: int, dtype: torch.dtype, seed: int = 0):
    """Logits with -inf entries, duplicated values (ties) and a mix of α / top-k / greedy rows."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, V, generator=g) * 3
    if V > 8:
        logits[0, 3:7] = -torch.inf  # masked vocabulary
        logits[-1, 1::2] = logits[-1, 0::2][: V // 2]  # pairwise ties
    alphas = torch.tensor([1.0, 4.0, math.inf, 0.5, 2.0, 1.0, math.inf])
    alpha = alphas[torch.arange(B) % len(alphas)]
    top_k = torch.tensor([0, 5, 3, 1, 0, V + 3, 2])[torch.arange(B) % 7]
    seeds = torch.randint(-(2**62), 2**62, (B,), generator=g)
    offsets = torch.randint(0, 10_000, (B,), generator=g)
    return logits.to(dtype), alpha, seeds, offsets, top_k


def assert_matches(got, ref, dtype):
    assert torch.equal(got.token, ref.token), (got.token, ref.token)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    for name in ("logp", "logq", "log_w"):
        torch.testing.assert_close(getattr(got, name), getattr(ref, name), atol=tol, rtol=tol,
                                   equal_nan=True, msg=name)


# ------------------------------------------------------------------------------- twin semantics


def test_twin_matches_brute_force():
    logits, alpha, seeds, offsets, top_k = make_case(7, 50, torch.float32, seed=1)
    out = tempered_sample_torch(logits, alpha, seeds, offsets, top_k)
    noise = rng.gumbel(seeds, offsets, 50).double().numpy()
    ell = logits.double().numpy()
    for b in range(7):
        a = float(alpha[b])
        lse = np.logaddexp.reduce(ell[b])
        if math.isinf(a):
            assert int(out.token[b]) == int(np.argmax(ell[b]))
            assert float(out.logq[b]) == 0.0 and float(out.log_w[b]) == 0.0
            continue
        s = a * ell[b]
        k = int(top_k[b])
        if k > 0:
            s = np.where(s >= np.sort(s)[::-1][min(k, 50) - 1], s, -np.inf)
        lse_q = np.logaddexp.reduce(s)
        x = int(np.argmax(s + noise[b]))
        assert int(out.token[b]) == x
        assert out.logp[b].item() == pytest.approx(ell[b, x] - lse, abs=1e-5)
        assert out.logq[b].item() == pytest.approx(s[x] - lse_q, abs=1e-5)
        assert out.log_w[b].item() == pytest.approx(lse_q - a * lse, abs=1e-5)
        if k == 0:  # untruncated: log_w = α·logp − logq (the log normaliser of p^α)
            assert out.log_w[b].item() == pytest.approx(a * out.logp[b].item() - out.logq[b].item(),
                                                        abs=1e-4)


def test_uniforms_never_reach_0_or_1():
    """Every 32-bit hash maps strictly inside (0, 1), so the Gumbel noise is finite: with 24 bits
    the largest hash rounded to u = 1.0 in float32 and its index won every draw it occurred in,
    masked or not (about once per 2**24 vocabulary entries, ~1% of draws at a 150k vocabulary)."""
    h = torch.tensor([0, 1, 2**31, 2**32 - 512, 2**32 - 1], dtype=torch.int64)
    u = rng.unit_float(h)
    assert (u > 0).all() and (u < 1).all()
    assert torch.isfinite(-torch.log(-torch.log(u))).all()
    assert u[-1].item() == 1.0 - 2.0**-24 and u[0].item() == 2.0**-24
    old = ((h >> 8).to(torch.float32) + 0.5) * (1.0 / 16777216.0)
    assert old[-1].item() == 1.0  # the bug this guards against


def test_a_masked_token_is_never_drawn_whatever_the_noise():
    """A (seed, offset) whose noise once hit u = 1.0 at index 90: top-k must still hold."""
    torch.manual_seed(0)
    logits = torch.randn(3, 259) * 2
    logits[:, 90] = -20.0
    n = 3
    out = tempered_sample_torch(logits, torch.full((n,), 3.0), torch.full((n,), 1953355636230617881),
                                torch.full((n,), 23), torch.full((n,), 2), None)
    for i in range(n):
        assert out.token[i].item() in torch.topk(logits[i], 2).indices.tolist()


def test_twin_greedy_ties_take_lowest_index():
    logits = torch.tensor([[0.0, 2.0, 2.0, 1.0], [5.0, 5.0, 5.0, 5.0]])
    out = tempered_sample_torch(logits, torch.full((2,), math.inf), torch.zeros(2, dtype=torch.long),
                                torch.zeros(2, dtype=torch.long))
    assert out.token.tolist() == [1, 0]


@pytest.mark.parametrize("top_k", [0, 4])
def test_twin_chi_square(top_k):
    """20 000 draws from one row (offset varies per draw) follow softmax(α·ℓ) on the kept set."""
    n, V, a = 20_000, 10, 2.0
    ell = torch.randn(V, generator=torch.Generator().manual_seed(3))
    out = tempered_sample_torch(ell.expand(n, V), torch.full((n,), a), torch.full((n,), 12345),
                                torch.arange(n), torch.full((n,), top_k) if top_k else None)
    probs = torch.softmax(a * ell.double(), 0).numpy()
    counts = np.bincount(out.token.numpy(), minlength=V).astype(np.float64)
    if top_k:
        kept = np.argsort(-probs)[:top_k]
        assert counts[np.setdiff1d(np.arange(V), kept)].sum() == 0
        probs, counts = probs[kept] / probs[kept].sum(), counts[kept]
    assert chi2(counts, probs) < CHI2_999[len(probs) - 1]


def test_dispatcher_on_cpu_is_the_twin():
    args = make_case(5, 37, torch.float32)
    got, ref = tempered_sample(*args), tempered_sample_torch(*args)
    assert all(torch.equal(x, y) for x, y in zip(got, ref, strict=True))
    top_p = torch.tensor([1.0, 0.9, 1.0, 0.5, 1.0])
    got, ref = tempered_sample(*args, top_p), tempered_sample_torch(*args, top_p)
    assert all(torch.equal(x, y) for x, y in zip(got, ref, strict=True))


def test_truncation_reads_kmax_and_top_p_once():
    V = 10
    assert truncation(None, None, V) == (0, False)
    assert truncation(torch.tensor([0, 0]), torch.tensor([1.0, 1.0]), V) == (0, False)
    assert truncation(torch.tensor([0, 3, V + 5]), None, V) == (V, False)  # clamped to V
    assert truncation(torch.zeros(0, dtype=torch.long), torch.zeros(0), V) == (0, False)  # B = 0
    assert truncation(torch.tensor([2, 0]), torch.tensor([1.0, 0.9]), V) == (2, True)
    # what the dispatcher hands the twin (read once) gives what the twin reads for itself
    args = (*make_case(7, 20, torch.float32, seed=2), torch.tensor([1.0, 0.3, 0.9, 1.0, 0.5, 1.0, 0.7]))
    given = tempered_sample_torch(*args, truncated=truncation(args[4], args[5], 20))
    assert all(torch.equal(x, y) for x, y in zip(given, tempered_sample_torch(*args), strict=True))


def test_import_without_triton():
    """The package imports and the twins run with triton made unimportable."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, temper.triton_kernels as k\n"
        "assert not k.HAVE_TRITON\n"
        "r = k.tempered_sample(torch.zeros(2, 5), torch.ones(2), torch.zeros(2, dtype=torch.long),"
        " torch.arange(2))\n"
        "assert r.token.shape == (2,)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ------------------------------------------------------------------------ kernel (interpreter)


@interpreted
@pytest.mark.parametrize(
    "B,V,dtype,block,splits",
    [
        (1, 1, torch.float32, None, None),
        (3, 37, torch.float32, None, None),
        (7, 1000, torch.bfloat16, 128, 3),  # V % block != 0, a row split over 3 programs
        (5, 4099, torch.float32, 1024, 2),
        (2, 4099, torch.float16, None, None),
        (2, 151_936, torch.bfloat16, 8192, 4),  # a real vocabulary size
    ],
)
def test_kernel_matches_twin(B, V, dtype, block, splits):
    logits, alpha, seeds, offsets, top_k = make_case(B, V, dtype, seed=V)
    for k in (None, top_k):
        got = tempered_sample_triton(logits, alpha, seeds, offsets, k, block=block, num_splits=splits)
        assert_matches(got, tempered_sample_torch(logits, alpha, seeds, offsets, k), dtype)


@interpreted
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy: log(0) on the all -inf row
def test_kernel_edge_rows():
    """Greedy ties, an all -inf row, a strided (sliced) logits view, top-k ties."""
    logits = torch.tensor([
        [0.0, 3.0, 3.0, -torch.inf, 1.0, 3.0],
        [-torch.inf] * 6,
        [2.0, 2.0, 2.0, 1.0, 1.0, 0.0],
        [1.0, 0.5, 1.0, 0.5, -1.0, 1.0],
    ])
    wide = torch.zeros(4, 10)
    wide[:, 2:8] = logits
    view = wide[:, 2:8]  # stride(0) = 10
    alpha = torch.tensor([math.inf, 1.0, 3.0, 1.0])
    seeds, offsets = torch.arange(4) * 77, torch.arange(4)
    top_k = torch.tensor([0, 2, 2, 1])  # ties at the k-th value are kept
    for k in (None, top_k):
        got = tempered_sample_triton(view, alpha, seeds, offsets, k, block=16, num_splits=1)
        assert_matches(got, tempered_sample_torch(logits, alpha, seeds, offsets, k), torch.float32)
    assert int(got.token[0]) == 1


@jit
def _uniform_probe_kernel(seed_ptr, offset_ptr, out_ptr, n, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    key = rng.row_key_tl(tl.load(seed_ptr + row), tl.load(offset_ptr + row))
    for off in range(0, n, BLOCK):
        offs = off + tl.arange(0, BLOCK)
        tl.store(out_ptr + row * n + offs, rng.uniform_tl(key, offs), mask=offs < n)


@interpreted
def test_rng_device_functions_are_bit_identical():
    """rng's Triton hash gives exactly rng.uniform, for negative, huge and 64-bit seeds."""
    seeds = torch.tensor([0, 1, -1, 2**62 + 12345, -(2**63), 2**63 - 1, 0x9E3779B97F4A7C15 - 2**64])
    offsets = torch.tensor([0, 7, 2**32 + 3, 123456789, 5, 2**40, 1])
    n = 3000
    out = torch.empty(len(seeds), n)
    _uniform_probe_kernel[(len(seeds),)](seeds, offsets, out, n, BLOCK=1024)
    assert torch.equal(out, rng.uniform(seeds, offsets, n))


@interpreted
def test_kernel_many_seeds_same_tokens():
    """Flat-ish logits so the noise decides: any difference in the in-kernel hash shows here."""
    B, V = 48, 300
    logits = torch.randn(B, V, generator=torch.Generator().manual_seed(9)) * 0.1
    seeds = torch.arange(B) * 0x9E3779B97F4A7 - 2**40
    offsets = torch.arange(B) * 1_000_003
    alpha = torch.ones(B)
    got = tempered_sample_triton(logits, alpha, seeds, offsets)
    assert torch.equal(got.token, tempered_sample_torch(logits, alpha, seeds, offsets).token)


@interpreted
def test_kernel_chi_square():
    n, V, a = 300, 3, 1.5
    ell = torch.tensor([0.3, -0.2, 0.6])
    out = tempered_sample_triton(ell.expand(n, V), torch.full((n,), a), torch.full((n,), 99),
                                 torch.arange(n))
    counts = np.bincount(out.token.numpy(), minlength=V).astype(np.float64)
    assert chi2(counts, torch.softmax(a * ell.double(), 0).numpy()) < CHI2_999[V - 1]


@interpreted
def test_kernel_rejects_top_p():
    args = make_case(2, 16, torch.float32)
    with pytest.raises(ValueError):
        tempered_sample_triton(*args, torch.tensor([0.9, 1.0]))


def compile_sm90(dtype: str) -> None:
    """Compile (no launch) for Hopper; run by the test below without the interpreter."""
    from kernel_helpers import compile_for

    from temper.triton_kernels.tempered_sample import _ts_combine_kernel, _ts_partial_kernel

    f32 = "*fp32"
    for has in (True, False):
        compile_for(
            _ts_partial_kernel,
            dict(logits_ptr=dtype, stride_b="i64", alpha_ptr=f32, seed_ptr="*i64", offset_ptr="*i64",
                 thresh_ptr=f32, ws_ptr=f32, idx_ptr="*i32", B="i32", V="i32", CHUNK="i32"),
            dict(HAS_THRESH=has, BLOCK=2048), num_warps=8)
    compile_for(
        _ts_combine_kernel,
        dict(logits_ptr=dtype, stride_b="i64", alpha_ptr=f32, ws_ptr=f32, idx_ptr="*i32",
             token_ptr="*i64", logp_ptr=f32, logq_ptr=f32, logw_ptr=f32, B="i32", S="i32"),
        dict(BLOCK_S=64), num_warps=1)


@pytest.mark.slow
@needs_triton
@pytest.mark.parametrize("dtype", ["*fp32", "*bf16"])
def test_kernel_compiles_for_sm90(dtype):
    """Compile (no launch) for Hopper: catches what the interpreter cannot check."""
    pytest.importorskip("triton.backends.nvidia")
    run_without_interpreter(compile_sm90, dtype)


# ----------------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@needs_triton
@on_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_on_cuda_matches_twin(dtype):
    for B, V in ((1, 32_768), (33, 151_936), (4, 262_144)):
        args = [t.cuda() for t in make_case(B, V, dtype, seed=B)]
        assert use_triton(args[0])  # so the dispatcher picks the kernel
        for k in (None, args[4]):
            assert_matches(tempered_sample(*args[:4], k), tempered_sample_torch(*args[:4], k), dtype)
