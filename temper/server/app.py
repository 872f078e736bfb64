"""create_app: the FastAPI application for a ServerConfig and its engines.

App-wide state is one ServerState on `app.state.temper` (config, engines by name with the
default first, strategy options, metrics, the runner, per-model token-text caches). Tests
inject engines; otherwise the config's models are loaded here, and the app then closes them on
shutdown.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import asynccontextmanager

from fastapi import FastAPI

from temper.decoding.engine import Engine
from temper.server.config import ServerConfig
from temper.server.edge import EdgeMiddleware
from temper.server.errors import install_error_handlers
from temper.server.metrics import HTTPMetricsMiddleware
from temper.server.models import ModelLoadError, check_engines, load_engines
from temper.server.openapi import install_openapi
from temper.server.routes_generation import router as generation_router
from temper.server.routes_misc import router as misc_router
from temper.server.routes_rl import router as rl_router
from temper.server.routes_scoring import router as scoring_router
from temper.server.state import ServerState

log = logging.getLogger(__name__)


def create_app(config: ServerConfig | None = None, engines: Mapping[str, Engine] | None = None) -> FastAPI:
    config = config or ServerConfig()
    options = config.strategy_options()  # validated before any model loads
    owns_engines = engines is None
    engines = check_engines(load_engines(config) if engines is None else engines)
    try:
        state = ServerState(config, engines, options)
    except ValueError as exc:  # --frozen naming no served model
        raise ModelLoadError(str(exc)) from None

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
    app.state.temper = state
    install_error_handlers(app)
    install_openapi(app)
    for router in (generation_router, scoring_router, rl_router, misc_router):
        app.include_router(router)
    # outermost last: metrics count every response, the edge's 401/413/400s included
    app.add_middleware(EdgeMiddleware, api_key=config.api_key, max_body_bytes=config.max_body_bytes)
    app.add_middleware(HTTPMetricsMiddleware, metrics=state.metrics)
    return app
