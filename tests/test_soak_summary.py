"""bench/soak.py's summary: latency percentiles per strategy, statuses, and the RSS slopes that
tell a leak (a steady slope) from a cache filling its budget (a rise, then flat)."""

from __future__ import annotations

import pytest

from bench.soak import summarise


def memory(rate_mb_per_min, fill_until_s: float = 0.0, seconds: int = 600):
    """RSS sampled every 3 s: rising 300 MB/min until `fill_until_s`, then `rate_mb_per_min`."""
    out = []
    for t in range(0, seconds + 1, 3):
        fill = 500 + 300 * min(t, fill_until_s) / 60
        out.append((float(t), fill + rate_mb_per_min * max(0.0, t - fill_until_s) / 60))
    return out


def test_a_filling_cache_is_not_a_leak_but_a_steady_rise_is():
    log = [("sample", 200, 0.0, 0.1 * i) for i in range(1, 101)] + [("power_mh", 429, 0.0, 0.01)]
    filling = summarise(log, memory(0.0, fill_until_s=120), 600, warmup=60)
    assert filling["rss_slope_mb_per_min_after_warmup"] > 10  # the fill leaks into the warm-up window
    assert filling["rss_slope_mb_per_min_second_half"] == pytest.approx(0.0, abs=1e-6)
    leaking = summarise(log, memory(5.0), 600, warmup=60)
    assert leaking["rss_slope_mb_per_min_second_half"] == pytest.approx(5.0, rel=1e-6)
    assert filling["status"] == {"200": 100, "429": 1} and filling["requests"] == 101
    lat = filling["latency_s"]["sample"]
    assert lat["n"] == 100 and lat["p50"] == pytest.approx(5.05) and "power_mh" not in filling["latency_s"]
    assert filling["rss_mb"]["start"] == 500 and len(filling["rss_mb_series"]) == 201
