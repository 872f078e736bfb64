"""Server benchmark: throughput and latency percentiles of `temper serve` on the default model,
for 1, 8 and 32 concurrent clients, plain sampling vs power sampling, side by side in one run.

The server runs in its own process (exactly what `temper serve` runs); clients are asyncio
tasks in this one, each sending chat requests back to back through the OpenAI-shaped API.
Every (strategy, concurrency) cell uses the same seeds, so both strategies answer the same
prompts. "answer tokens" are the tokens returned; "generated tokens" are all the tokens the
engine drew for them (usage.completion_tokens: power's rejected proposals included).

    python -m bench.server [--max-tokens 32 --requests 64 --levels 1,8,32]  → bench/out/server.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

OUT = Path(__file__).parent / "out"

STRATEGIES = {
    "plain": None,
    "power_mh": {"strategy": "power", "method": "mh", "alpha": 4.0, "block_size": 8, "mcmc_steps": 2},
    "power_smc": {"strategy": "power", "method": "smc", "alpha": 4.0, "particles": 4, "resample_every": 8},
}
QUESTIONS = ["What is 17 * 23?", "Name a prime above 100.", "Summarise the water cycle.", "Say hello in French."]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    port: int, model: str | None, device: str, cpu_threads: int, extra: list[str] = ()
) -> subprocess.Popen:
    """`temper serve` in its own process, once /health answers (its stderr on a pipe)."""
    cmd = [
        sys.executable,
        "-m",
        "temper.server.cli",
        "serve",
        "--port",
        str(port),
        "--device",
        device,
        "--log-level",
        "warning",
        "--max-queue",
        "1024",
    ]
    if model:
        cmd += ["--model", model]
    if cpu_threads > 0:
        cmd += ["--cpu-threads", str(cpu_threads)]
    cmd += list(extra)
    env = {**os.environ, "TEMPER_API_KEY": "", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("server did not start within 120 s")
        time.sleep(0.2)


async def run_cell(url: str, decoding: dict | None, clients: int, requests: int, max_tokens: int) -> dict:
    """`clients` concurrent clients share `requests` chat requests (seed = request number)."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    latencies: list[float] = []
    answer_tokens = generated_tokens = 0

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal answer_tokens, generated_tokens
        while not queue.empty():
            i = queue.get_nowait()
            body = {
                "model": None,
                "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                "max_tokens": max_tokens,
                "seed": i,
                "logprobs": True,  # one entry per answer token: counts them exactly, at no engine cost
            }
            if decoding is not None:
                body["decoding"] = decoding
            t = time.perf_counter()
            r = await http.post(f"{url}/v1/chat/completions", json=body)
            latencies.append(time.perf_counter() - t)
            r.raise_for_status()
            data = r.json()
            generated_tokens += data["usage"]["completion_tokens"]
            answer_tokens += len(data["choices"][0]["logprobs"]["content"])

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - t0
    lat = np.array(latencies)
    return {
        "clients": clients,
        "requests": requests,
        "wall_s": wall,
        "requests_per_s": requests / wall,
        "answer_tokens_per_s": answer_tokens / wall,
        "generated_tokens_per_s": generated_tokens / wall,
        "latency_s": {p: float(np.percentile(lat, q)) for p, q in (("p50", 50), ("p90", 90), ("p99", 99))},
        "latency_mean_s": float(lat.mean()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="NAME=PATH; default: the bundled model")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--cpu-threads", type=int, default=1, help="temper serve --cpu-threads (0: torch's default)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--requests", type=int, default=64, help="requests per cell (at least the client count)")
    ap.add_argument("--levels", default="1,8,32")
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    a = ap.parse_args()
    levels = [int(x) for x in a.levels.split(",")]
    names = a.strategies.split(",")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(port, a.model, a.device, a.cpu_threads)
    try:
        asyncio.run(run_cell(url, None, 2, 4, a.max_tokens))  # warm-up
        cells = []
        print(
            f"{'strategy':10s} {'clients':>7s} {'req/s':>8s} {'ans tok/s':>10s} {'gen tok/s':>10s} "
            f"{'p50 s':>7s} {'p90 s':>7s} {'p99 s':>7s}"
        )
        for clients in levels:
            for name in names:
                n = max(a.requests, clients)
                cell = {"strategy": name, **asyncio.run(run_cell(url, STRATEGIES[name], clients, n, a.max_tokens))}
                cells.append(cell)
                lat = cell["latency_s"]
                print(
                    f"{name:10s} {clients:7d} {cell['requests_per_s']:8.2f} {cell['answer_tokens_per_s']:10.1f} "
                    f"{cell['generated_tokens_per_s']:10.1f} {lat['p50']:7.3f} {lat['p90']:7.3f} {lat['p99']:7.3f}"
                )
        metrics = httpx.get(f"{url}/metrics").text
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    hit = [line for line in metrics.splitlines() if line.startswith("temper_prefix_cache_hit_rate")]
    result = {
        "model": a.model or "the bundled model",
        "device": a.device,
        "cpu_threads": a.cpu_threads,
        "max_tokens": a.max_tokens,
        "strategies": {n: STRATEGIES[n] for n in names},
        "cells": cells,
        "prefix_cache_hit_rate": hit,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "server.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {OUT / 'server.json'}")


if __name__ == "__main__":
    main()
