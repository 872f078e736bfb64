"""vLLM's OpenAI extensions as RL clients use them: token ids in responses, "token_id:<id>"
log-prob tokens, prompt_logprobs in vLLM's shape, --logprobs-mode processed_logprobs, and a 400
for every field temper does not honour. Log-probs are checked against a transformers forward
pass of the same weights."""

from __future__ import annotations

import json

import httpx
import pytest
import torch
from server_helpers import ServerThread

from temper.server.config import ServerConfig


def load(path, name):
    from temper.decoding.engines.hf import HFEngine

    return HFEngine.from_pretrained(str(path), name=name, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def raw_server(tiny_model_dir):
    with ServerThread(ServerConfig(max_logprobs=8), {"tiny": load(tiny_model_dir, "tiny")}) as srv:
        yield srv


@pytest.fixture(scope="module")
def processed_server(tiny_model_dir):
    config = ServerConfig(logprobs_mode="processed_logprobs", max_logprobs=-1)
    with ServerThread(config, {"tiny": load(tiny_model_dir, "tiny")}) as srv:
        yield srv


@pytest.fixture(scope="module")
def hf_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()


def post(server, path, body, **kw):
    return httpx.post(server.url + path, json=body, timeout=60, **kw)


def logits_of(model, ids) -> torch.Tensor:
    """[len(ids), V] next-token logits after each prefix ids[:j+1]."""
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


def test_return_token_ids_completions_and_chat(raw_server):
    body = {"prompt": [[5, 6, 7], [8, 9]], "n": 2, "max_tokens": 3, "seed": 1, "return_token_ids": True}
    r = post(raw_server, "/v1/completions", body).json()
    assert [c["prompt_token_ids"] for c in r["choices"]] == [[5, 6, 7]] * 2 + [[8, 9]] * 2  # prompt-major
    assert all(1 <= len(c["token_ids"]) <= 3 for c in r["choices"])
    chat = post(
        raw_server,
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "return_token_ids": True},
    ).json()
    assert chat["prompt_token_ids"] and "prompt_token_ids" not in chat["choices"][0]
    assert len(chat["choices"][0]["token_ids"]) == chat["usage"]["completion_tokens"]
    plain = post(raw_server, "/v1/completions", {"prompt": "ab", "max_tokens": 2}).json()
    assert "token_ids" not in plain["choices"][0] and isinstance(plain["weight_version"], int)


def test_streamed_token_ids_add_up(raw_server):
    body = {
        "prompt": [5, 6, 7],
        "max_tokens": 6,
        "seed": 3,
        "stream": True,
        "return_token_ids": True,
        "ignore_eos": True,
    }
    with httpx.stream("POST", raw_server.url + "/v1/completions", json=body, timeout=60) as r:
        chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    first = chunks[0]["choices"][0]
    assert first["prompt_token_ids"] == [5, 6, 7]
    streamed = [t for ch in chunks for c in ch["choices"] for t in c.get("token_ids", [])]
    full = post(raw_server, "/v1/completions", {**body, "stream": False}).json()["choices"][0]
    assert streamed == full["token_ids"] and len(streamed) == 6  # ignore_eos: the whole budget


def test_tokens_as_token_ids(raw_server):
    body = {
        "prompt": [5, 6],
        "max_tokens": 3,
        "logprobs": 2,
        "return_tokens_as_token_ids": True,
        "seed": 2,
        "return_token_ids": True,
    }
    c = post(raw_server, "/v1/completions", body).json()["choices"][0]
    lp = c["logprobs"]
    assert lp["tokens"] == [f"token_id:{t}" for t in c["token_ids"]]
    for tok, top in zip(lp["tokens"], lp["top_logprobs"], strict=True):
        assert next(iter(top)) == tok and all(k.startswith("token_id:") for k in top)  # chosen first
    chat = post(
        raw_server,
        "/v1/chat/completions",
        {
            "messages": [{"role": "user", "content": "x"}],
            "max_tokens": 2,
            "logprobs": True,
            "top_logprobs": 0,
            "return_tokens_as_token_ids": True,
        },
    ).json()
    entry = chat["choices"][0]["logprobs"]["content"][0]
    assert entry["token"].startswith("token_id:") and entry["top_logprobs"] == []


def test_prompt_logprobs_in_vllm_shape(raw_server, hf_model):
    ids = [3, 70, 71, 72, 10]
    r = post(raw_server, "/v1/completions", {"prompt": ids, "max_tokens": 1, "prompt_logprobs": 3, "n": 2}).json()
    pl = r["choices"][0]["prompt_logprobs"]
    assert r["choices"][1]["prompt_logprobs"] == pl and len(pl) == len(ids) and pl[0] is None
    ref = torch.log_softmax(logits_of(hf_model, ids), -1)
    for j in range(1, len(ids)):
        entry = pl[j]
        actual = next(iter(entry))
        assert actual == str(ids[j])  # the prompt's own token first, with its rank
        row = ref[j - 1]
        assert entry[actual]["logprob"] == pytest.approx(float(row[ids[j]]), abs=1e-4)
        assert entry[actual]["rank"] == int((row >= row[ids[j]]).sum())
        top = sorted(((v["rank"], int(k)) for k, v in entry.items() if k != actual or v["rank"] <= 3))
        assert [t for _, t in top][:3] == row.topk(3).indices.tolist()
        assert 3 <= len(entry) <= 4


def test_logprob_limits_and_unsupported_fields(raw_server):
    cases = [
        ({"prompt": "ab", "prompt_logprobs": 9}, "prompt_logprobs"),  # > --max-logprobs 8
        ({"prompt": "ab", "logprobs": 9}, "logprobs"),
        ({"prompt": "ab", "prompt_logprobs": 1, "stream": True}, "prompt_logprobs"),
        ({"prompt": "ab", "min_p": 0.1}, "min_p"),
        ({"prompt": "ab", "repetition_penalty": 1.2}, "repetition_penalty"),
        ({"prompt": "ab", "guided_json": {}}, "guided_json"),
        ({"prompt": "ab", "bad_words": ["x"]}, "bad_words"),
    ]
    for body, param in cases:
        r = post(raw_server, "/v1/completions", body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (body, r.text)
    ok = post(
        raw_server,
        "/v1/completions",
        {"prompt": "ab", "max_tokens": 1, "min_p": 0.0, "repetition_penalty": 1.0, "top_k": -1, "request_id": "abc"},
    )
    assert ok.status_code == 200 and ok.json()["id"] == "cmpl-abc"


def test_processed_logprobs_are_the_sampled_distribution(processed_server, hf_model):
    body = {
        "prompt": [5, 6, 7],
        "max_tokens": 4,
        "logprobs": 3,
        "temperature": 0.5,
        "top_k": 5,
        "seed": 9,
        "return_token_ids": True,
        "ignore_eos": True,
        "return_tokens_as_token_ids": True,
    }
    c = post(processed_server, "/v1/completions", body).json()["choices"][0]
    seq = [5, 6, 7] + c["token_ids"]
    logits = logits_of(hf_model, seq)
    for j, tok in enumerate(c["token_ids"]):
        row = logits[2 + j] / 0.5
        row = torch.where(row >= row.topk(5).values[-1], row, torch.tensor(-torch.inf))
        q = torch.log_softmax(row, -1)
        assert c["logprobs"]["token_logprobs"][j] == pytest.approx(float(q[tok]), abs=1e-4)
        top = c["logprobs"]["top_logprobs"][j]
        assert len(top) >= 3
        for k, v in top.items():
            assert v == pytest.approx(max(float(q[int(k.removeprefix("token_id:"))]), -9999.0), abs=1e-4)


def test_processed_mode_refuses_power_logprobs(processed_server):
    body = {
        "prompt": "ab",
        "max_tokens": 2,
        "logprobs": 0,
        "decoding": {"strategy": "power", "alpha": 2.0, "block_size": 2, "mcmc_steps": 1},
    }
    r = post(processed_server, "/v1/completions", body)
    assert r.status_code == 400 and r.json()["error"]["param"] == "logprobs"
    assert post(processed_server, "/v1/completions", {**body, "logprobs": None}).status_code == 200


def test_server_info_reports_the_logprobs_mode(processed_server):
    info = httpx.get(processed_server.url + "/server_info", params={"config_format": "json"}).json()
    assert info["vllm_config"]["model_config"]["logprobs_mode"] == "processed_logprobs"
    assert info["vllm_config"]["weight_transfer_config"] is None
