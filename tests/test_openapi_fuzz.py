"""The OpenAPI schema tells the truth: a schema-driven fuzzer (schemathesis) sends generated
requests to every route and checks that nothing answers 5xx and that every answer (status,
content type, body) is one the schema documents. A longer run: `python -m bench.fuzz`
(TEMPER_FUZZ_EXAMPLES sets the examples per route; 8 here)."""

from __future__ import annotations

import os

import pytest

from temper.decoding.engines.toy import ToyEngine, ToyModel
from temper.server.app import create_app
from temper.server.config import ServerConfig

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402 (after the importorskip)
from schemathesis import checks  # noqa: E402

# What a schema can promise: no 5xx, and every answer documented (status, content type, headers,
# body); schema-invalid requests rejected. Not "every schema-valid request is accepted": whether
# token ids exist or a prompt fits depends on the served model, which a schema cannot know.
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
    checks.negative_data_rejection,
]

# State-changing routes stay out: /pause would hold every later request until its timeout.
EXCLUDED = ("/pause", "/resume")


def fuzz_app():
    engines = {"toy": ToyEngine(ToyModel(vocab_size=6, seed=3, eos_logit=1.0), name="toy", max_context=64)}
    config = ServerConfig(max_request_tokens=4096, request_timeout=5, heartbeat_interval=0.05)
    return create_app(config, engines)


schema = schemathesis.openapi.from_asgi("/openapi.json", fuzz_app())


@schema.exclude(path=list(EXCLUDED)).parametrize()
@settings(
    max_examples=int(os.environ.get("TEMPER_FUZZ_EXAMPLES", "8")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize="TEMPER_FUZZ_EXAMPLES" not in os.environ,  # CI: the same examples every run
)
def test_every_route_answers_as_documented(case):
    case.call_and_validate(checks=CHECKS)
