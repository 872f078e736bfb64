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


def tv_distance(p: Mapping[tuple, float], q: Mapping[tuple, float]) -> float:
    """Total-variation distance between two distributions given as dicts."""
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q))

