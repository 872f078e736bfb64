"""`temper rollouts`: a durable rollout job from the command line (see rollout_job.py).

    temper rollouts --prompts data.jsonl --out out.jsonl --n 8 --max-tokens 512 \\
        --decoding '{"strategy": "power", "alpha": 4}' --model path/to/model
    temper rollouts ... --url http://127.0.0.1:8000 [--model-name NAME]

Exit status: 0 done; 2 bad arguments or inputs (a bad prompts line, an output file that is not
this job's), reported before anything is generated; 1 the job stopped part-way (rerun it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DESCRIPTION = """\
Generate n rollouts for every prompt of a JSONL file (one {"prompt": text | [token ids]} or
{"messages": [...]} object per line, optional "id") into a JSONL file, one line per prompt with
prompt and completion token ids, the sampled distribution's log-probs, finish reasons and the
weight version. Killed at any point, the same command finishes the job: each prompt ends up in
the output exactly once. Models run in this process (--model) or on a server (--url).
"""


def model_spec(value: str) -> tuple[str, str]:
    """--model PATH or NAME=PATH (like `temper serve --model`)."""
    name, sep, path = value.partition("=")
    if not sep:
        return Path(value).name, value
    if not name or not path:
        raise argparse.ArgumentTypeError(f"expected PATH or NAME=PATH, got {value!r}")
    return name, path


def decoding_object(value: str) -> dict:
    try:
        obj = json.loads(value)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(obj, dict):
        raise argparse.ArgumentTypeError('must be a JSON object such as {"strategy": "power", "alpha": 4}')
    return obj


def add_rollouts_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "rollouts",
        help="run (or resume) a durable rollout job",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--prompts", required=True, help="input JSONL file")
    p.add_argument("--out", required=True, help="output JSONL file (resumed when it holds this job)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--model", action="append", type=model_spec, metavar="[NAME=]PATH", help="load in-process (repeat for anchors)"
    )
    src.add_argument("--url", help="a running temper or vLLM-compatible server")
    p.add_argument(
        "--model-name", help="which model to sample from (default: the first --model, or the server's first)"
    )
    p.add_argument("--n", type=int, default=1, help="rollouts per prompt (default 1)")
    p.add_argument("--max-tokens", type=int, required=True)
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-p", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--seed", type=int, help="makes the job reproducible (a seed per prompt is derived from it)")
    p.add_argument("--stop", action="append", help="stop string (repeatable)")
    p.add_argument("--decoding", type=decoding_object, help="temper decoding object (JSON)")
    p.add_argument("--concurrency", type=int, default=16, help="prompts in flight (default 16)")
    p.add_argument("--device", default="cpu", help="in-process: cpu, cuda, auto (default cpu)")
    p.add_argument("--dtype", default="float32", help="in-process: float32, bfloat16, auto (default float32)")
    p.add_argument("--api-key", help="--url: the server's API key")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def config_from_args(args: argparse.Namespace):
    from temper.training_adapters.rollout import RolloutConfig

    fields = {
        "n": args.n,
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "seed": args.seed,
        "stop": args.stop,
        "decoding": args.decoding,
        "model": args.model_name,
    }
    return RolloutConfig(**{k: v for k, v in fields.items() if v is not None})


def run_rollouts(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from temper.training_adapters.http_transport import ServerError
    from temper.training_adapters.prompt_file import read_prompts
    from temper.training_adapters.rollout_job import JobError, run_rollout_job
    from temper.training_adapters.rollouts import Rollouts

    def fail(msg: str, code: int) -> int:
        print(f"temper rollouts: error: {msg}", file=sys.stderr)
        return code

    try:
        config = config_from_args(args)
        read_prompts(args.prompts)  # a bad line fails before any model loads
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        return fail(f"{where + ': ' if where else ''}{err['msg']}", 2)
    except ValueError as exc:
        return fail(str(exc), 2)
    try:
        rollouts = (
            Rollouts.http(args.url, api_key=args.api_key)
            if args.url
            else Rollouts.local(dict(args.model), device=args.device, dtype=args.dtype)
        )
    except ValueError as exc:  # a model that cannot be loaded
        return fail(str(exc), 2)
    try:
        s = run_rollout_job(
            args.prompts, args.out, config, rollouts, concurrency=args.concurrency, progress=not args.no_progress
        )
    except (JobError, ServerError) as exc:  # stopped part-way, or the server is unreachable
        return fail(str(exc), 1)
    except ValueError as exc:
        return fail(str(exc), 2)
    finally:
        rollouts.close()
    print(
        f"{s.out}: {s.prompts} prompts ({s.already_done} already done, {s.generated} generated now, "
        f"{s.completion_tokens} tokens in {s.seconds:.1f} s)",
        file=sys.stderr,
    )
    return 0
