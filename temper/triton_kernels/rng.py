"""Counter-based uniforms: u = hash(seed, offset, index), bit-identical in torch and Triton.

Why counter-based: a sequence's random draws then depend only on (its seed, its position,
the vocabulary index), never on which other sequences share the batch, so per-request seeds
are reproducible under continuous batching, and the Triton kernel can regenerate the very
same numbers inside its vocabulary loop without reading a noise tensor from memory.

The mixer is Chris Wellons' `lowbias32` on uint32, emulated in int64 here (masking after
every step; multiplies split in 16-bit halves so nothing overflows int64).
"""

from __future__ import annotations

import torch

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
    """[B] seeds and offsets → [B, n] float32 uniforms in (0, 1), 24 random bits each."""
    key = row_key(seed, offset)[:, None]  # [B, 1]
    idx = torch.arange(n, dtype=torch.int64, device=seed.device)[None, :]  # [1, n]
    h = lowbias32(key ^ lowbias32((idx + IDX_SALT) & M32))
    return ((h >> 8).to(torch.float32) + 0.5) * (1.0 / 16777216.0)


def gumbel(seed: torch.Tensor, offset: torch.Tensor, n: int) -> torch.Tensor:
    """[B, n] standard Gumbel noise: argmax(x + g) draws from softmax(x)."""
    return -torch.log(-torch.log(uniform(seed, offset, n)))
