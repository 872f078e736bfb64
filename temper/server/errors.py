"""Errors as OpenAI error bodies: {"error": {"message", "type", "param", "code"}}.

Types and codes follow vLLM's server (type "BadRequestError", code = the HTTP status), so an
`openai` client sees the same exceptions it would see against vLLM. Every validation failure
maps to a 4xx here; a 500 means a bug in temper, never bad input.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from temper.decoding.errors import ContextLengthError, EngineDeadError, ParamError

log = logging.getLogger(__name__)

CLIENT_GONE = 499  # nginx's "client closed request": recorded in metrics, never sent

ERROR_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    429: "RateLimitError",
    CLIENT_GONE: "ClientClosedRequest",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
    504: "TimeoutError",
}


class APIError(Exception):
    """An error with its HTTP status, OpenAI error type, offending parameter and headers."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        *,
        type: str | None = None,
        headers: Mapping[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.type = type or ERROR_TYPES.get(status, "APIError")
        self.headers = dict(headers or {})

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.status}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


class ClientGone(APIError):
    """The client disconnected before its answer was ready (nginx's 499: counted, never sent)."""

    def __init__(self) -> None:
        super().__init__(CLIENT_GONE, "client closed the connection")


def bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param)


def model_not_found(name: str) -> APIError:
    return APIError(404, f"The model `{name}` does not exist.", "model")


def queue_full(limit: int, retry_after: int, token_limit: int | None = None) -> APIError:
    what = f"{token_limit} worst-case tokens" if token_limit is not None else f"{limit} requests"
    return APIError(
        429, f"The server is at its limit of {what} in flight; retry later.", headers={"Retry-After": str(retry_after)}
    )


def request_timeout(seconds: float) -> APIError:
    # the openai client retries 5xx unless told not to; a timed-out request would time out again
    return APIError(
        504,
        f"The request did not finish within the server's limit of {seconds:g} s and was cancelled.",
        headers={"x-should-retry": "false"},
    )


def aborted() -> APIError:
    return APIError(503, "The request was aborted by /pause?mode=abort; retry once the server resumes.")


def shutting_down() -> APIError:
    return APIError(503, "The server is shutting down; the request was cancelled. Retry on another server.")


def unauthorized() -> APIError:
    return APIError(
        401, "Invalid or missing API key: send 'Authorization: Bearer <key>'.", headers={"WWW-Authenticate": "Bearer"}
    )


def as_api_error(exc: BaseException) -> APIError:
    """The APIError for any exception a request can raise (unknown ones are 500s)."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, ParamError):
        return bad_request(exc.message, exc.param)
    if isinstance(exc, ContextLengthError):
        return bad_request(str(exc), "prompt")
    if isinstance(exc, EngineDeadError):
        return APIError(503, f"The engine cannot serve: {exc}", headers={"x-should-retry": "false"})
    if isinstance(exc, RequestValidationError):
        return _from_validation(exc)
    return APIError(500, f"Internal server error: {type(exc).__name__}: {exc}")


# pydantic names union members in error locations ("prompt", "list[int]", 0); cut them off
_TAG_CHARS = ("[", "-", " ")
_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "json-or-python"}


def _from_validation(exc: RequestValidationError) -> APIError:
    err = exc.errors()[0]
    loc = list(err.get("loc", ()))
    if loc and loc[0] in ("body", "query", "path", "header"):
        loc = loc[1:]
    if err.get("type") == "json_invalid":
        return bad_request(f"Invalid JSON body: {err.get('msg', '')}", None)
    if err.get("type") == "extra_forbidden":
        param = ".".join(str(p) for p in loc) or None
        return bad_request(f"{param}: unknown field; this server does not support it", param)
    parts: list[str] = []
    for p in loc:
        if isinstance(p, str) and (p in _TAGS or any(c in p for c in _TAG_CHARS)):
            break
        parts.append(str(p))
    param = ".".join(parts) or None
    msg = err.get("msg", "invalid value")
    return bad_request(f"{param}: {msg}" if param else msg, param)


def install_error_handlers(app: FastAPI) -> None:
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        err = as_api_error(exc)
        if err.status == 500:  # a bug: the traceback matters
            log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        elif err.status > 500:  # a timeout or an engine that cannot serve: expected, one line
            log.warning("%s %s: %d %s", request.method, request.url.path, err.status, err.message)
        return err.response()

    async def handle_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        err = APIError(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))
        return err.response()

    for cls in (APIError, ParamError, ContextLengthError, EngineDeadError, RequestValidationError, Exception):
        app.add_exception_handler(cls, handle)
    app.add_exception_handler(StarletteHTTPException, handle_http)
