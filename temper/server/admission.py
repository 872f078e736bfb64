"""Admission: how many requests may be in flight, by count and by their summed worst-case
tokens (each request's cost, computed before it runs); beyond either, 429 with Retry-After."""

from __future__ import annotations

from temper.server.errors import queue_full


class Slot:
    """One request's place in flight and its cost; released exactly once."""

    def __init__(self, admission: Admission, cost: int):
        self._admission: Admission | None = admission
        self.cost = cost

    def release(self) -> None:
        if self._admission is not None:
            self._admission.in_flight -= 1
            self._admission.tokens -= self.cost
            self._admission = None


class Admission:
    """Requests in flight, bounded by count (`limit`) and by their summed worst-case tokens
    (`token_limit`; a request alone is always admitted); beyond either, 429 with Retry-After."""

    def __init__(self, limit: int, retry_after: int, token_limit: int | None = None):
        self.limit = limit
        self.retry_after = retry_after
        self.token_limit = token_limit
        self.in_flight = 0
        self.tokens = 0  # summed cost of the requests in flight

    def enter(self, cost: int = 0) -> Slot:
        over_tokens = self.token_limit is not None and self.in_flight and self.tokens + cost > self.token_limit
        if self.in_flight >= self.limit or over_tokens:
            raise queue_full(self.limit, self.retry_after, self.token_limit if over_tokens else None)
        self.in_flight += 1
        self.tokens += cost
        return Slot(self, cost)
