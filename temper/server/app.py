"""create_app: the FastAPI application for a ServerConfig and its engines.

App-wide state hangs off `app.state` (config, engines by name with the default first, metrics,
the in-flight admission counter, per-model token-text caches); requests never write to it
beyond counters. Tests inject engines; otherwise the config's models are loaded here, and the
app then closes them on shutdown.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from temper.decoding.engine import Engine
from temper.server.auth import require_api_key
from temper.server.config import ServerConfig
from temper.server.errors import install_error_handlers
from temper.server.metrics import HTTPMetricsMiddleware, Metrics
from temper.server.models import check_engines, load_engines
from temper.server.routes_chat import router as chat_router
from temper.server.routes_completions import router as completions_router
from temper.server.routes_misc import open_router
from temper.server.routes_misc import router as misc_router
from temper.server.serving import Admission
from temper.server.text import TokenText

log = logging.getLogger(__name__)


def create_app(config: ServerConfig | None = None, engines: Mapping[str, Engine] | None = None) -> FastAPI:
    config = config or ServerConfig()
    owns_engines = engines is None
    engines = check_engines(load_engines(config) if engines is None else engines)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        log.info("serving %s (default: %s)", ", ".join(engines), next(iter(engines)))
        yield
        if owns_engines:
            for engine in engines.values():
                await engine.close()

    # with a key, only /health is open: no unauthenticated schema pages either
    docs = {"docs_url": None, "redoc_url": None, "openapi_url": None} if config.api_key else {}
    app = FastAPI(title="temper", summary="OpenAI-compatible decoding server", lifespan=lifespan, **docs)
    app.state.config = config
    app.state.engines = engines
    app.state.token_texts = {name: TokenText(e.tokenizer) for name, e in engines.items()}
    app.state.metrics = Metrics()
    app.state.admission = Admission(config.max_queue, config.retry_after)
    app.state.strategy_options = config.strategy_options()
    app.state.started = int(time.time())
    install_error_handlers(app)
    app.include_router(open_router)
    auth = [Depends(require_api_key)]
    for router in (completions_router, chat_router, misc_router):
        app.include_router(router, dependencies=auth)
    app.add_middleware(HTTPMetricsMiddleware, metrics=app.state.metrics)
    return app
