"""Fused sampling / MH / SMC kernels, each with a torch reference twin.

Every operation comes in three spellings: `<name>_torch` (the twin: reference semantics, runs
anywhere), `<name>_triton` (the Triton kernel: CUDA, or CPU when TRITON_INTERPRET=1 was set
before Triton was imported, as the tests do without CUDA) and `<name>` (the dispatcher: the
kernel for CUDA tensors when Triton imports and the interpreter is off, else the twin).
Importing this package never requires Triton.

The package attributes `tempered_sample`, `mh_accept` and `smc_resample` are the dispatcher
functions, which shadow the submodules of the same names: import from the submodule
(`from temper.triton_kernels.mh_accept import mh_accept_torch`), never
`import temper.triton_kernels.mh_accept as m` (that binds the function).
"""

from temper.triton_kernels._triton import HAVE_TRITON
from temper.triton_kernels.mh_accept import MHChoice, mh_accept, mh_accept_torch, mh_accept_triton
from temper.triton_kernels.smc_resample import (
    Resampled,
    smc_resample,
    smc_resample_torch,
    smc_resample_triton,
)
from temper.triton_kernels.tempered_sample import (
    TemperedSample,
    kept_mask,
    tempered_sample,
    tempered_sample_torch,
    tempered_sample_triton,
)

__all__ = [
    "HAVE_TRITON",
    "MHChoice",
    "Resampled",
    "TemperedSample",
    "kept_mask",
    "mh_accept",
    "mh_accept_torch",
    "mh_accept_triton",
    "smc_resample",
    "smc_resample_torch",
    "smc_resample_triton",
    "tempered_sample",
    "tempered_sample_torch",
    "tempered_sample_triton",
]
