"""Prometheus metrics through prometheus_client (what vLLM uses): counters and histograms the
request paths update, plus gauges and counters read from the engines and the runner at scrape
time by a collector.

One `Metrics` object per app, with its own registry (two apps in one process, as in tests,
never share series); updates happen on the event loop only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from temper.server.errors import as_api_error

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST

KNOWN_ROUTES = (
    "/v1/models",
    "/v1/completions",
    "/v1/chat/completions",
    "/v1/logprobs",
    "/tokenize",
    "/detokenize",
    "/health",
    "/metrics",
    "/get_world_size",
    "/reset_prefix_cache",
    "/pause",
    "/resume",
    "/is_paused",
    "/server_info",
    "/weight_info",
    "/update_weights_from_disk",
)


class EngineCollector(Collector):
    """What the engines and the runner know, read at scrape time."""

    def __init__(self, engines: Callable[[], Mapping[str, Any]], queue: Callable[[], tuple[int, int]]):
        self.engines = engines
        self.queue = queue

    def collect(self) -> Iterator:
        depth, limit = self.queue()
        yield GaugeMetricFamily(
            "temper_queue_depth", "Generation requests in flight (admitted, running or waiting).", value=depth
        )
        yield GaugeMetricFamily(
            "temper_queue_limit", "Most generation requests in flight before 429s (--max-queue).", value=limit
        )
        seqs = GaugeMetricFamily(
            "temper_engine_sequences", "Sequences waiting or running in the engine, by model.", labels=["model"]
        )
        hit = GaugeMetricFamily(
            "temper_prefix_cache_hit_rate",
            "Share of prefix tokens served from the KV prefix cache, by model.",
            labels=["model"],
        )
        counters = {
            "forward_passes": CounterMetricFamily(
                "temper_engine_forward_passes", "Model forward calls, by model.", labels=["model"]
            ),
            "forward_tokens": CounterMetricFamily(
                "temper_engine_forward_tokens",
                "Tokens run through the model (prefill + decode), by model.",
                labels=["model"],
            ),
            "generated_tokens": CounterMetricFamily(
                "temper_engine_generated_tokens", "Tokens sampled by the engine, by model.", labels=["model"]
            ),
        }
        for name, engine in self.engines().items():
            stats = engine.stats
            hit.add_metric([name], stats.prefix_hit_rate)
            for attr, family in counters.items():
                family.add_metric([name], getattr(stats, attr))
            depth = getattr(engine, "queue_depth", None)
            if depth is not None:
                seqs.add_metric([name], depth)
        yield seqs
        yield hit
        yield from counters.values()


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http = Counter(
            "temper_http_requests", "HTTP requests by route and status code.", ["route", "status"], registry=r
        )
        self.requests = Counter(
            "temper_requests",
            "Generation and scoring requests by model, strategy and status code.",
            ["model", "strategy", "status"],
            registry=r,
        )
        self.tokens = Counter(
            "temper_tokens",
            "Tokens by model, strategy and kind (prompt | completion).",
            ["model", "strategy", "kind"],
            registry=r,
        )
        self.latency = Histogram(
            "temper_request_seconds",
            "Request latency, arrival to last byte, by model and strategy.",
            ["model", "strategy"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "temper_time_to_first_token_seconds",
            "Streaming: arrival to first text, by model and strategy.",
            ["model", "strategy"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

    def watch(self, engines: Callable[[], Mapping[str, Any]], queue: Callable[[], tuple[int, int]]) -> None:
        """Read the engines' counters and the queue at every scrape."""
        self.registry.register(EngineCollector(engines, queue))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def record(self) -> RequestRecord:
        return RequestRecord(self)


@dataclass(slots=True)
class RequestRecord:
    """One request's contribution to the metrics, written once when it ends (or streams out)."""

    metrics: Metrics
    model: str = ""
    strategy: str = ""
    started: float = field(default_factory=time.perf_counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    first_token_at: float | None = None
    done: bool = False

    def count(self, usage: Mapping[str, int]) -> None:
        """Take the token counts of the response's `usage` field."""
        self.prompt_tokens = usage["prompt_tokens"]
        self.completion_tokens = usage["completion_tokens"]

    def first_token(self) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
            self.metrics.ttft.labels(self.model, self.strategy).observe(self.first_token_at - self.started)

    def finish(self, status: int) -> None:
        if self.done:
            return
        self.done = True
        m = self.metrics
        m.requests.labels(self.model, self.strategy, str(status)).inc()
        for kind, count in (("prompt", self.prompt_tokens), ("completion", self.completion_tokens)):
            if count:
                m.tokens.labels(self.model, self.strategy, kind).inc(count)
        m.latency.labels(self.model, self.strategy).observe(time.perf_counter() - self.started)

    @contextmanager
    def failures(self) -> Iterator[RequestRecord]:
        """Count a request that fails with the status its error will get."""
        try:
            yield self
        except Exception as exc:
            self.finish(as_api_error(exc).status)
            raise


class HTTPMetricsMiddleware:
    """Pure ASGI middleware counting responses by route and status (streaming untouched)."""

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        route = path if path in KNOWN_ROUTES else "other"
        status = {"code": 500}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.http.labels(route, str(status["code"])).inc()
