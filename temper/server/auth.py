"""Bearer-key check for every route but /health (a FastAPI dependency, not a middleware, so
streaming responses and disconnect detection are untouched). No key configured = open server."""

from __future__ import annotations

import secrets

from fastapi import Request

from temper.server.errors import unauthorized


async def require_api_key(request: Request) -> None:
    expected: str | None = request.app.state.temper.config.api_key
    if expected is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    # compare bytes in constant time, whatever the length or encoding of what was sent
    if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), expected.encode()):
        raise unauthorized()
