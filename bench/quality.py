"""Quality benchmark: accuracy against generated tokens for every decoding strategy, on held-out
problems of the demo task (tools/demo_data.py), measured through a real temper server over HTTP.

For each strategy (and two or three budgets of the ones that have a budget) every held-out
problem is asked once as a chat request (seed = problem index); the answer is the last
\\boxed{} of the returned text (temper.decoding.answers, the extractor the server uses), compared
exactly with the problem's answer. Reported per strategy: accuracy with a 95% Wilson interval,
generated tokens per problem (usage.completion_tokens: rejected proposals, dead particles and
every rollout included), the share of answers that open hastily ("Quick answer:"; the demo
task's trap), and the strategy's own diagnostics from the response's `decoding` field
(MH acceptance rates, SMC effective sample size and resampling counts).

The server is `temper serve` in a subprocess (or --url for one already running), so the bench
depends on nothing but the HTTP API; `--engine NAME` is passed through to `temper serve`.

    python -m bench.quality                                # full: 300 problems, all budgets
    python -m bench.quality --problems 20 --budget smoke   # about a minute
    → bench/out/quality.{json,md,png}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.server import free_port, start_server
from temper.decoding.answers import extract_answer
from temper.decoding.engines.hf import DEFAULT_MODEL_PATH
from tools.demo_data import HASTY_OPENING, TRAIN_EXAMPLES, TRAIN_SEED, examples, heldout_problems

OUT = Path(__file__).parent / "out"
ALPHA = 4.0
MAX_TOKENS = 320  # the longest careful solution of the default task is ~230 tokens


@dataclass(frozen=True)
class Config:
    """One strategy at one budget: the request's sampling fields and its `decoding` object."""

    strategy: str  # the line in the plot
    label: str  # the budget, as shown in the table
    decoding: dict | None = None
    temperature: float = 1.0
    body: dict = field(default_factory=dict)


def configs(budget: str) -> list[Config]:
    """The strategies to run; "smoke" keeps the smallest budget of each, "full" two or three."""
    full = budget == "full"
    mh_steps = (2, 5, 10) if full else (1,)
    particles = (4, 8, 16) if full else (2,)
    rollouts = (4, 8, 16) if full else (2,)
    synth = (2, 4) if full else (2,)  # the demo model learned to synthesise 2-4 attempts
    out = [
        Config("greedy", "T=0", temperature=0.0),
        Config("sample", "T=1"),
        Config("low_temp", f"T=1/{ALPHA:g}", temperature=1 / ALPHA),
    ]
    out += [Config("power_mh", f"{s} steps/block", {"strategy": "power", "method": "mh", "alpha": ALPHA,
                                                    "block_size": 64, "mcmc_steps": s}) for s in mh_steps]
    out += [Config("power_smc", f"{n} particles", {"strategy": "power", "method": "smc", "alpha": ALPHA,
                                                   "particles": n, "resample_every": 32}) for n in particles]
    out += [Config("best_of_n", f"{n} candidates", {"strategy": "best_of_n", "candidates": n}) for n in rollouts]
    out += [Config("self_consistency", f"{n} rollouts", {"strategy": "self_consistency", "rollouts": n,
                                                          "extractor": "boxed"}) for n in rollouts]
    out += [Config("synthesis", f"{n} rollouts", {"strategy": "synthesis", "rollouts": n, "extractor": "boxed"})
            for n in synth]
    return out


# ---------------------------------------------------------------- statistics


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion k/n."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, mid - half), min(1.0, mid + half))


DIAGNOSTICS = ("acceptance_rate", "final_ess", "resample_count")  # power: MH acceptance, SMC ESS


def diagnostics(decoding: dict) -> dict:
    """The exactness diagnostics a strategy reports, where it reports them."""
    return {k: decoding[k] for k in DIAGNOSTICS if isinstance(decoding.get(k), int | float)}


def summarise(cfg: Config, rows: list[dict], wall: float) -> dict:
    n = len(rows)
    k = sum(r["correct"] for r in rows)
    lo, hi = wilson(k, n)
    summary = {
        "strategy": cfg.strategy, "budget": cfg.label, "decoding": cfg.decoding, "temperature": cfg.temperature,
        "problems": n, "correct": k, "accuracy": k / n if n else 0.0, "ci95": [lo, hi],
        "tokens_per_problem": sum(r["completion_tokens"] for r in rows) / max(n, 1),
        "hasty_share": sum(r["hasty"] for r in rows) / max(n, 1),
        "no_answer_share": sum(r["answer"] is None for r in rows) / max(n, 1),
        "wall_s": wall,
    }
    for key in DIAGNOSTICS:
        vals = [r["diag"][key] for r in rows if key in r["diag"]]
        if vals:
            summary[f"mean_{key}"] = sum(vals) / len(vals)
    return summary


# ---------------------------------------------------------------- running


async def ask(http: httpx.AsyncClient, url: str, model: str | None, cfg: Config, i: int, problem) -> dict:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": problem.question}],
        "max_tokens": MAX_TOKENS,
        "temperature": cfg.temperature,
        "seed": i,
        **cfg.body,
    }
    if cfg.decoding is not None:
        body["decoding"] = cfg.decoding
    r = await http.post(f"{url}/v1/chat/completions", json=body)
    if r.status_code != 200:
        raise RuntimeError(f"{cfg.strategy} ({cfg.label}): HTTP {r.status_code}: {r.text[:500]}")
    data = r.json()
    text = data["choices"][0]["message"]["content"] or ""
    answer = extract_answer(text, "boxed")
    return {
        "i": i,
        "answer": answer,
        "correct": answer == str(problem.answer),
        "hasty": text.lstrip().startswith(HASTY_OPENING),
        "completion_tokens": data["usage"]["completion_tokens"],
        "diag": diagnostics(data.get("decoding") or {}),
    }


async def run_config(url: str, model: str | None, cfg: Config, problems: Sequence, concurrency: int) -> list[dict]:
    """Every problem once, `concurrency` requests in flight (so the engine batches them)."""
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=3600, limits=limits) as http:

        async def one(i, p):
            async with sem:
                return await ask(http, url, model, cfg, i, p)

        return await asyncio.gather(*(one(i, p) for i, p in enumerate(problems)))


def training_questions(model_dir: Path) -> set[str]:
    """Every question the model was trained on (from its training.json recipe, else the
    default recipe), synthesis examples' problems included, so none is held out by accident."""
    seed, count = TRAIN_SEED, TRAIN_EXAMPLES
    record = model_dir / "training.json"
    if record.is_file():
        cfg = json.loads(record.read_text()).get("config", {})
        seed, count = cfg.get("seed", seed), cfg.get("examples", count)
    return {ex.meta.get("question", ex.user) for ex in examples(count, seed)}


# ---------------------------------------------------------------- output


def table(summaries: list[dict]) -> str:
    head = ("| strategy | budget | accuracy | 95% CI | tokens / problem | hasty answers | diagnostics |\n"
            "|---|---|---|---|---|---|---|")
    lines = [head]
    for s in summaries:
        diag = []
        if "mean_acceptance_rate" in s:
            diag.append(f"acceptance {s['mean_acceptance_rate']:.2f}")
        if "mean_final_ess" in s:
            diag.append(f"final ESS {s['mean_final_ess']:.1f}")
        if "mean_resample_count" in s:
            diag.append(f"resamples {s['mean_resample_count']:.1f}")
        lo, hi = s["ci95"]
        lines.append(
            f"| {s['strategy']} | {s['budget']} | {s['accuracy']:.3f} | {lo:.3f}–{hi:.3f} | "
            f"{s['tokens_per_problem']:.0f} | {s['hasty_share']:.2f} | {', '.join(diag)} |"
        )
    return "\n".join(lines)


def plot(summaries: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(8, 5))
    names = list(dict.fromkeys(s["strategy"] for s in summaries))
    for name in names:
        pts = sorted((s for s in summaries if s["strategy"] == name), key=lambda s: s["tokens_per_problem"])
        x = [s["tokens_per_problem"] for s in pts]
        y = [s["accuracy"] for s in pts]
        err = [[s["accuracy"] - s["ci95"][0] for s in pts], [s["ci95"][1] - s["accuracy"] for s in pts]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=name, linestyle="-" if len(pts) > 1 else "none")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("generated tokens per problem (log scale)")
    ax.set_ylabel("accuracy (95% Wilson interval)")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------- main


def serve(a) -> tuple[str, object | None]:
    """The server's URL, and the process when this bench started it."""
    if a.url:
        return a.url.rstrip("/"), None
    extra = ["--engine", a.engine] if a.engine else []
    extra += ["--max-queue", "4096", "--request-timeout", "0"]
    port = free_port()
    try:
        proc = start_server(port, a.model, a.device, a.cpu_threads, extra)
    except RuntimeError as exc:
        sys.exit(f"quality: the server did not start: {exc}")
    return f"http://127.0.0.1:{port}", proc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--problems", type=int, default=300, help="held-out problems (default 300)")
    ap.add_argument("--budget", choices=("smoke", "full"), default="full",
                    help="full: two or three budgets per strategy; smoke: the smallest of each")
    ap.add_argument("--strategies", default="", help="comma-separated subset of the strategy names")
    ap.add_argument("--model", default=None, help="NAME=PATH for temper serve; default: the bundled demo model")
    ap.add_argument("--engine", default=None, help="passed through as temper serve --engine")
    ap.add_argument("--url", default=None, help="use a running server instead of starting one")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--cpu-threads", type=int, default=0, help="temper serve --cpu-threads (0: its default)")
    ap.add_argument("--concurrency", type=int, default=32, help="requests in flight")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args(argv)
    if a.problems < 1:
        ap.error("--problems: must be >= 1")
    cfgs = configs(a.budget)
    if a.strategies:
        wanted = set(a.strategies.split(","))
        unknown = wanted - {c.strategy for c in cfgs}
        if unknown:
            ap.error(f"--strategies: unknown {', '.join(sorted(unknown))}")
        cfgs = [c for c in cfgs if c.strategy in wanted]
    model_dir = Path(a.model.split("=", 1)[-1]) if a.model else DEFAULT_MODEL_PATH
    problems = heldout_problems(a.problems, exclude=training_questions(model_dir))
    url, proc = serve(a)
    model = a.model.split("=", 1)[0] if a.model else None
    summaries, t_all = [], time.perf_counter()
    try:
        for cfg in cfgs:
            t0 = time.perf_counter()
            rows = asyncio.run(run_config(url, model, cfg, problems, a.concurrency))
            s = summarise(cfg, rows, time.perf_counter() - t0)
            summaries.append(s)
            print(f"{cfg.strategy:17s} {cfg.label:16s} acc {s['accuracy']:.3f} [{s['ci95'][0]:.3f}, "
                  f"{s['ci95'][1]:.3f}]  tokens/problem {s['tokens_per_problem']:7.0f}  hasty {s['hasty_share']:.2f}  "
                  f"{s['wall_s']:6.0f}s", flush=True)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    a.out.mkdir(parents=True, exist_ok=True)
    title = f"demo task, {len(problems)} held-out problems, α = {ALPHA:g}"
    result = {"problems": len(problems), "budget": a.budget, "alpha": ALPHA, "max_tokens": MAX_TOKENS,
              "model": a.model or "bundled demo", "engine": a.engine or "server default",
              "wall_s": time.perf_counter() - t_all, "results": summaries}
    (a.out / "quality.json").write_text(json.dumps(result, indent=2) + "\n")
    (a.out / "quality.md").write_text(f"{title}\n\n{table(summaries)}\n")
    plot(summaries, a.out / "quality.png", title)
    print(f"\n{table(summaries)}\n\nwrote {a.out}/quality.{{json,md,png}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
