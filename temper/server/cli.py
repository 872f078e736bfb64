"""The `temper` console script. `temper serve` loads the models and runs the HTTP server; its
flags are generated from ServerConfig (see `temper serve --help`).

Start-up failures (a bad flag value, a model that cannot be loaded) print one line and exit
with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

import uvicorn

from temper.server.config import add_config_arguments, config_from_args
from temper.server.runner import Runner
from temper.training_adapters.rollout_cli import add_rollouts_parser, run_rollouts

SERVE_DESCRIPTION = """\
Serve OpenAI-compatible routes (/v1/models, /v1/completions, /v1/chat/completions, /v1/logprobs,
/tokenize, /detokenize, /health, /metrics). Each request may pick its decoding strategy with a
`decoding` object in the body, e.g. {"strategy": "power", "alpha": 4}. Without --model, the small
model bundled in the package is served, so this works offline on a fresh machine.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="temper", description="temper: a decoding-strategy server.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser(
        "serve",
        help="run the OpenAI-compatible server",
        description=SERVE_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(serve)
    add_rollouts_parser(sub)
    return parser


class GracefulServer(uvicorn.Server):
    """uvicorn's server with temper's shutdown: on SIGTERM uvicorn stops accepting at once; the
    requests in flight get `grace` seconds, then are cancelled with a 503 (a final error event
    when streaming), and uvicorn waits one more second for those answers to go out."""

    def __init__(self, config: uvicorn.Config, runner: Runner, grace: float):
        config.timeout_graceful_shutdown = grace + 1
        super().__init__(config)
        self.runner = runner
        self.grace = grace
        self.loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets=None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().startup(sockets)

    def handle_exit(self, sig, frame) -> None:
        first = not self.should_exit
        super().handle_exit(sig, frame)
        if first and self.loop is not None:  # a signal handler: hand the timer to the loop
            self.loop.call_soon_threadsafe(self.loop.call_later, self.grace, self.runner.shutdown)


def serve(args: argparse.Namespace) -> int:
    from temper.server.app import create_app
    from temper.server.models import ModelLoadError

    try:
        config = config_from_args(args)
        config.strategy_options()  # validates --synthesis-template before any model loads
    except ValueError as exc:  # ParamError included
        print(f"temper serve: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=config.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        app = create_app(config)
    except ModelLoadError as exc:
        print(f"temper serve: error: {exc}", file=sys.stderr)
        return 2
    uv = uvicorn.Config(app, host=config.host, port=config.port, log_level=config.log_level.lower())
    GracefulServer(uv, app.state.temper.runner, config.shutdown_timeout).run()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return serve(args)
    if args.command == "rollouts":
        return run_rollouts(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
