"""Shared Triton plumbing for `temper.triton_kernels`: optional import, `jit`, dispatch rule.

What this is: the few things every kernel module needs and that must behave the same in all of
them —
  * `triton` / `tl` imported if possible (None otherwise), so `import temper.triton_kernels`
    never needs Triton and the torch twins are always available;
  * `jit`: `triton.jit`, or the identity without Triton (then nothing launches the kernels);
  * `use_triton(*tensors)`: the dispatch rule (CUDA tensors, Triton importable, interpreter off).
(Compiling a kernel ahead of time for a GPU architecture is a test tool: tests/kernel_helpers.py.)

What this is not: a kernel library, an autotuner, or a switch between compiled and interpreted
kernels. Triton's own rule applies: `triton.jit` builds an interpreted kernel iff
TRITON_INTERPRET=1 when the kernel module is imported, so the mode is chosen per process, before
anything imports Triton (tests/conftest.py turns the interpreter on when there is no CUDA).
"""

from __future__ import annotations

import os

import torch

try:  # Triton is optional: twins must keep working without it.
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except Exception:  # ImportError, or a broken install raising at import time
    triton = None
    tl = None
    HAVE_TRITON = False

jit = triton.jit if HAVE_TRITON else (lambda fn: fn)

__all__ = ["HAVE_TRITON", "interpreting", "jit", "next_pow2", "require_launchable", "tl", "triton", "use_triton"]


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    if HAVE_TRITON:
        try:
            return bool(triton.knobs.runtime.interpret)
        except AttributeError:  # older Triton without knobs
            pass
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def use_triton(*tensors: torch.Tensor) -> bool:
    """The dispatch rule: kernels only for CUDA tensors, with Triton importable and the
    interpreter off (the interpreter is a testing tool; tests call `*_triton` directly)."""
    return all(t.is_cuda for t in tensors) and HAVE_TRITON and not interpreting()


def require_launchable(t: torch.Tensor, name: str) -> None:
    """Raise a clear error instead of an obscure driver failure when a kernel cannot run."""
    if not HAVE_TRITON:
        raise RuntimeError(f"{name}: Triton is not installed; use the torch twin")
    if not (t.is_cuda or interpreting()):
        raise RuntimeError(f"{name}: needs CUDA tensors (or TRITON_INTERPRET=1 for CPU testing)")


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()
