"""The edge: what every HTTP request passes before any route parses it, as one pure ASGI
middleware (streaming and disconnect detection untouched).

1. The API key (when one is set): 401 before the body is read, on every path but /health.
2. The body size: a request over --max-body-bytes is a 413, from its Content-Length or while
   it arrives; nothing past the limit is read or buffered.
3. Text that is valid Unicode: JSON may escape a lone UTF-16 surrogate ("\\ud800"), which no
   tokenizer can encode; such a request is a 400 naming the field, found without parsing the
   body on the event loop unless a surrogate escape is present at all.

Not the routes' own validation (protocol.py, prompts.py).
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from typing import Any

from temper.server.errors import APIError, bad_request, unauthorized

OPEN_PATHS = frozenset({"/health"})
# A UTF-16 surrogate escape: high D800–DBFF or low DC00–DFFF (valid only as a high+low pair).
_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def too_large(limit: int) -> APIError:
    return APIError(413, f"The request body is larger than this server's limit of {limit} bytes (--max-body-bytes).")


def authorized(headers: dict[bytes, bytes], expected: str) -> bool:
    scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
    # compare bytes in constant time, whatever the length or encoding of what was sent
    return scheme.lower() == "bearer" and secrets.compare_digest(token.strip().encode(), expected.encode())


def lone_surrogate(obj: Any, path: str = "") -> str | None:
    """The dotted path of the first string (or key) holding a lone surrogate, else None."""
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
        except UnicodeEncodeError:
            return path or "body"
        return None
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, list):
        items = enumerate(obj)
    else:
        return None
    for k, v in items:
        sub = f"{path}.{k}" if path else str(k)
        if isinstance(k, str) and lone_surrogate(k) is not None:
            return sub
        found = lone_surrogate(v, sub)
        if found is not None:
            return found
    return None


async def check_text(body: bytes) -> None:
    """400 naming the field when the JSON body holds a lone surrogate (cheap when it holds no
    surrogate escape at all, which is every ordinary request)."""
    if not _SURROGATE.search(body):
        return
    try:
        parsed = await asyncio.to_thread(json.loads, body)
    except ValueError:
        return  # not JSON: the route's parser gives the 400
    path = lone_surrogate(parsed)
    if path is not None:
        raise bad_request(f"{path}: invalid text (a lone UTF-16 surrogate, which is not Unicode)", path)


class EdgeMiddleware:
    def __init__(self, app, *, api_key: str | None, max_body_bytes: int):
        self.app = app
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or ())
        try:
            if self.api_key is not None and scope.get("path") not in OPEN_PATHS:
                if not authorized(headers, self.api_key):
                    raise unauthorized()
            if scope.get("method") in ("POST", "PUT", "PATCH"):
                receive = await self.read_body(headers, receive)
        except APIError as err:
            return await err.response()(scope, receive, send)
        return await self.app(scope, receive, send)

    async def read_body(self, headers: dict[bytes, bytes], receive):
        """The whole body (at most max_body_bytes, checked), replayed to the app by a new
        `receive`; after it, the app's receive calls go to the client (disconnects)."""
        limit = self.max_body_bytes
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise too_large(limit)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left before the body arrived
                return _once(message, receive)
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                raise too_large(limit)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        await check_text(body)
        return _once({"type": "http.request", "body": body, "more_body": False}, receive)


def _once(first: dict, receive):
    """A `receive` that gives `first`, then whatever the client sends next."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return first
        return await receive()

    return replay
