"""Load limits, time limits, auth and error bodies, on a server over slow toy engines (every
engine call waits, so requests overlap on purpose). The toy model's tokens print as letters."""

from __future__ import annotations

import asyncio
import json
import threading

import httpx
import openai
import pytest
from server_helpers import ServerThread, wait_until

from temper.decoding.engines.toy import ToyEngine, ToyModel
from temper.decoding.strategies.registry import strategies
from temper.server.config import ServerConfig

KEY = "sekrit"
AUTH = {"Authorization": f"Bearer {KEY}"}


class SlowToyEngine(ToyEngine):
    """A ToyEngine whose every sample call first waits `delay` seconds."""

    def __init__(self, delay: float, **kw):
        super().__init__(ToyModel(vocab_size=5, seed=1, eos_logit=-1.0), **kw)
        self.delay = delay

    async def sample(self, specs, on_token=None):
        await asyncio.sleep(self.delay)
        return await super().sample(specs, on_token)


@pytest.fixture(scope="module")
def server():
    engines = {"toy": SlowToyEngine(0.3, name="toy", max_context=64)}
    config = ServerConfig(api_key=KEY, max_queue=2, retry_after=3, request_timeout=1.0, heartbeat_interval=0.05)
    with ServerThread(config, engines) as srv:
        yield srv


def post(server, path, body, headers=AUTH, **kw):
    return httpx.post(server.url + path, json=body, headers=headers, timeout=30, **kw)


def test_401_without_the_key_and_health_stays_open(server):
    r = post(server, "/v1/completions", {"prompt": "ab"}, headers={})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    wrong = {"Authorization": "Bearer nope"}
    assert post(server, "/v1/completions", {"prompt": "ab"}, headers=wrong).status_code == 401
    assert httpx.get(server.url + "/v1/models").status_code == 401
    assert httpx.get(server.url + "/metrics").status_code == 401
    assert httpx.get(server.url + "/health").status_code == 200
    c = openai.OpenAI(base_url=server.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        c.models.list()
    ok = openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0)
    assert [m.id for m in ok.models.list().data] == ["toy"]


def test_429_when_the_queue_is_full(server):
    """Two slow requests hold both slots; a third gets 429 with Retry-After, then, once they
    finish, requests are admitted again."""
    results = []

    def slow():
        results.append(post(server, "/v1/completions", {"prompt": "ab", "max_tokens": 2}).status_code)

    threads = [threading.Thread(target=slow) for _ in range(2)]
    for t in threads:
        t.start()
    assert wait_until(lambda: server.state.runner.in_flight == 2)
    c = openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0)
    with pytest.raises(openai.RateLimitError) as exc:
        c.completions.create(model="toy", prompt="ab", max_tokens=2)
    assert exc.value.response.headers["retry-after"] == "3"
    assert exc.value.body["type"] == "RateLimitError" and exc.value.status_code == 429
    for t in threads:
        t.join()
    assert results == [200, 200]
    assert post(server, "/v1/completions", {"prompt": "ab", "max_tokens": 2}).status_code == 200


def test_request_timeout_is_504_and_frees_the_slot(server):
    if "power" not in strategies():
        pytest.skip("power strategy not registered")
    # many sequential engine calls of 0.3 s each: far past the 1 s limit
    decoding = {"strategy": "power", "alpha": 2.0, "block_size": 1, "mcmc_steps": 4}
    r = post(server, "/v1/completions", {"prompt": "ab", "max_tokens": 8, "decoding": decoding})
    assert r.status_code == 504 and r.json()["error"]["type"] == "TimeoutError"
    assert r.headers["x-should-retry"] == "false"
    assert wait_until(lambda: server.state.runner.in_flight == 0)


def test_streaming_heartbeats_then_final_text(server):
    """A strategy whose tokens are not final until the end: SSE comments while it works, then
    the answer in chunks, then [DONE]."""
    name = "best_of_n" if "best_of_n" in strategies() else "sample"
    body = {"prompt": "ab", "max_tokens": 3, "seed": 1, "stream": True, "decoding": {"strategy": name}}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, headers=AUTH, timeout=30) as r:
        lines = [line for line in r.iter_lines() if line]
    assert ": heartbeat" in lines  # the engine call alone takes 0.3 s, heartbeats every 0.05 s
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert chunks[-1]["decoding"]["strategy"] == name


def test_stream_timeout_is_an_error_event(server):
    if "power" not in strategies():
        pytest.skip("power strategy not registered")
    decoding = {"strategy": "power", "alpha": 2.0, "block_size": 1, "mcmc_steps": 4}
    body = {"prompt": "ab", "max_tokens": 8, "stream": True, "decoding": decoding}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, headers=AUTH, timeout=30) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert json.loads(lines[-2][6:])["error"]["code"] == 504 and lines[-1] == "data: [DONE]"
    assert wait_until(lambda: server.state.runner.in_flight == 0)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "ab", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "ab", "max_tokens": -3}, "max_tokens"),
        ({"prompt": "ab", "max_tokens": "many"}, "max_tokens"),
        ({"prompt": "ab", "temperature": -1}, "temperature"),
        ({"prompt": "ab", "top_p": 0}, "top_p"),
        ({"prompt": "ab", "n": 0}, "n"),
        ({"prompt": "ab", "logprobs": 50}, "logprobs"),
        ({"prompt": "ab", "stop": [""]}, "stop"),
        ({"prompt": "ab", "presence_penalty": 0.5}, "presence_penalty"),
        ({"prompt": "ab", "stream_options": {"include_usage": True}}, "stream_options"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": [1, 2, 99]}, "prompt"),
        ({"prompt": [0] * 64}, "prompt"),
        ({"prompt": [0] * 60, "max_tokens": 10}, "max_tokens"),
        ({"prompt": "ab", "decoding": {"strategy": "nope"}}, "decoding.strategy"),
        ({"prompt": "ab", "decoding": {"strategy": "sample", "bogus": 1}}, "decoding.bogus"),
        ({"prompt": "ab", "decoding": "sample"}, "decoding"),
        ({"max_tokens": 2}, "prompt"),
    ],
)
def test_400s_name_the_parameter(server, body, param):
    r = post(server, "/v1/completions", body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "BadRequestError" and err["code"] == 400
    assert err["message"]


def test_400s_through_the_openai_client(server):
    c = openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0)
    cases = [
        (dict(max_tokens=0), "max_tokens"),
        (dict(max_completion_tokens=0), "max_completion_tokens"),
        (dict(top_logprobs=3), "top_logprobs"),  # without logprobs=true
        (dict(extra_body={"decoding": {"strategy": "power", "alpha": 0.5}}), "decoding.alpha"),
        (dict(messages=[{"role": "user", "content": "a" * 70}]), "messages"),
        (dict(messages=[{"role": "wizard", "content": "a"}]), "messages.0.role"),
        (dict(messages=[]), "messages"),
    ]
    for kw, param in cases:
        if param == "decoding.alpha" and "power" not in strategies():
            continue
        kw = {"model": "toy", "messages": [{"role": "user", "content": "ab"}], **kw}
        with pytest.raises(openai.BadRequestError) as exc:
            c.chat.completions.create(**kw)
        assert exc.value.body["param"] == param, (kw, exc.value.body)
    with pytest.raises(openai.NotFoundError) as exc:
        c.completions.create(model="gpt-4", prompt="ab")
    assert exc.value.body == {
        "message": "The model `gpt-4` does not exist.",
        "type": "NotFoundError",
        "param": "model",
        "code": 404,
    }


def test_malformed_json_is_400(server):
    headers = {**AUTH, "content-type": "application/json"}
    r = httpx.post(server.url + "/v1/chat/completions", content=b"{not json", headers=headers)
    assert r.status_code == 400 and r.json()["error"]["type"] == "BadRequestError"
    r = httpx.get(server.url + "/v1/nothing-here", headers=AUTH)
    assert r.status_code == 404 and "error" in r.json()


def test_metrics_exposition(server):
    post(server, "/v1/completions", {"prompt": "ab", "max_tokens": 2})
    text = httpx.get(server.url + "/metrics", headers=AUTH).text
    for family in (
        "temper_requests_total",
        "temper_tokens_total",
        "temper_request_seconds_bucket",
        "temper_queue_depth",
        "temper_prefix_cache_hit_rate",
        "temper_engine_forward_passes_total",
        "temper_http_requests_total",
    ):
        assert family in text
    assert 'temper_requests_total{model="toy",status="200",strategy="sample"}' in text
    assert 'temper_requests_total{model="",status="401",strategy=""}' not in text  # auth is per route
    assert 'status="429"' in text
    for line in text.splitlines():
        if not line.startswith("#"):
            float(line.rsplit(" ", 1)[1])  # every sample line ends in its value
