"""Stop strings over token streams: detect them while sampling, cut the text at the first.

Stop strings are text, tokens are not: a stop string may span tokens, so we decode a short
window of recent tokens on each step, and cut the full text once at the end.
"""

from __future__ import annotations

from collections.abc import Sequence

from temper.decoding.engine import Tokenizer


class StopWatch:
    """Incremental stop-string detector for one token stream."""

    def __init__(self, tokenizer: Tokenizer, stops: Sequence[str]):
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        # a token carries at least one byte, so this many tokens cover any stop string
        self.window = max((len(s.encode()) for s in self.stops), default=0) + 2
        self.tokens: list[int] = []

    def push(self, token: int) -> bool:
        """Append a token; True when a stop string has appeared."""
        self.tokens.append(token)
        if not self.stops:
            return False
        tail = self.tokenizer.decode(self.tokens[-self.window :])
        return any(s in tail for s in self.stops)


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """The text before the earliest stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
