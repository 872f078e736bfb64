"""Toy models and distribution helpers shared by the exactness tests (test-only code)."""

from __future__ import annotations

from collections.abc import Mapping

from temper.decoding.engines.toy import ToyModel


def paper_toy() -> ToyModel:
    """A two-token example in the spirit of the paper's §4.1: over {a, b}, p(a)=.4 and a is
    always followed by b; p(b)=.6 followed by a or b evenly. So p(ab)=.4, p(ba)=p(bb)=.3. Under
    α=2 the target puts .47 on responses starting with `a`; temperature 1/2 only .31, because
    it squares the *sum* over futures of `b` rather than summing squares. Use max_len=2."""
    a, b = 0, 1
    return ToyModel(
        vocab_size=3,
        table={(): [0.4, 0.6, 0.0], (a,): [0.0, 1.0, 0.0], (b,): [0.5, 0.5, 0.0]},
        prompt_len=1,
    )


# A 3-token toy (a, b, EOS), responses of at most 5 tokens. Several paths of different lengths
# are likely ("abE", "E", "baE", "bbbE"), and the b-branch spreads its mass over two futures,
# so p^α and temperature-1/α sampling disagree on the first token, as in the paper's example.
# Contexts missing from the table are uniform: every response of length ≤ 5 has mass.
BRANCHY = {
    (): [0.36, 0.34, 0.30],
    (0,): [0.02, 0.94, 0.04],
    (0, 1): [0.03, 0.03, 0.94],
    (1,): [0.45, 0.45, 0.10],
    (1, 0): [0.03, 0.03, 0.94],
    (1, 1): [0.03, 0.94, 0.03],
    (1, 1, 1): [0.03, 0.03, 0.94],
}


def branchy() -> ToyModel:
    """The branchy toy above; prompt (0,), max_tokens 5."""
    return ToyModel(vocab_size=3, table=BRANCHY, prompt_len=1)


# The hard case (/work/notes/lookahead.md §5): V = 4 (a, b, c, EOS), responses of at most
# 3 tokens, α = 4. `a` is unlikely at the root but is almost surely followed by EOS, so the short
# answer "aE" carries 0.18 of p^α while the tempered proposal draws it with probability 0.0004
# (ratio ≈ 456); `b` is likely but its futures are spread out. Missing contexts are uniform.
A, B, C, E = 0, 1, 2, 3
RARE = {
    (): [0.115, 0.815, 0.060, 0.010],
    (A,): [0.004, 0.003, 0.003, 0.990],
    (B,): [0.40, 0.33, 0.25, 0.02],
    (B, A): [0.45, 0.30, 0.20, 0.05],
    (B, B): [0.30, 0.30, 0.30, 0.10],
    (B, C): [0.40, 0.30, 0.20, 0.10],
    (C,): [0.30, 0.30, 0.30, 0.10],
}


def rare_toy() -> ToyModel:
    """The rare-short-answer toy above; prompt (0,), use max_tokens 3 and α = 4."""
    return ToyModel(vocab_size=4, table=RARE, prompt_len=1)


def tv_distance(p: Mapping[tuple, float], q: Mapping[tuple, float]) -> float:
    """Total-variation distance between two distributions given as dicts."""
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q))

