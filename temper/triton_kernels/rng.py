"""Counter-based uniforms: u = hash(seed, offset, index), bit-identical in torch and Triton.

Why counter-based: a sequence's random draws then depend only on (its seed, its position,
the vocabulary index), never on which other sequences share the batch, so per-request seeds
are reproducible under continuous batching, and the Triton kernel can regenerate the very
same numbers inside its vocabulary loop without reading a noise tensor from memory.

The mixer is Chris Wellons' `lowbias32` on uint32, emulated in int64 here (masking after
every step; multiplies split in 16-bit halves so nothing overflows int64). The `*_tl` functions
at the bottom are the same hash as Triton device functions on native uint32 (wrapping multiply,
logical shifts), for kernels to call; they are tested bit for bit against the torch versions.
"""

from __future__ import annotations

import torch

from temper.triton_kernels._triton import jit, tl

M32 = 0xFFFFFFFF
C1 = 0x7FEB352D
C2 = 0x846CA68B
GOLDEN = 0x9E3779B9
IDX_SALT = 0x632BE5AB


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2**32 for x in [0, 2**32) held in int64."""
    lo = x * (c & 0xFFFF)
    hi = ((x * (c >> 16)) & 0xFFFF) << 16
    return (lo + hi) & M32


def lowbias32(x: torch.Tensor) -> torch.Tensor:
    x = x & M32
    x = x ^ (x >> 16)
    x = _mul32(x, C1)
    x = x ^ (x >> 15)
    x = _mul32(x, C2)
    x = x ^ (x >> 16)
    return x


def row_key(seed: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Per-row 32-bit key from a 64-bit seed and a step offset. seed, offset: [B] int64."""
    seed = seed.to(torch.int64)
    lo = seed & M32
    hi = (seed >> 32) & M32
    k = lowbias32(lo ^ lowbias32((hi + GOLDEN) & M32))
    return lowbias32(k ^ lowbias32(offset.to(torch.int64) & M32))


def uniform(seed: torch.Tensor, offset: torch.Tensor, n: int) -> torch.Tensor:
    """[B] seeds and offsets → [B, n] float32 uniforms in (0, 1), 23 random bits each."""
    key = row_key(seed, offset)[:, None]  # [B, 1]
    idx = torch.arange(n, dtype=torch.int64, device=seed.device)[None, :]  # [1, n]
    h = lowbias32(key ^ lowbias32((idx + IDX_SALT) & M32))
    return unit_float(h)


def unit_float(h: torch.Tensor) -> torch.Tensor:
    """32-bit hashes → float32 in the OPEN interval (0, 1): the top 23 bits plus one half,
    over 2**23, i.e. [2**-24, 1 − 2**-24], every value exact in float32. (24 bits would not
    do: float32 spacing is 1 at 2**23..2**24, so (2**24 − 1) + 0.5 rounds to 2**24 and u = 1.0,
    whose Gumbel noise is +inf: that index would win even where top-k / top-p masks it out.)"""
    return ((h >> 9).to(torch.float32) + 0.5) * (1.0 / 8388608.0)


def gumbel(seed: torch.Tensor, offset: torch.Tensor, n: int) -> torch.Tensor:
    """[B, n] standard Gumbel noise: argmax(x + g) draws from softmax(x)."""
    return -torch.log(-torch.log(uniform(seed, offset, n)))


# --- Triton device functions (the same numbers; Triton kernels cannot read Python globals, so
# --- the constants C1, C2, GOLDEN, IDX_SALT are spelled out)


@jit
def lowbias32_tl(x):
    """x: uint32 tensor → uint32 tensor (multiplies wrap mod 2**32, shifts are logical)."""
    x = x ^ (x >> 16)
    x = x * 0x7FEB352D
    x = x ^ (x >> 15)
    x = x * 0x846CA68B
    x = x ^ (x >> 16)
    return x


@jit
def row_key_tl(seed, offset):
    """`row_key` for int64 scalars seed, offset → uint32 key (truncation keeps the low 32 bits,
    i.e. `& M32`; an arithmetic `>> 32` then truncation gives the high word, sign or not)."""
    lo = seed.to(tl.uint32)
    hi = (seed >> 32).to(tl.uint32)
    k = lowbias32_tl(lo ^ lowbias32_tl(hi + 0x9E3779B9))
    return lowbias32_tl(k ^ lowbias32_tl(offset.to(tl.uint32)))


@jit
def uniform_tl(key, idx):
    """`uniform` for a uint32 key and int32 indices idx [BLOCK] → float32 [BLOCK] in (0, 1)."""
    h = lowbias32_tl(key ^ lowbias32_tl((idx + 0x632BE5AB).to(tl.uint32)))
    return ((h >> 9).to(tl.float32) + 0.5) * (1.0 / 8388608.0)  # see unit_float
