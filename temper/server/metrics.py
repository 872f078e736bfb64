"""Prometheus metrics in the text exposition format (0.0.4), written by hand: counters and
histograms the request paths update, plus gauges read from the engines at scrape time.

One `Metrics` object per app (on app.state); updates happen on the event loop only, so no
locks. Not a general client library: just the families /metrics serves.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

# name -> (type, help)
FAMILIES: dict[str, tuple[str, str]] = {
    "temper_http_requests_total": ("counter", "HTTP requests by route and status code."),
    "temper_requests_total": ("counter", "Generation and scoring requests by model, strategy and status code."),
    "temper_tokens_total": ("counter", "Tokens by model, strategy and kind (prompt | completion)."),
    "temper_request_seconds": ("histogram", "Request latency, arrival to last byte, by model and strategy."),
    "temper_time_to_first_token_seconds": ("histogram", "Streaming: arrival to first text, by model and strategy."),
    "temper_queue_depth": ("gauge", "Generation requests in flight (admitted, running or waiting)."),
    "temper_queue_limit": ("gauge", "Most generation requests in flight before 429s (--max-queue)."),
    "temper_engine_sequences": ("gauge", "Sequences waiting or running in the engine, by model."),
    "temper_prefix_cache_hit_rate": ("gauge", "Share of prefix tokens served from the KV prefix cache, by model."),
    "temper_engine_forward_passes_total": ("counter", "Model forward calls, by model."),
    "temper_engine_forward_tokens_total": ("counter", "Tokens run through the model (prefill + decode), by model."),
    "temper_engine_generated_tokens_total": ("counter", "Tokens sampled by the engine, by model."),
}

Labels = tuple[tuple[str, str], ...]


def _labels(labels: Mapping[str, Any]) -> Labels:
    return tuple((k, str(v)) for k, v in labels.items())


def _fmt_labels(labels: Labels, extra: tuple[tuple[str, str], ...] = ()) -> str:
    items = labels + extra
    if not items:
        return ""
    esc = lambda v: v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in items) + "}"


def _fmt_value(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v)) if not float(v).is_integer() else str(int(v))


@dataclass(slots=True)
class _Histogram:
    counts: list[int]
    total: float = 0.0
    n: int = 0


class Metrics:
    def __init__(self) -> None:
        self._samples: dict[str, dict[Labels, float]] = {}
        self._hists: dict[str, dict[Labels, _Histogram]] = {}

    def inc(self, name: str, labels: Mapping[str, Any], value: float = 1.0) -> None:
        series = self._samples.setdefault(name, {})
        key = _labels(labels)
        series[key] = series.get(key, 0.0) + value

    def observe(self, name: str, labels: Mapping[str, Any], value: float) -> None:
        series = self._hists.setdefault(name, {})
        h = series.setdefault(_labels(labels), _Histogram([0] * len(LATENCY_BUCKETS)))
        for i, bound in enumerate(LATENCY_BUCKETS):
            if value <= bound:
                h.counts[i] += 1
        h.total += value
        h.n += 1

    def value(self, name: str, labels: Mapping[str, Any]) -> float:
        return self._samples.get(name, {}).get(_labels(labels), 0.0)

    def render(self, engines: Mapping[str, Any], in_flight: int, limit: int) -> str:
        gauges: dict[str, dict[Labels, float]] = {
            "temper_queue_depth": {(): in_flight},
            "temper_queue_limit": {(): limit},
        }
        for name, engine in engines.items():
            key = (("model", name),)
            stats = engine.stats
            gauges.setdefault("temper_prefix_cache_hit_rate", {})[key] = stats.prefix_hit_rate
            gauges.setdefault("temper_engine_forward_passes_total", {})[key] = stats.forward_passes
            gauges.setdefault("temper_engine_forward_tokens_total", {})[key] = stats.forward_tokens
            gauges.setdefault("temper_engine_generated_tokens_total", {})[key] = stats.generated_tokens
            depth = getattr(engine, "queue_depth", None)
            if depth is not None:
                gauges.setdefault("temper_engine_sequences", {})[key] = depth
        lines: list[str] = []
        for name, (kind, help_text) in FAMILIES.items():
            series = {**self._samples.get(name, {}), **gauges.get(name, {})}
            hists = self._hists.get(name, {})
            if not series and not hists:
                continue
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
            for labels, v in sorted(series.items()):
                lines.append(f"{name}{_fmt_labels(labels)} {_fmt_value(v)}")
            for labels, h in sorted(hists.items(), key=lambda kv: kv[0]):
                for bound, count in zip(LATENCY_BUCKETS, h.counts, strict=True):
                    lines.append(f"{name}_bucket{_fmt_labels(labels, (('le', repr(bound)),))} {count}")
                lines.append(f"{name}_bucket{_fmt_labels(labels, (('le', '+Inf'),))} {h.n}")
                lines.append(f"{name}_sum{_fmt_labels(labels)} {_fmt_value(h.total)}")
                lines.append(f"{name}_count{_fmt_labels(labels)} {h.n}")
        return "\n".join(lines) + "\n"


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
            labels = {"model": self.model, "strategy": self.strategy}
            self.metrics.observe("temper_time_to_first_token_seconds", labels, self.first_token_at - self.started)

    def finish(self, status: int) -> None:
        if self.done:
            return
        self.done = True
        labels = {"model": self.model, "strategy": self.strategy}
        m = self.metrics
        m.inc("temper_requests_total", {**labels, "status": status})
        for kind, count in (("prompt", self.prompt_tokens), ("completion", self.completion_tokens)):
            if count:
                m.inc("temper_tokens_total", {**labels, "kind": kind}, count)
        m.observe("temper_request_seconds", labels, time.perf_counter() - self.started)


KNOWN_ROUTES = (
    "/v1/models",
    "/v1/completions",
    "/v1/chat/completions",
    "/v1/logprobs",
    "/tokenize",
    "/detokenize",
    "/health",
    "/metrics",
)


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
            self.metrics.inc("temper_http_requests_total", {"route": route, "status": status["code"]})
