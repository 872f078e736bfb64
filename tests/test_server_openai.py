"""The server as an `openai`-client user sees it: a real uvicorn server on a tiny model, driven by
the official client, sync and async. Tiny max_tokens everywhere: this runs on 2 CPU cores."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest
from server_helpers import ServerThread, wait_until

from temper.decoding.strategies.registry import strategies
from temper.server.config import ServerConfig

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}]

POWER = {"strategy": "power", "alpha": 2.0, "block_size": 2, "mcmc_steps": 1}
# small parameters per known strategy (names not registered are skipped)
STRATEGY_PARAMS = {
    "sample": [{}],
    "power": [
        {"method": "mh", "alpha": 2.0, "block_size": 2, "mcmc_steps": 1},
        {"method": "smc", "alpha": 2.0, "particles": 2, "resample_every": 2},
    ],
    "best_of_n": [{"candidates": 2}],
    "self_consistency": [{"rollouts": 2}],
    "synthesis": [{"rollouts": 2, "anchor_model": "second"}],
}


@pytest.fixture(scope="module")
def server(tiny_model_dir, second_model_dir):
    from temper.decoding.engines.hf import HFEngine

    load = lambda path, name: HFEngine.from_pretrained(str(path), name=name, device="cpu", dtype="float32")
    engines = {"tiny": load(tiny_model_dir, "tiny"), "second": load(second_model_dir, "second")}
    config = ServerConfig(api_key=KEY, heartbeat_interval=0.2, request_timeout=20)
    with ServerThread(config, engines) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture
def aclient(server):
    return openai.AsyncOpenAI(base_url=server.base_url, api_key=KEY, max_retries=0, timeout=60)


def raw(server, path: str, body: dict) -> httpx.Response:
    return httpx.post(server.url + path, json=body, headers=AUTH, timeout=60)


def test_models_list(client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny", "second"]
    assert all(m.object == "model" and m.max_model_len > 0 for m in models.data)


def test_completions_n3_usage_and_default_model(client, server):
    r = client.completions.create(model="tiny", prompt="Hello", max_tokens=4, n=3, seed=7)
    assert r.object == "text_completion" and r.id.startswith("cmpl-") and r.created > 0
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert all(c.finish_reason in ("stop", "length") for c in r.choices)
    prompt_len = len(server.state.engines["tiny"].tokenizer.encode("Hello"))
    assert r.usage.prompt_tokens == prompt_len
    assert 3 <= r.usage.completion_tokens <= 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.model_extra["decoding"]["strategy"] == "sample"
    # no model field at all in the raw body: the first --model serves it
    body = raw(server, "/v1/completions", {"prompt": "Hi", "max_tokens": 2}).json()
    assert body["model"] == "tiny" and len(body["choices"]) == 1


def test_completions_many_prompts_numbered_like_vllm(client):
    r = client.completions.create(model="tiny", prompt=["ab", "cde"], max_tokens=2, n=2, seed=1)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert r.usage.prompt_tokens == 2 + 3
    r = client.completions.create(model="tiny", prompt=[[65, 66], [67]], max_tokens=2, seed=1)
    assert [c.index for c in r.choices] == [0, 1] and r.usage.prompt_tokens == 3


def test_seed_reproducible(client):
    kw = dict(model="tiny", prompt="Once", max_tokens=6, n=2)
    a = client.completions.create(seed=123, **kw)
    b = client.completions.create(seed=123, **kw)
    c = client.completions.create(seed=124, **kw)
    assert [x.text for x in a.choices] == [x.text for x in b.choices]
    assert [x.text for x in a.choices] != [x.text for x in c.choices]


def test_stop_string_cuts_the_text(client):
    for seed in range(10):
        base = client.completions.create(model="tiny", prompt="Say", max_tokens=16, seed=seed).choices[0]
        cut = next((i for i, ch in enumerate(base.text) if i > 0 and ch.isascii() and ch.isalnum()), None)
        if cut is not None:
            break
    assert cut is not None
    stop = base.text[cut]
    r = client.completions.create(model="tiny", prompt="Say", max_tokens=16, seed=seed, stop=[stop, "\x00zz"])
    assert r.choices[0].text == base.text[: base.text.index(stop)]
    assert r.choices[0].finish_reason == "stop"


def test_logprobs_are_the_models_raw_logprobs(client, server):
    r = client.completions.create(model="tiny", prompt="Hello", max_tokens=5, logprobs=2, seed=3)
    lp = r.choices[0].logprobs
    n = r.usage.completion_tokens
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.text_offset) == len(lp.top_logprobs) == n
    assert all(v <= 0 for v in lp.token_logprobs)
    assert all(2 <= len(d) <= 3 for d in lp.top_logprobs)  # top-2 plus the chosen token
    # the same numbers as scoring prompt + completion through /v1/logprobs; the completion's
    # ids come from its token strings (its text need not re-tokenize to the same ids)
    tt = server.state.token_texts["tiny"]
    id_of = {tt.token_str(i): i for i in range(server.state.engines["tiny"].tokenizer.vocab_size)}
    text_ids = [id_of[t] for t in lp.tokens]
    ids = raw(server, "/tokenize", {"model": "tiny", "prompt": "Hello"}).json()["tokens"]
    body = raw(server, "/v1/logprobs", {"model": "tiny", "prompt": ids + text_ids, "start": len(ids)}).json()
    scored = body["data"][0]["logprobs"][len(ids) :]
    assert scored == pytest.approx(lp.token_logprobs, abs=2e-3)


def test_echo_with_logprobs(client):
    r = client.completions.create(model="tiny", prompt="Hello", max_tokens=3, echo=True, logprobs=1, seed=5)
    c = r.choices[0]
    assert c.text.startswith("Hello")
    assert c.logprobs.token_logprobs[0] is None and c.logprobs.top_logprobs[0] is None
    assert len(c.logprobs.tokens) == 5 + r.usage.completion_tokens
    assert c.logprobs.tokens[:5] == list("Hello") and c.logprobs.text_offset[:5] == [0, 1, 2, 3, 4]


def test_chat_plain_and_logprobs(client, server):
    r = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=5, logprobs=True, top_logprobs=2)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    msg = r.choices[0].message
    assert msg.role == "assistant" and isinstance(msg.content, str)
    expected = len(server.state.engines["tiny"].tokenizer.apply_chat_template(CHAT))
    assert r.usage.prompt_tokens == expected
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert all(len(e.top_logprobs) == 2 and e.logprob <= 0 and e.bytes for e in content)


def test_chat_streaming_matches_non_streaming(client):
    kw = dict(model="tiny", messages=CHAT, max_tokens=6, seed=11, n=2)
    full = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    text = {0: "", 1: ""}
    finish = {}
    for ch in chunks[:-1]:
        assert ch.object == "chat.completion.chunk" and ch.id == chunks[0].id
        for c in ch.choices:
            text[c.index] += c.delta.content or ""
            if c.finish_reason:
                finish[c.index] = c.finish_reason
    assert chunks[0].choices[0].delta.role == "assistant"
    assert text == {c.index: c.message.content for c in full.choices}
    assert finish == {c.index: c.finish_reason for c in full.choices}
    last = chunks[-1]
    assert last.choices == [] and last.usage.total_tokens == full.usage.total_tokens
    # without include_usage: no usage chunk
    plain = list(client.chat.completions.create(stream=True, **kw))
    assert all(ch.usage is None for ch in plain) and all(ch.choices for ch in plain)


def test_completion_streaming_is_token_by_token(client):
    chunks = list(client.completions.create(model="tiny", prompt="Hi", max_tokens=8, seed=2, stream=True))
    full = client.completions.create(model="tiny", prompt="Hi", max_tokens=8, seed=2)
    assert "".join(c.choices[0].text for c in chunks) == full.choices[0].text
    assert chunks[-1].choices[0].finish_reason == full.choices[0].finish_reason
    assert len(chunks) >= 3  # several chunks, not one buffered blob
    # with echo: each chunk's log-probs joined give the non-streamed ones, offsets absolute
    kw = dict(model="tiny", prompt="Hi", max_tokens=8, seed=2, logprobs=1, echo=True)
    full = client.completions.create(**kw).choices[0].logprobs
    got = {"tokens": [], "token_logprobs": [], "text_offset": []}
    for ch in client.completions.create(stream=True, **kw):
        if ch.choices and ch.choices[0].logprobs:
            for key in got:
                got[key] += getattr(ch.choices[0].logprobs, key)
    assert got["tokens"] == full.tokens and got["text_offset"] == full.text_offset
    assert got["token_logprobs"][1:] == pytest.approx(full.token_logprobs[1:], abs=1e-5)


async def test_async_client(aclient):
    r = await aclient.completions.create(model="tiny", prompt="Hi", max_tokens=3)
    assert len(r.choices) == 1
    stream = await aclient.chat.completions.create(model="second", messages=CHAT, max_tokens=4, stream=True)
    pieces = [ch async for ch in stream]
    assert pieces[-1].choices[0].finish_reason in ("stop", "length") and pieces[0].model == "second"


def _strategy_cases():
    names = set(strategies())
    cases = []
    for name in sorted(names):
        for params in STRATEGY_PARAMS.get(name, [{}]):
            cases.append(pytest.param(name, params, id=f"{name}-{params.get('method', '')}".rstrip("-")))
    return cases


@pytest.mark.parametrize(("name", "params"), _strategy_cases())
def test_every_strategy_through_extra_body(client, name, params):
    decoding = {"strategy": name, **params}
    r = client.chat.completions.create(
        model="tiny", messages=CHAT, max_tokens=3, seed=1, extra_body={"decoding": decoding}
    )
    assert r.choices and all(isinstance(c.message.content, str) for c in r.choices)
    assert r.model_extra["decoding"]["strategy"] == name
    assert r.usage.completion_tokens >= 1
    stream = client.completions.create(
        model="tiny", prompt="Hi", max_tokens=3, seed=1, stream=True, extra_body={"decoding": decoding}
    )
    chunks = list(stream)
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)


def test_power_stream_sends_final_text_in_chunks(server):
    body = {
        "model": "tiny",
        "prompt": "Hi",
        "max_tokens": 4,
        "seed": 3,
        "stream": True,
        "decoding": {"strategy": "power", "alpha": 2.0, "block_size": 2, "mcmc_steps": 1},
    }
    if "power" not in strategies():
        pytest.skip("power strategy not registered")
    full = raw(server, "/v1/completions", {**body, "stream": False}).json()
    with httpx.stream("POST", server.url + "/v1/completions", json=body, headers=AUTH) as r:
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    data = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    assert "".join(d["choices"][0]["text"] for d in data) == full["choices"][0]["text"]
    assert sum(bool(d["choices"][0]["text"]) for d in data) > 1  # piece by piece, not one blob
    assert data[-1]["choices"][0]["finish_reason"] == full["choices"][0]["finish_reason"]


def test_client_disconnect_frees_the_engine(server):
    """A streaming client that goes away mid-stream cancels its sequences: the engine's queue
    drains to zero long before the request's max_tokens could have been generated."""
    engine = server.state.engines["tiny"]
    eos = engine.eos_ids
    engine.eos_ids = ()  # no early stop: only the disconnect can end this request
    try:
        before = engine.stats.generated_tokens
        body = {"model": "tiny", "prompt": "Hi", "max_tokens": 1500, "stream": True, "n": 2}
        with httpx.stream("POST", server.url + "/v1/completions", json=body, headers=AUTH) as r:
            it = r.iter_lines()
            got = 0
            for line in it:
                got += line.startswith("data: ")
                if got >= 5:
                    break
        assert wait_until(lambda: engine.queue_depth == 0 and server.state.runner.in_flight == 0, timeout=10)
        assert engine.stats.generated_tokens - before < 2 * 1500
    finally:
        engine.eos_ids = eos


def test_fifty_concurrent_mixed_requests(server):
    async def main():
        c = openai.AsyncOpenAI(base_url=server.base_url, api_key=KEY, max_retries=0, timeout=120)

        async def one(i: int):
            kind = i % 5
            if kind == 0:
                r = await c.completions.create(model="tiny", prompt=f"n{i}", max_tokens=3, n=2)
                return len(r.choices) == 2
            if kind == 1:
                r = await c.chat.completions.create(model="tiny", messages=CHAT, max_tokens=3)
                return r.choices[0].finish_reason in ("stop", "length")
            if kind == 2:
                s = await c.chat.completions.create(model="second", messages=CHAT, max_tokens=3, stream=True)
                return any([ch.choices and ch.choices[0].finish_reason async for ch in s])
            if kind == 3:
                s = await c.completions.create(model="tiny", prompt="x", max_tokens=3, stream=True)
                return [ch async for ch in s][-1].choices[0].finish_reason in ("stop", "length")
            d = POWER if "power" in strategies() else None
            r = await c.completions.create(model="tiny", prompt="p", max_tokens=3, extra_body={"decoding": d})
            return len(r.choices) == 1

        return await asyncio.gather(*(one(i) for i in range(50)))

    assert all(asyncio.run(main()))
    assert wait_until(lambda: server.state.runner.in_flight == 0)


def test_scoring_and_token_routes(server):
    tok = raw(server, "/tokenize", {"model": "tiny", "prompt": "Hello"}).json()
    assert tok["count"] == 5 and tok["max_model_len"] > 0 and tok["token_strs"] is None
    chat = raw(server, "/tokenize", {"model": "tiny", "messages": CHAT, "return_token_strs": True}).json()
    assert chat["tokens"] == server.state.engines["tiny"].tokenizer.apply_chat_template(CHAT)
    assert len(chat["token_strs"]) == chat["count"]
    assert raw(server, "/detokenize", {"model": "tiny", "tokens": tok["tokens"]}).json() == {"prompt": "Hello"}
    assert raw(server, "/detokenize", {"tokens": [10**6]}).status_code == 400

    body = raw(server, "/v1/logprobs", {"model": "second", "prompt": ["Hello", "Hi"], "top_logprobs": 3}).json()
    assert body["model"] == "second" and body["usage"]["prompt_tokens"] == 7
    first = body["data"][0]
    assert first["token_ids"] == tok["tokens"] and first["tokens"] == list("Hello")
    assert first["logprobs"][0] is None and all(v <= 0 for v in first["logprobs"][1:])
    assert first["top_logprobs"][0] is None and all(len(t) == 3 for t in first["top_logprobs"][1:])
    assert first["top_logprobs"][1][0]["logprob"] >= first["top_logprobs"][1][2]["logprob"]
    part = raw(server, "/v1/logprobs", {"model": "second", "prompt": tok["tokens"], "start": 3}).json()["data"][0]
    assert part["logprobs"][:3] == [None] * 3 and part["logprobs"][3:] == pytest.approx(first["logprobs"][3:], abs=1e-4)
    bad = raw(server, "/v1/logprobs", {"prompt": "Hi", "start": 9})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "start"


def test_non_streaming_client_that_gives_up_frees_the_engine(server):
    engine = server.state.engines["tiny"]
    eos = engine.eos_ids
    engine.eos_ids = ()  # no early stop: only the disconnect can end this request
    try:
        body = {"model": "tiny", "prompt": "Hi", "max_tokens": 1500, "n": 2}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(server.url + "/v1/completions", json=body, headers=AUTH, timeout=0.5)
        assert wait_until(lambda: engine.queue_depth == 0 and server.state.runner.in_flight == 0, timeout=10)
    finally:
        engine.eos_ids = eos
    metrics = httpx.get(server.url + "/metrics", headers=AUTH).text
    assert 'temper_requests_total{model="tiny",status="499",strategy="sample"}' in metrics
