"""bench/quality.py: its statistics, its strategy table, and a small end-to-end run against a real
server on the bundled demo model (the full run is `make bench-quality`)."""

from __future__ import annotations

import json

import pytest
from server_helpers import ServerThread

from bench import quality
from temper.decoding.engines.hf import DEFAULT_MODEL_PATH, HFEngine
from temper.server.config import ServerConfig


def test_wilson_interval():
    lo, hi = quality.wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = quality.wilson(50, 100)
    assert (lo, hi) == (pytest.approx(0.4038, abs=1e-4), pytest.approx(0.5962, abs=1e-4))
    assert quality.wilson(0, 0) == (0.0, 1.0)


def test_every_strategy_at_two_or_three_budgets():
    full = quality.configs("full")
    names = [c.strategy for c in full]
    for name in ("greedy", "sample", "low_temp"):
        assert names.count(name) == 1
    for name in ("power_mh", "power_smc", "best_of_n", "self_consistency", "synthesis"):
        assert names.count(name) in (2, 3), name
    smoke = quality.configs("smoke")
    assert sorted({c.strategy for c in smoke}) == sorted(set(names)) and len(smoke) == len(set(names))
    low = next(c for c in full if c.strategy == "low_temp")
    assert low.temperature == 1 / quality.ALPHA and low.decoding is None
    assert all(c.decoding["alpha"] == quality.ALPHA for c in full if c.strategy.startswith("power"))


def test_bad_flags_are_named(capsys):
    with pytest.raises(SystemExit) as e:
        quality.main(["--strategies", "greedy,nope"])
    assert e.value.code == 2 and "--strategies: unknown nope" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        quality.main(["--problems", "0"])
    assert e.value.code == 2 and "--problems" in capsys.readouterr().err


def test_a_small_run_writes_table_json_and_plot(tmp_path):
    engine = HFEngine.from_pretrained(DEFAULT_MODEL_PATH, device="cpu", dtype="float32")
    with ServerThread(ServerConfig(), {"demo": engine}) as srv:
        argv = ["--url", srv.url, "--problems", "3", "--budget", "smoke", "--strategies", "greedy,power_smc",
                "--out", str(tmp_path)]
        assert quality.main(argv) == 0
    result = json.loads((tmp_path / "quality.json").read_text())
    assert result["problems"] == 3 and [r["strategy"] for r in result["results"]] == ["greedy", "power_smc"]
    for r in result["results"]:
        assert r["problems"] == 3 and r["accuracy"] == r["correct"] / 3 and r["tokens_per_problem"] > 0
        assert r["ci95"] == list(quality.wilson(r["correct"], 3))
    assert "mean_final_ess" in result["results"][1]  # the strategy's own diagnostics come through
    assert (tmp_path / "quality.md").read_text().count("\n| ") == 3 and (tmp_path / "quality.png").stat().st_size
