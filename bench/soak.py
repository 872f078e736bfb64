"""Soak benchmark: N concurrent clients mixing every strategy (streamed and not) against one
`temper serve` for a set time. Reports throughput, p50/p95/p99 latency per strategy, errors by
status, and the server's memory over time (RSS, and its slope in MB per minute after warm-up:
a leak shows as a steady positive slope), with a PNG of RSS and completed requests over time.

The server runs in its own process (started here on the default model, or `--url` plus
`--pid` for one already running); clients are asyncio tasks in this process.

    python -m bench.soak [--clients 32 --minutes 10]  → bench/out/soak.json, bench/out/soak.png
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx
import numpy as np

from bench.server import free_port, start_server

OUT = Path(__file__).parent / "out"
MIX = {
    "sample": None,
    "power_mh": {"strategy": "power", "method": "mh", "alpha": 4.0, "block_size": 8, "mcmc_steps": 2},
    "power_smc": {"strategy": "power", "method": "smc", "alpha": 4.0, "particles": 4, "resample_every": 8},
    "best_of_n": {"strategy": "best_of_n", "candidates": 3},
    "self_consistency": {"strategy": "self_consistency", "rollouts": 3},
    "synthesis": {"strategy": "synthesis", "rollouts": 2},
}
QUESTIONS = ["What is 37 + 48?", "What is 12 * 9?", "Name a prime above 100.", "Say hello in French."]


def rss_mb(pid: int) -> float:
    """Resident memory of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def one_request(client: httpx.AsyncClient, url: str, name: str, rng: random.Random, max_tokens: int) -> int:
    body = {"messages": [{"role": "user", "content": rng.choice(QUESTIONS)}], "max_tokens": max_tokens}
    if MIX[name] is not None:
        body["decoding"] = MIX[name]
    if rng.random() < 0.5:
        async with client.stream("POST", url + "/v1/chat/completions", json={**body, "stream": True}) as r:
            async for line in r.aiter_lines():
                if line.startswith("data: {") and '"error"' in line:
                    return json.loads(line[6:])["error"]["code"]
            return r.status_code
    return (await client.post(url + "/v1/chat/completions", json=body)).status_code


async def client_loop(url: str, seed: int, stop_at: float, max_tokens: int, log: list) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(timeout=600) as client:
        while time.monotonic() < stop_at:
            name = rng.choice(list(MIX))
            t0 = time.monotonic()
            try:
                status = await one_request(client, url, name, rng, max_tokens)
            except httpx.HTTPError as exc:
                status = f"transport:{type(exc).__name__}"
            log.append((name, status, t0, time.monotonic() - t0))


async def sample_memory(pid: int, stop_at: float, every: float, samples: list) -> None:
    t_start = time.monotonic()
    while time.monotonic() < stop_at:
        samples.append((time.monotonic() - t_start, rss_mb(pid)))
        await asyncio.sleep(every)


async def soak(url: str, pid: int, clients: int, seconds: float, max_tokens: int) -> tuple[list, list]:
    stop_at = time.monotonic() + seconds
    log: list = []
    memory: list = []
    tasks = [client_loop(url, i, stop_at, max_tokens, log) for i in range(clients)]
    await asyncio.gather(sample_memory(pid, stop_at, max(1.0, seconds / 200), memory), *tasks)
    return log, memory


def summarise(log: list, memory: list, seconds: float, warmup: float) -> dict:
    by: dict[str, list[float]] = defaultdict(list)
    for name, status, _, dt in log:
        if status == 200:
            by[name].append(dt)
    pct = lambda xs, q: float(np.percentile(xs, q)) if xs else None
    t = np.array([m[0] for m in memory])
    mb = np.array([m[1] for m in memory])
    late = t >= warmup
    slope = float(np.polyfit(t[late] / 60, mb[late], 1)[0]) if late.sum() >= 3 else None
    # the prefix cache fills its budget first (about 2 minutes for the demo model under 32
    # clients), so the second half's slope is the one that tells a leak from a filling cache
    half = t >= t[-1] / 2 if len(t) else late
    half_slope = float(np.polyfit(t[half] / 60, mb[half], 1)[0]) if half.sum() >= 3 else None
    return {
        "requests": len(log),
        "throughput_rps": len(log) / seconds,
        "status": dict(Counter(str(s) for _, s, _, _ in log)),
        "latency_s": {k: {"n": len(v), "p50": pct(v, 50), "p95": pct(v, 95), "p99": pct(v, 99)} for k, v in by.items()},
        "rss_mb": {"start": float(mb[0]), "end": float(mb[-1]), "max": float(mb.max())},
        "rss_slope_mb_per_min_after_warmup": slope,
        "rss_slope_mb_per_min_second_half": half_slope,
        "rss_mb_series": [[round(float(a), 1), round(float(b), 1)] for a, b in zip(t, mb, strict=True)],
    }


def plot(log: list, memory: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot([m[0] / 60 for m in memory], [m[1] for m in memory], label="server RSS (MB)")
    ax.set_xlabel("minutes")
    ax.set_ylabel("RSS (MB)")
    t0 = min(t for _, _, t, _ in log) if log else 0
    done = sorted((t - t0 + dt) / 60 for _, s, t, dt in log)
    ax2 = ax.twinx()
    ax2.plot(done, range(1, len(done) + 1), color="tab:orange", label="requests completed")
    ax2.set_ylabel("requests completed")
    fig.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--warmup-minutes", type=float, default=1.0, help="left out of the RSS slope")
    p.add_argument("--url", help="a running server (then --pid is needed for memory)")
    p.add_argument("--pid", type=int)
    p.add_argument("--model", help="NAME=PATH to serve (default: the bundled model)")
    a = p.parse_args()
    proc = None
    if a.url is None:
        port = free_port()
        proc = start_server(port, a.model, "cpu", 0)
        url, pid = f"http://127.0.0.1:{port}", proc.pid
    else:
        url, pid = a.url.rstrip("/"), a.pid
        if pid is None:
            p.error("--url needs --pid (the server's process id, for its memory)")
    try:
        seconds = a.minutes * 60
        log, memory = asyncio.run(soak(url, pid, a.clients, seconds, a.max_tokens))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    result = {"clients": a.clients, "minutes": a.minutes, **summarise(log, memory, seconds, a.warmup_minutes * 60)}
    OUT.mkdir(exist_ok=True)
    (OUT / "soak.json").write_text(json.dumps(result, indent=2))
    plot(log, memory, OUT / "soak.png")
    print(json.dumps({k: v for k, v in result.items() if k != "rss_mb_series"}, indent=2))


if __name__ == "__main__":
    main()
