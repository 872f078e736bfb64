"""The Rollouts API over HTTP against a real temper server: the same rollouts, log-probs,
scores and vocabularies as in-process, weight versions and updates, frozen models, strategies,
OPD with a served teacher, and every failure as a ServerError carrying the server's message."""

from __future__ import annotations

import json

import numpy as np
import pytest
from server_helpers import ServerThread

from temper.decoding.engines.hf import HFEngine
from temper.server.config import ServerConfig
from temper.training_adapters.distillation import OnPolicyDistillation
from temper.training_adapters.http_transport import ServerError
from temper.training_adapters.rollouts import Rollouts

PROMPTS = ["Say hi.", [5, 6, 7, 8], [{"role": "user", "content": "What is 2+3?"}]]


def load(path, name):
    return HFEngine.from_pretrained(str(path), name=name, device="cpu", dtype="float32")


def serve(tiny_model_dir, second_model_dir, mode):
    engines = {"student": load(tiny_model_dir, "student"), "teacher": load(second_model_dir, "teacher")}
    config = ServerConfig(frozen=["teacher"], logprobs_mode=mode, request_timeout=60)
    return ServerThread(config, engines)


@pytest.fixture
def server(tiny_model_dir, second_model_dir):
    with serve(tiny_model_dir, second_model_dir, "processed_logprobs") as srv:
        yield srv


@pytest.fixture
def remote(server):
    r = Rollouts.http(server.base_url)  # ".../v1" and the root are the same server
    yield r
    r.close()


@pytest.fixture
def local(tiny_model_dir, second_model_dir):
    r = Rollouts.local({"student": load(tiny_model_dir, "student"), "teacher": load(second_model_dir, "teacher")})
    yield r
    r.close()


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_same_rollouts_over_http_as_in_process(remote, local, temperature):
    kw = dict(n=2, max_tokens=8, seed=11, temperature=temperature, model="student")
    over_http, in_process = remote.generate(PROMPTS, **kw), local.generate(PROMPTS, **kw)
    for a, b in zip(over_http, in_process, strict=True):
        assert a.prompt_token_ids == b.prompt_token_ids and a.model == "student" and a.weight_version == 0
        for x, y in zip(a.rollouts, b.rollouts, strict=True):
            assert x.token_ids == y.token_ids and x.text == y.text and x.finish_reason == y.finish_reason
            np.testing.assert_allclose(x.logprobs, y.logprobs, atol=1e-4)  # the sampled distribution's


def test_raw_mode_server_keeps_logprobs_only_where_raw_is_sampled(tiny_model_dir, second_model_dir, local):
    with serve(tiny_model_dir, second_model_dir, "raw_logprobs") as srv, Rollouts.http(srv.url) as r:
        (plain,) = r.generate(["hi"], n=1, max_tokens=4, seed=1)
        (hot,) = r.generate(["hi"], n=1, max_tokens=4, seed=1, temperature=0.5)
    (want,) = local.generate(["hi"], n=1, max_tokens=4, seed=1)
    np.testing.assert_allclose(plain.rollouts[0].logprobs, want.rollouts[0].logprobs, atol=1e-4)
    assert hot.rollouts[0].logprobs is None  # raw log-probs are not the tempered q's


def test_scores_and_vocabulary_match(remote, local):
    seqs = [[5, 6, 7, 8, 9], [10, 11, 12], [1, 2, 3, 4]]
    starts = [2, 2, 1]  # two requests: sequences sharing a start go together
    for model in ("student", "teacher"):
        got = remote.score(seqs, starts, top_k=3, model=model)
        want = local.score(seqs, starts, top_k=3, model=model)
        for a, b in zip(got, want, strict=True):
            np.testing.assert_allclose(a.logp, b.logp, atol=1e-5)
            np.testing.assert_array_equal(a.top_ids, b.top_ids)
            np.testing.assert_allclose(a.top_logps, b.top_logps, atol=1e-5)
        assert remote.vocabulary(model).text_ids == local.vocabulary(model).text_ids
        assert remote.vocabulary(model).chat_ids == local.vocabulary(model).chat_ids


def test_weight_updates_and_frozen_models(remote, second_model_dir):
    assert remote.update_weights(second_model_dir, model="student") == 1
    (g,) = remote.generate(["hi"], n=1, max_tokens=3, model="student")
    assert g.weight_version == 1
    with pytest.raises(ServerError, match="'teacher' is frozen") as err:
        remote.update_weights(second_model_dir, model="teacher")
    assert err.value.status == 409
    with pytest.raises(ServerError, match="HTTP 400: path") as err:
        remote.update_weights("/nowhere", model="student")
    assert err.value.param == "path"


def test_strategies_over_http(remote):
    (p,) = remote.generate(["hi"], n=2, max_tokens=5, seed=3, decoding={"strategy": "power", "alpha": 2.0})
    assert p.metadata["strategy"] == "power" and len(p.rollouts) == 2
    assert all(r.logprobs is None for r in p.rollouts)  # not drawn token by token
    given = ["\\boxed{4}", "\\boxed{4}", "\\boxed{5}"]
    decoding = {"strategy": "synthesis", "rollout_texts": given, "anchor_model": "teacher"}
    (s,) = remote.generate(["2+2?"], n=1, max_tokens=6, seed=3, decoding=decoding, model="student")
    assert s.metadata["answers"] == ["4", "4", "5"] and s.metadata["anchor_model"] == "teacher"


def test_server_errors_carry_the_servers_message(remote, server):
    with pytest.raises(ServerError, match=r"HTTP 400: decoding.strategy: unknown strategy 'nope'"):
        remote.generate(["hi"], max_tokens=3, decoding={"strategy": "nope"})
    with pytest.raises(ServerError, match=r"HTTP 404: The model `nobody` does not exist"):
        remote.generate(["hi"], max_tokens=3, model="nobody")
    with Rollouts.http("http://127.0.0.1:9") as down:
        with pytest.raises(ServerError, match="ConnectError"):
            down.generate(["hi"], max_tokens=3)


def test_opd_with_a_served_teacher(remote, local):
    opd = OnPolicyDistillation(remote, student_model="student", teacher_model="teacher")
    groups = opd.sample(PROMPTS[:2], n=2, max_tokens=6, seed=5)
    b = opd.batch(groups)
    local_opd = OnPolicyDistillation(local, student_model="student", teacher_model="teacher")
    want = local_opd.batch(groups)  # the same rollouts, scored in-process
    np.testing.assert_allclose(b.teacher_logprobs, want.teacher_logprobs, atol=1e-5)
    assert b.mean_reverse_kl == pytest.approx(want.mean_reverse_kl, abs=1e-5)
    assert b.weight_versions == [0, 0, 0, 0]


def test_rollout_job_against_a_server(server, tmp_path, capsys):
    from temper.server.cli import main

    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\n{"messages": [{"role": "user", "content": "yo"}], "id": "chat"}\n')
    out = tmp_path / "out.jsonl"
    args = ["rollouts", "--prompts", str(prompts), "--out", str(out), "--url", server.url, "--n", "2"]
    args += ["--max-tokens", "5", "--model-name", "student", "--seed", "1", "--no-progress"]
    assert main(args) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()[1:]]
    assert sorted(map(str, (r["id"] for r in rows))) == ["1", "chat"]
    assert all(r["model"] == "student" and r["weight_version"] == 0 and len(r["rollouts"]) == 2 for r in rows)
    assert main(args) == 0 and "2 already done, 0 generated now" in capsys.readouterr().err


def test_rollout_job_server_refusals_and_outages(server, tmp_path, capsys):
    from temper.server.cli import main

    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    base = ["rollouts", "--prompts", str(prompts), "--max-tokens", "5", "--no-progress"]
    bad = [*base, "--out", str(tmp_path / "a.jsonl"), "--url", server.url, "--decoding", '{"strategy": "nope"}']
    assert main(bad) == 2  # the server refused the request: rerunning would not help
    err = capsys.readouterr().err
    assert "HTTP 400: decoding.strategy: unknown strategy 'nope'" in err and "resume" not in err
    down = [*base, "--out", str(tmp_path / "b.jsonl"), "--url", "http://127.0.0.1:9"]
    assert main(down) == 1  # before the job starts: the server's model list
    assert "127.0.0.1:9/v1/models: ConnectError" in capsys.readouterr().err
    assert main([*down, "--model-name", "m"]) == 1  # mid-job
    assert "1 of 1 prompts are not done; run the same command again to resume" in capsys.readouterr().err
