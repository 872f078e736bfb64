"""Strategies by name: the built-ins, plus third-party ones from the `temper.strategies`
entry-point group. Requests pick a strategy by name only; they never carry code.

The table is filled once, on first use, and is read-only afterwards.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from functools import cache
from importlib.metadata import entry_points
from typing import Any

from pydantic import BaseModel

from temper.decoding.errors import ParamError
from temper.decoding.strategies.base import Strategy

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "temper.strategies"
DEFAULT_STRATEGY = "sample"  # what a request without `decoding` (or without its `strategy`) runs

# name -> "module:Class" for the strategies that ship with temper
BUILTINS = {
    "sample": "temper.decoding.strategies.sample:SampleStrategy",
    "power": "temper.decoding.strategies.power:PowerStrategy",
    "best_of_n": "temper.decoding.strategies.best_of_n:BestOfNStrategy",
    "self_consistency": "temper.decoding.strategies.self_consistency:SelfConsistencyStrategy",
    "synthesis": "temper.decoding.strategies.synthesis:SynthesisStrategy",
}


def _load(target: str) -> type[Strategy]:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


@cache
def strategies() -> Mapping[str, Strategy]:
    """Every available strategy instance by name (built-ins win over plugins of the same name)."""
    table: dict[str, Strategy] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, Strategy)):
                raise TypeError(f"{ep.value} is not a Strategy subclass")
            table[cls.name] = cls()
        except Exception as exc:  # a broken plugin must not take the server down
            log.warning("skipping strategy plugin %s: %s", ep.name, exc)
    for name, target in BUILTINS.items():
        table[name] = _load(target)()
    return table


def get_strategy(name: str) -> Strategy:
    table = strategies()
    if name not in table:
        raise ParamError(
            f"decoding.strategy: unknown strategy {name!r}; available: {', '.join(sorted(table))}",
            "decoding.strategy",
        )
    return table[name]


def parse_decoding(decoding: Mapping[str, Any] | None) -> tuple[Strategy, BaseModel]:
    """The request's `decoding` object → (strategy, validated Params). None = plain sampling."""
    if decoding is None:
        decoding = {"strategy": DEFAULT_STRATEGY}
    if not isinstance(decoding, Mapping):
        raise ParamError("decoding: must be an object", "decoding")
    raw = dict(decoding)
    name = raw.pop("strategy", DEFAULT_STRATEGY)
    if not isinstance(name, str):
        raise ParamError("decoding.strategy: must be a string", "decoding.strategy")
    strategy = get_strategy(name)
    return strategy, strategy.parse(raw)
