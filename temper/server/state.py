"""ServerState: everything app-wide the routes read, built once at start-up (app.state.temper).

Requests never write to it beyond the runner's count of slots in flight and the metrics.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from temper.decoding.engine import Engine
from temper.decoding.strategies.base import StrategyOptions
from temper.server.config import ServerConfig
from temper.server.errors import model_not_found
from temper.server.metrics import Metrics
from temper.server.prompts import Target
from temper.server.runner import Admission, Runner
from temper.server.text import TokenText
from temper.server.weights import Pause, WeightGate


@dataclass(slots=True)
class ServerState:
    config: ServerConfig
    engines: dict[str, Engine]  # by name, the default first
    options: StrategyOptions
    metrics: Metrics = field(default_factory=Metrics)
    runner: Runner = field(init=False)
    gates: dict[str, WeightGate] = field(init=False)  # per model: weight updates vs requests
    pause: Pause = field(init=False)
    token_texts: dict[str, TokenText] = field(init=False)
    started: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        c = self.config
        unknown = [name for name in c.frozen if name not in self.engines]
        if unknown:
            raise ValueError(f"frozen: no served model named {unknown[0]!r} (served: {', '.join(self.engines)})")
        self.gates = {name: WeightGate(frozen=name in c.frozen) for name in self.engines}
        self.pause = Pause()
        admission = Admission(c.max_queue, c.retry_after, c.max_queue_tokens or None)
        self.runner = Runner(admission, c.request_timeout, c.heartbeat_interval, self.gates, self.pause)
        self.token_texts = {name: TokenText(e.tokenizer) for name, e in self.engines.items()}
        self.metrics.watch(lambda: self.engines, lambda: (self.runner.in_flight, self.runner.admission.limit))

    def target(self, name: str | None) -> Target:
        """The served model a request names (404 for an unknown one) and the server's limits."""
        name, engine = self.model(name)
        c = self.config
        processed = c.logprobs_mode == "processed_logprobs"
        return Target(name, engine, self.engines, self.options, c.max_logprobs, processed, c.max_request_tokens)

    def model(self, name: str | None) -> tuple[str, Engine]:
        """A served model by name (None or "" = the default); 404 for an unknown one."""
        if not name:
            name = next(iter(self.engines))
        if name not in self.engines:
            raise model_not_found(name)
        return name, self.engines[name]
