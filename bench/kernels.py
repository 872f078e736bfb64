"""Sampler-kernel benchmark: Triton kernel vs torch eager twin vs torch.compile(twin), in one run.

    python -m bench.kernels [--iters 30] [--no-compile]   → bench/out/kernels.json

On CUDA: `tempered_sample` for B ∈ {1, 32, 256} × V ∈ {32768, 151936} (bf16 logits, α = 4, plus
an fp32 and a top-k row), `mh_accept` and `smc_resample` at typical sizes. Each entry is the
median time per call (GPU events, L2 flushed before each call, host overhead of the call
included), the achieved bandwidth (bytes of input read / time) and its fraction of the card's
memory bandwidth (from a small table of device names; 'unknown' otherwise), with the ratios
measured side by side in the same run. The kernel's tokens are checked against the twin's.
Without CUDA it says so and times the eager twins only, at small sizes (well under 30 s).

What this is not: an end-to-end decode benchmark (bench.engine) or a tuning sweep.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from temper.triton_kernels._triton import HAVE_TRITON
from temper.triton_kernels.mh_accept import mh_accept_torch, mh_accept_triton
from temper.triton_kernels.smc_resample import smc_resample_torch, smc_resample_triton
from temper.triton_kernels.tempered_sample import tempered_sample_torch, tempered_sample_triton

OUT = Path(__file__).parent / "out"

# Peak memory bandwidth, GB/s, by device-name substring; first match wins (GH200 before H200,
# the H100 variants before plain H100, L40S before L4).
PEAK_GBPS = [
    ("GH200", 4000), ("H200", 4800), ("H100 NVL", 3900), ("H100 PCIe", 2000), ("H100", 3350),
    ("B200", 8000), ("A100-SXM4-80GB", 2039), ("A100 80GB PCIe", 1935), ("A100", 1555),
    ("L40S", 864), ("L40", 864), ("L4", 300), ("A10G", 600), ("A10", 600), ("RTX 4090", 1008),
    ("V100", 900), ("T4", 320),
]


def peak_gbps(name: str) -> float | None:
    return next((bw for key, bw in PEAK_GBPS if key in name), None)


def time_cuda(fn: Callable[[], object], iters: int) -> float:
    """Median ms per call; a 256 MiB write before each call evicts the inputs from L2."""
    flush = torch.empty(256 << 20, dtype=torch.int8, device="cuda")
    for _ in range(3):
        fn()
    events = []
    for _ in range(iters):
        flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        events.append((start, end))
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in events)


def time_cpu(fn: Callable[[], object], iters: int) -> float:
    fn()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def compiled(fn: Callable, enabled: bool) -> Callable | None:
    if not enabled:
        return None
    import torch._dynamo as dynamo

    for knob in ("recompile_limit", "cache_size_limit"):  # one compiled graph per shape
        if hasattr(dynamo.config, knob):
            setattr(dynamo.config, knob, 64)
    return torch.compile(fn, dynamic=False)


# ----------------------------------------------------------------------------------------- cases


def sample_inputs(B: int, V: int, dtype: torch.dtype, device: str, top_k: int = 0):
    g = torch.Generator(device=device).manual_seed(B * 7 + V)
    logits = (torch.randn(B, V, device=device, generator=g) * 4).to(dtype)
    alpha = torch.full((B,), 4.0, device=device)
    seed = torch.arange(B, device=device) * 1_000_003 + 17
    offset = torch.full((B,), 42, device=device, dtype=torch.int64)
    k = torch.full((B,), top_k, device=device, dtype=torch.int64) if top_k else None
    return (logits, alpha, seed, offset, k), B * V * logits.element_size()


def mh_inputs(B: int, M: int, T: int, device: str):
    g = torch.Generator(device=device).manual_seed(B + M + T)
    cur = torch.randn(B, T, device=device, generator=g) * 0.1 - 0.1
    prop = torch.randn(B, M, T, device=device, generator=g) * 0.1 - 0.1
    cur_len = torch.full((B,), T, device=device, dtype=torch.int64)
    prop_len = torch.full((B, M), T, device=device, dtype=torch.int64)
    cut = torch.zeros(B, device=device, dtype=torch.int64)  # full suffixes: every byte is read
    u = torch.rand(B, device=device, generator=g)
    return (cur, cur_len, cut, prop, prop_len, u), (B * T + B * M * T) * 4


def smc_inputs(R: int, N: int, device: str):
    g = torch.Generator(device=device).manual_seed(R + N)
    return (torch.randn(R, N, device=device, generator=g) * 3,
            torch.rand(R, device=device, generator=g)), R * N * 4


def cases(cuda: bool):
    """(op, label, inputs, bytes, kernel, twin, same(kernel_out, twin_out))."""
    dev = "cuda" if cuda else "cpu"
    tok = lambda a, b: bool(torch.equal(a.token, b.token))
    grid = [(B, V) for B in (1, 32, 256) for V in (32768, 151936)] if cuda else [
        (B, V) for B in (1, 8) for V in (32768, 151936)]
    dtype = torch.bfloat16 if cuda else torch.float32
    for B, V in grid:
        args, nbytes = sample_inputs(B, V, dtype, dev)
        yield ("tempered_sample", f"B={B} V={V} {str(dtype)[6:]}", args, nbytes,
               tempered_sample_triton, tempered_sample_torch, tok)
    if cuda:
        args, nbytes = sample_inputs(32, 151936, torch.float32, dev)
        yield ("tempered_sample", "B=32 V=151936 float32", args, nbytes,
               tempered_sample_triton, tempered_sample_torch, tok)
        args, nbytes = sample_inputs(32, 151936, torch.bfloat16, dev, top_k=50)
        yield ("tempered_sample", "B=32 V=151936 bfloat16 top_k=50", args, nbytes,
               tempered_sample_triton, tempered_sample_torch, tok)
    choice = lambda a, b: bool(torch.equal(a.choice, b.choice))
    for B, M, T in ((256, 1, 4096), (256, 8, 4096)) if cuda else ((32, 1, 1024), (32, 8, 1024)):
        args, nbytes = mh_inputs(B, M, T, dev)
        yield "mh_accept", f"B={B} M={M} T={T}", args, nbytes, mh_accept_triton, mh_accept_torch, choice
    anc = lambda a, b: bool(torch.equal(a.ancestors, b.ancestors))
    for R, N in ((1, 64), (64, 1024)) if cuda else ((64, 256),):
        args, nbytes = smc_inputs(R, N, dev)
        yield ("smc_resample", f"R={R} N={N}", args, nbytes, smc_resample_triton, smc_resample_torch,
               anc)


# ------------------------------------------------------------------------------------------- run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile of the twins")
    opt = ap.parse_args()

    cuda = torch.cuda.is_available()
    name = torch.cuda.get_device_name() if cuda else "cpu"
    peak = peak_gbps(name) if cuda else None
    use_kernel = cuda and HAVE_TRITON
    if not cuda:
        print("CUDA is not available: timing the torch twins only (eager, CPU, small sizes);"
              " no Triton kernel, no torch.compile, no bandwidth figures.")
    elif not HAVE_TRITON:
        print("Triton is not importable: timing the torch twins only.")
    print(f"device: {name}; memory bandwidth: {f'{peak} GB/s' if peak else 'unknown'}\n")

    timer = time_cuda if cuda else time_cpu
    compiled_fns: dict[str, Callable | None] = {}
    rows, report = [], []
    for op, label, args, nbytes, kernel, twin, same in cases(cuda):
        entry: dict = {"op": op, "case": label, "bytes": nbytes}
        impls = {"eager": twin}
        if use_kernel:
            impls = {"triton": kernel, **impls}
            if op not in compiled_fns:
                compiled_fns[op] = compiled(twin, not opt.no_compile)
            if compiled_fns[op] is not None:
                impls["compile"] = compiled_fns[op]
            entry["matches_twin"] = same(kernel(*args), twin(*args))
        for impl, fn in impls.items():
            try:
                ms = timer(lambda fn=fn, args=args: fn(*args), opt.iters)
            except Exception as exc:  # e.g. torch.compile without a working toolchain
                entry[impl] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
                continue
            gbps = nbytes / (ms * 1e-3) / 1e9
            entry[impl] = {"ms": ms, "gbps": gbps if cuda else None,
                           "frac_peak": gbps / peak if cuda and peak else None}
        base = entry.get("triton", {}).get("ms")
        if base:
            entry["ratios_vs_triton"] = {k: entry[k]["ms"] / base for k in ("eager", "compile")
                                         if "ms" in entry.get(k, {})}
        rows.append(entry)
        report.append(format_row(entry, cuda))
        print(report[-1], flush=True)

    OUT.mkdir(parents=True, exist_ok=True)
    result = {"device": name, "cuda": cuda, "triton": HAVE_TRITON, "peak_gbps": peak or "unknown",
              "iters": opt.iters, "torch": torch.__version__, "results": rows}
    (OUT / "kernels.json").write_text(json.dumps(result, indent=2))
    print(f"\nwrote {OUT / 'kernels.json'}")


def format_row(entry: dict, cuda: bool) -> str:
    parts = [f"{entry['op']:<16} {entry['case']:<34}"]
    for impl in ("triton", "eager", "compile"):
        r = entry.get(impl)
        if r is None:
            continue
        if "error" in r:
            parts.append(f"{impl} failed")
            continue
        s = f"{impl} {r['ms']:9.4f} ms"
        if cuda:
            s += f" {r['gbps']:7.1f} GB/s"
            s += f" ({100 * r['frac_peak']:4.1f}% peak)" if r["frac_peak"] else ""
        ratio = entry.get("ratios_vs_triton", {}).get(impl)
        s += f" [{ratio:.2f}x]" if ratio else ""
        parts.append(s)
    if "matches_twin" in entry:
        parts.append("matches twin" if entry["matches_twin"] else "DIFFERS FROM TWIN")
    return " | ".join(parts)


if __name__ == "__main__":
    main()
