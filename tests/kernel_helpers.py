"""What the Triton kernel tests share: skip markers for where a kernel can run, the chi-square
bound the sampling laws are checked with, and compiling a kernel for a GPU architecture from a
CPU-only process (test-only code: the package never compiles ahead of time)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from temper.triton_kernels._triton import HAVE_TRITON, interpreting

needs_triton = pytest.mark.skipif(not HAVE_TRITON, reason="triton is not importable")
interpreted = pytest.mark.skipif(
    not (HAVE_TRITON and interpreting()), reason="needs triton and TRITON_INTERPRET=1 (conftest sets it without CUDA)"
)
on_cuda = pytest.mark.skipif(
    not torch.cuda.is_available() or interpreting(), reason="needs CUDA and TRITON_INTERPRET off"
)

# Upper 0.999 quantiles of chi-square(df), hard-coded (no scipy): a correct sampler fails a
# given seed with probability 1e-3, and the seeds are fixed, so a pass is a stable pass.
CHI2_999 = {2: 13.816, 3: 16.266, 5: 20.515, 9: 27.877}


def chi2(counts: np.ndarray, probs: np.ndarray) -> float:
    """Pearson's statistic of observed counts against probabilities."""
    expected = np.asarray(probs) * np.sum(counts)
    return float(((np.asarray(counts) - expected) ** 2 / expected).sum())


def compile_for(kernel: Any, signature: dict[str, str], constexprs: dict[str, Any], arch: int = 90, **options: Any):
    """Compile (never launch) a `@jit` kernel for an NVIDIA architecture with Triton's bundled
    ptxas, GPU or not: lets CPU-only CI catch what the interpreter cannot (loop-carried types,
    unsupported ops, register spills). Needs the interpreter off (see run_without_interpreter).
    signature: runtime argument → Triton type ("*fp32", "i32", ...)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if interpreting():
        raise RuntimeError("compile_for: TRITON_INTERPRET=1 builds interpreted kernels; unset it")
    options.setdefault("enable_fp_fusion", False)  # as the launches do
    sig = dict(signature) | {name: "constexpr" for name in constexprs}
    src = ASTSource(fn=kernel, signature=sig, constexprs=constexprs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)


def run_without_interpreter(fn: Callable[..., Any], *args: Any) -> None:
    """Call the module-level function `fn(*args)` in a fresh Python without TRITON_INTERPRET,
    where `triton.jit` builds compilable kernels (what `compile_for` needs); raise with its
    stderr if it fails. fn's module is re-run from its file, with tests/ importable."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.dirname(__file__), env.get("PYTHONPATH")]))
    code = f"import runpy; runpy.run_path({fn.__code__.co_filename!r})[{fn.__name__!r}](*{args!r})"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode:
        raise RuntimeError(f"{fn.__name__}{args!r} failed without the interpreter:\n{proc.stderr[-5000:]}")
