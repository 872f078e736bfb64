"""The OpenAPI schema as the server really behaves, built once from FastAPI's and corrected:

- every route documents the statuses it can answer with OpenAI's error body (400, 401, 404,
  409, 413, 429, 503, 504), and none documents FastAPI's 422 (validation errors are 400s here);
- `decoding` is typed: one schema per registered strategy, told apart by `strategy`
  (each strategy's Params, plus the constant name; power's methods each get their own);
- generation routes answer JSON or, with stream=true, server-sent events; /metrics answers
  Prometheus text; /health JSON (503 when an engine cannot serve).

Not the validation itself: that stays in protocol.py, prompts.py and the strategies' Params.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from temper.decoding.strategies.registry import DEFAULT_STRATEGY, strategies
from temper.server.metrics import CONTENT_TYPE

ERROR_STATUSES = {
    400: "Bad request: the error names the field (`param`)",
    401: "Missing or wrong API key",
    404: "Unknown model or route",
    409: "The model is frozen (weight updates)",
    413: "Request body over --max-body-bytes",
    429: "Over the server's in-flight limits (Retry-After)",
    503: "Engine cannot serve, request aborted by /pause, or the server is shutting down",
    504: "Request timed out (--request-timeout)",
}
ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": "integer"},
            },
        }
    },
}
GENERATION_PATHS = ("/v1/completions", "/v1/chat/completions")


def decoding_schemas() -> dict[str, dict]:
    """Component schemas: one per strategy (Decoding_<name>) and their union (Decoding)."""
    out: dict[str, dict] = {}
    for name, strategy in sorted(strategies().items()):
        for i, variant in enumerate(strategy.json_schemas()):
            props = {"strategy": {"const": name, "type": "string"}, **variant.get("properties", {})}
            key = f"Decoding_{name}" + (f"_{i}" if i else "")
            required = (
                variant.get("required", []) if name == DEFAULT_STRATEGY else ["strategy", *variant.get("required", [])]
            )
            out[key] = {**variant, "properties": props, "required": required}
    out["Decoding"] = {
        "description": "How this request is decoded: a strategy by name and its parameters.",
        "oneOf": [{"$ref": f"#/components/schemas/{key}"} for key in out],
    }
    return out


def _errors() -> dict[str, Any]:
    content = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    return {str(code): {"description": text, "content": content} for code, text in ERROR_STATUSES.items()}


def _fix_operation(path: str, op: dict[str, Any]) -> None:
    responses = op.setdefault("responses", {})
    responses.pop("422", None)
    responses.update(_errors())
    ok = responses.setdefault("200", {"description": "Successful Response"})
    if path in GENERATION_PATHS:
        ok["content"] = {
            "application/json": {"schema": {"type": "object"}},
            # one event per chunk (an object: a chunk, the usage, or an error), then [DONE]
            "text/event-stream": {"schema": {"anyOf": [{"type": "object"}, {"const": "[DONE]"}]}},
        }
    elif path == "/metrics":
        ok["content"] = {CONTENT_TYPE.split(";")[0]: {"schema": {"type": "string"}}}
    elif path == "/health":
        health = {"type": "object", "properties": {"status": {"type": "string"}}, "required": ["status"]}
        ok["content"] = {"application/json": {"schema": health}}
        down = {"description": "An engine cannot serve", "content": {"application/json": {"schema": health}}}
        responses["503"] = down


def build_openapi(app: FastAPI) -> dict[str, Any]:
    schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    components["ErrorResponse"] = ERROR_SCHEMA
    components.update(decoding_schemas())
    typed = {"anyOf": [{"$ref": "#/components/schemas/Decoding"}, {"type": "null"}]}
    for body in ("CompletionRequest", "ChatCompletionRequest"):
        if body in components:
            components[body]["properties"]["decoding"] = typed
    for path, item in schema.get("paths", {}).items():
        for op in item.values():
            _fix_operation(path, op)
    return schema


def install_openapi(app: FastAPI) -> None:
    """Serve the corrected schema at /openapi.json (built on first request, then cached)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app)
        return app.openapi_schema

    app.openapi = openapi
