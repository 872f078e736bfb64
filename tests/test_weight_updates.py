"""Live weight updates: /update_weights_from_disk under concurrent traffic (every response's
weight_version matches the weights its tokens' log-probs come from), bad checkpoints (400
naming the first mismatch, weights unchanged), frozen models (409), pause / resume, and the
NCCL transfer routes' 400 on the transformers engine."""

from __future__ import annotations

import threading

import httpx
import pytest
import torch
from server_helpers import ServerThread, wait_until

from temper.server.config import ServerConfig


def load(path, name):
    from temper.decoding.engines.hf import HFEngine

    return HFEngine.from_pretrained(str(path), name=name, device="cpu", dtype="float32")


@pytest.fixture
def server(tiny_model_dir):
    engines = {"policy": load(tiny_model_dir, "policy"), "anchor": load(tiny_model_dir, "anchor")}
    with ServerThread(ServerConfig(frozen=["anchor"], request_timeout=60), engines) as srv:
        yield srv


@pytest.fixture(scope="module")
def references(tiny_model_dir, second_model_dir):
    """transformers models of version 0 (the served weights) and 1 (the update)."""
    from transformers import AutoModelForCausalLM

    return [
        AutoModelForCausalLM.from_pretrained(str(p), dtype=torch.float32).eval()
        for p in (tiny_model_dir, second_model_dir)
    ]


def post(server, path, body, **kw):
    return httpx.post(server.url + path, json=body, timeout=60, **kw)


def logprobs_under(model, prompt, tokens) -> list[float]:
    seq = list(prompt) + list(tokens)
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([seq])).logits[0].float(), -1)
    return [float(lp[len(prompt) - 1 + j, t]) for j, t in enumerate(tokens)]


def test_update_under_traffic_never_mixes_weights(server, references, second_model_dir):
    prompt = [5, 6, 7, 8]
    body = {
        "model": "policy",
        "prompt": prompt,
        "max_tokens": 6,
        "logprobs": 0,
        "return_token_ids": True,
        "ignore_eos": True,
    }
    results, errors = [], []

    def client(i):
        for j in range(4):
            r = post(server, "/v1/completions", {**body, "seed": 100 * i + j})
            (results if r.status_code == 200 else errors).append(r)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    assert wait_until(lambda: len(results) >= 2)
    up = post(server, "/update_weights_from_disk", {"path": str(second_model_dir), "model": "policy"})
    assert up.status_code == 200 and up.json() == {"model": "policy", "weight_version": 1}
    for t in threads:
        t.join()
    assert not errors and len(results) == 16
    versions = set()
    for r in results:
        data = r.json()
        v = data["weight_version"]
        assert r.headers["x-weight-version"] == str(v)
        versions.add(v)
        c = data["choices"][0]
        got = c["logprobs"]["token_logprobs"]
        assert got == pytest.approx(logprobs_under(references[v], prompt, c["token_ids"]), abs=1e-4)
        assert got != pytest.approx(logprobs_under(references[1 - v], prompt, c["token_ids"]), abs=1e-4)
    assert versions == {0, 1}  # traffic on both sides of the update
    scored = post(server, "/v1/logprobs", {"model": "policy", "prompt": prompt})
    assert scored.json()["weight_version"] == 1


def test_bad_checkpoints_are_400s_and_change_nothing(server, tmp_path):
    from safetensors.torch import save_file

    greedy = {"model": "policy", "prompt": [5, 6, 7], "max_tokens": 5, "temperature": 0}
    before = post(server, "/v1/completions", greedy).json()["choices"][0]["text"]
    save_file({"model.embed_tokens.weight": torch.zeros(3, 3)}, str(tmp_path / "shape.safetensors"))
    save_file({"not.a.parameter": torch.zeros(3)}, str(tmp_path / "name.safetensors"))
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    cases = [
        (str(tmp_path / "missing"), "no checkpoint"),
        (str(tmp_path / "shape.safetensors"), "model.embed_tokens.weight"),
        (str(tmp_path / "name.safetensors"), "not.a.parameter"),
        (str(tmp_path / "junk.safetensors"), "cannot read"),
    ]
    for path, words in cases:
        r = post(server, "/update_weights_from_disk", {"path": path, "model": "policy"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "path" and words in r.json()["error"]["message"]
    assert post(server, "/v1/completions", greedy).json()["choices"][0]["text"] == before
    assert httpx.get(server.url + "/weight_info", params={"model": "policy"}).json()["weight_version"] == 0


def test_frozen_model_refuses_updates(server, second_model_dir):
    r = post(server, "/update_weights_from_disk", {"path": str(second_model_dir), "model": "anchor"})
    assert r.status_code == 409 and r.json()["error"]["param"] == "model"
    assert (
        post(server, "/update_weights_from_disk", {"path": str(second_model_dir), "model": "nope"}).status_code == 404
    )


def test_pause_holds_requests_until_resume(server):
    assert post(server, "/pause", {}, params={"mode": "keep"}).json() == {"status": "paused"}
    assert httpx.get(server.url + "/is_paused").json() == {"is_paused": True}
    done = []
    t = threading.Thread(target=lambda: done.append(post(server, "/v1/completions", {"prompt": "ab", "max_tokens": 2})))
    t.start()
    assert not wait_until(lambda: done, timeout=0.5)  # held back while paused
    assert post(server, "/resume", {}).json() == {"status": "resumed"}
    t.join()
    assert done[0].status_code == 200
    assert post(server, "/pause", {}, params={"mode": "sideways"}).status_code == 400


def test_nccl_transfer_routes_name_the_disk_route(server):
    for path in ("/init_weight_transfer_engine", "/start_weight_update", "/update_weights", "/finish_weight_update"):
        r = post(server, path, {})
        assert r.status_code == 400 and "/update_weights_from_disk" in r.json()["error"]["message"]
    assert post(server, "/reset_prefix_cache", None).json() == {"success": True}
    assert httpx.get(server.url + "/get_world_size").json() == {"world_size": 1}


def test_frozen_must_name_a_served_model(tiny_model_dir):
    from temper.server.app import create_app
    from temper.server.models import ModelLoadError

    with pytest.raises(ModelLoadError, match="frozen"):
        create_app(ServerConfig(frozen=["ghost"]), {"policy": load(tiny_model_dir, "policy")})
