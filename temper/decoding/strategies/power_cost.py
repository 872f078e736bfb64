"""What a power request may cost, known before it runs: the most tokens it can generate (every
proposal, particle, rollout and candidate included) and the most sequences it keeps in
flight at once. The server admits requests by the first and refuses with a 400 on the second.

The counts are exact worst cases of the algorithms as written (tests/test_power_cost.py
checks actual ≤ cost on toys, and equality where the worst case is forced):
  * one position decoded with look-ahead costs 1 token (the engine's draw at that context,
    which is either kept or replaced by a candidate) plus at most K·M·h rollout tokens,
    h = min(H, T − j − 1) at response position j (rollouts never run past T);
  * an MH move at cut i re-decodes positions i..t_k−1; the cut's own position reuses the
    stored r (no rollouts), so a move costs at most t_k tempered tokens, or
    1 + Σ_{j=1}^{t_k−1} (1 + K·M·h_j) with look-ahead (the worst cut is i = 0);
  * the paper's block sampler: per block of b tokens starting at s, L candidate blocks
    (L·b tokens) and K·M rollouts of at most min(H, T − s − b) tokens.
"""

from __future__ import annotations

import numpy as np

from temper.decoding.errors import ParamError
from temper.decoding.power_math import block_lengths
from temper.decoding.strategies.power_lookahead import LookaheadConfig
from temper.decoding.strategies.power_params import PowerParams


def positions_cost(la: LookaheadConfig | None, T: int, start: int, end: int) -> int:
    """Most tokens generated to decode response positions [start, end) once."""
    if la is None:
        return max(0, end - start)
    j = np.arange(start, end, dtype=np.int64)
    return int(np.sum(1 + la.k * la.m * np.minimum(la.h, np.maximum(T - j - 1, 0))))


def mh_cost(p: PowerParams, la: LookaheadConfig | None, T: int) -> int:
    """One chain: its extensions (positions 0..T−1 once) and every move at its worst cut."""
    moves = sum(t if la is None else 1 + positions_cost(la, T, 1, t) for t in block_lengths(T, p.block_size))
    return positions_cost(la, T, 0, T) + p.mcmc_steps * p.proposals * moves


def sampler_cost(p: PowerParams, la: LookaheadConfig, T: int) -> int:
    """One response of the paper's sampler: token level (block_size 1) or by blocks."""
    if p.block_size == 1:
        return positions_cost(la, T, 0, T)
    total = 0
    for s in range(0, T, p.block_size):
        b = min(p.block_size, T - s)
        total += p.lookahead_candidates * b + la.k * la.m * min(la.h, T - s - b)
    return total


def power_cost(p: PowerParams, n: int, T: int) -> int:
    """Worst-case generated tokens of a whole request: n chains / systems / responses."""
    la = p.lookahead(T)
    if p.method == "smc":
        return n * p.particles * positions_cost(la, T, 0, T)
    if p.method == "mh":
        return n * mh_cost(p, la, T)
    return n * sampler_cost(p, la, T)


def check_in_flight(p: PowerParams, n: int, T: int, limit: int) -> None:
    """400 naming the knob when a request would keep more than `limit` sequences in flight:
    n chains × proposals (or systems × particles), times K·M rollouts at a gated position."""
    width, field = (p.particles, "particles") if p.method == "smc" else (p.proposals, "proposals")
    if p.method == "lookahead":
        width, field = 1, "n"
    base = n * width
    if base > limit:
        raise ParamError(
            f"n: {n} × {field} {width} = {base} sequences in flight exceed this server's limit of {limit} per request",
            "n",
        )
    la = p.lookahead(T)
    if la is None:
        return
    if p.method == "lookahead" and p.block_size > 1 and base * p.lookahead_candidates > limit:
        total = base * p.lookahead_candidates
        raise ParamError(
            f"lookahead_candidates: n {n} × lookahead_candidates {p.lookahead_candidates} = {total} sequences in "
            f"flight exceed this server's limit of {limit} per request",
            "decoding.lookahead_candidates",
        )
    total = base * la.k * la.m
    if total > limit:
        who = f"n {n}" + ("" if width == 1 else f" × {field} {width}")
        raise ParamError(
            f"lookahead_m: {who} × lookahead_k {la.k} × lookahead_m {la.m} = {total} sequences in flight exceed "
            f"this server's limit of {limit} per request",
            "decoding.lookahead_m",
        )
