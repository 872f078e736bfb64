"""Durable rollout jobs: every prompt exactly once across crashes and reruns, the prompts file
and the output file checked before anything is generated, and a real job process killed with
SIGKILL then finished by running the same command again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from temper.decoding.engines.toy import ToyEngine, ToyModel
from temper.server.cli import main
from temper.training_adapters.prompt_file import PromptFileError, read_prompts
from temper.training_adapters.rollout import RolloutConfig
from temper.training_adapters.rollout_file import OutputFileError
from temper.training_adapters.rollout_job import run_rollout_job
from temper.training_adapters.rollouts import Rollouts

ROOT = Path(__file__).resolve().parents[1]


def write_lines(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def read_out(path: Path) -> tuple[dict, list[dict]]:
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    return lines[0], lines[1:]


@pytest.fixture
def toy_rollouts():
    r = Rollouts.local({"toy": ToyEngine(ToyModel(vocab_size=4, seed=0, eos_logit=-1.0), max_context=64)})
    yield r
    r.close()


@pytest.fixture
def prompts(tmp_path) -> Path:
    lines = [{"prompt": "ab"}, {"prompt": [0, 1, 2], "id": "ids"}, {"messages": [{"role": "user", "content": "ba"}]}]
    lines += [{"prompt": "abc" * (i + 1), "answer": i} for i in range(9)]
    return write_lines(tmp_path / "prompts.jsonl", lines)


CONFIG = RolloutConfig(n=3, max_tokens=6, seed=5)


def job(prompts, out, rollouts, config=CONFIG, **kw):
    return run_rollout_job(prompts, out, config, rollouts, concurrency=kw.pop("concurrency", 4), progress=False, **kw)


def test_every_prompt_once_with_ids_and_extras(tmp_path, prompts, toy_rollouts):
    out = tmp_path / "out.jsonl"
    s = job(prompts, out, toy_rollouts)
    assert (s.prompts, s.already_done, s.generated) == (12, 0, 12) and s.completion_tokens > 0
    head, rows = read_out(out)
    assert head["format"] == "temper-rollouts" and head["job"]["config"]["n"] == 3
    assert head["job"]["config"]["model"] == "toy"
    assert sorted(map(str, (r["id"] for r in rows))) == sorted(map(str, [1, "ids", 3, *range(4, 13)]))
    by_id = {r["id"]: r for r in rows}
    assert by_id["ids"]["prompt_token_ids"] == [0, 1, 2]
    assert by_id[4]["extra"] == {"answer": 0} and "extra" not in by_id[1]
    for r in rows:
        assert len(r["rollouts"]) == 3 and r["weight_version"] == 0 and r["model"] == "toy"
        for ro in r["rollouts"]:
            assert len(ro["logprobs"]) == len(ro["token_ids"]) >= 1
    again = job(prompts, out, toy_rollouts)
    assert (again.already_done, again.generated) == (12, 0)
    assert len(read_out(out)[1]) == 12


def test_a_crash_leftover_is_cut_and_the_resumed_job_draws_the_same(tmp_path, prompts, toy_rollouts):
    whole = tmp_path / "whole.jsonl"
    job(prompts, whole, toy_rollouts)
    text = whole.read_text().splitlines(keepends=True)
    crashed = tmp_path / "crashed.jsonl"
    # the header and 4 results, then a line cut off mid-write (no newline): what kill -9 leaves
    crashed.write_text("".join(text[:5]) + text[5][: len(text[5]) // 2])
    s = job(prompts, crashed, toy_rollouts, concurrency=1)
    assert (s.already_done, s.generated) == (4, 8)
    _, rows = read_out(crashed)
    _, want = read_out(whole)
    assert len(rows) == 12 and len({json.dumps(r["id"]) for r in rows}) == 12
    key = lambda r: json.dumps(r["id"])
    assert sorted(rows, key=key) == sorted(want, key=key)  # seeded per prompt: same rollouts


@pytest.mark.parametrize(
    "content, match",
    [
        (b"hello world\n", "is not a temper rollouts file"),
        (b'{"format": "something-else"}\n{"id": 1}\n', "is not a temper rollouts file"),
        (b"no newline at all", r"no complete first line"),
        (b'{"format": "temper-rollouts", "version": 99, "job": {}}\n', "version 99"),
    ],
)
def test_foreign_output_is_refused_and_left_alone(tmp_path, prompts, toy_rollouts, content, match):
    out = tmp_path / "out.jsonl"
    out.write_bytes(content)
    with pytest.raises(OutputFileError, match=match):
        job(prompts, out, toy_rollouts)
    assert out.read_bytes() == content


def corrupt_middle(lines):
    lines[3] = "{not json\n"
    return lines


def unknown_id(lines):
    row = json.loads(lines[2])
    row["id"] = "stranger"
    lines[2] = json.dumps(row) + "\n"
    return lines


def repeated_id(lines):
    return [*lines, lines[1]]


@pytest.mark.parametrize(
    "edit, match",
    [
        (corrupt_middle, "line 4 is corrupt"),
        (unknown_id, "line 3 holds id 'stranger', which is not in the prompts file"),
        (repeated_id, r"line 14 repeats id .* \(first on line 2\)"),
    ],
)
def test_damaged_output_is_refused_and_left_alone(tmp_path, prompts, toy_rollouts, edit, match):
    out = tmp_path / "out.jsonl"
    job(prompts, out, toy_rollouts)
    damaged = "".join(edit(out.read_text().splitlines(keepends=True)))
    out.write_text(damaged)
    with pytest.raises(OutputFileError, match=match):
        job(prompts, out, toy_rollouts)
    assert out.read_text() == damaged


def test_another_jobs_output_is_refused(tmp_path, prompts, toy_rollouts):
    out = tmp_path / "out.jsonl"
    job(prompts, out, toy_rollouts)
    before = out.read_bytes()
    with pytest.raises(OutputFileError, match=r"another job \(config.n: 3 in the file, 2 now\)"):
        job(prompts, out, toy_rollouts, RolloutConfig(n=2, max_tokens=6, seed=5))
    with prompts.open("a") as f:
        f.write(json.dumps({"prompt": "c"}) + "\n")
    with pytest.raises(OutputFileError, match="another job .*prompts"):
        job(prompts, out, toy_rollouts)
    assert out.read_bytes() == before
    with pytest.raises(OutputFileError, match="is a directory"):
        job(prompts, tmp_path, toy_rollouts)


@pytest.mark.parametrize(
    "lines, match",
    [
        (['{"prompt": "a"}', "{oops"], r"line 2: not valid JSON \(Expecting property name"),
        (['{"prompt": "a"}', "", "[1, 2]"], r"line 3: must be a JSON object"),
        (['{"text": "a"}'], r"line 1: needs exactly one of `prompt`"),
        (['{"prompt": "a", "messages": []}'], r"line 1: needs exactly one of"),
        (['{"prompt": ""}'], r"line 1: prompt: empty text"),
        (['{"prompt": [1, -1]}'], r"line 1: prompt\[1\]: token ids must be integers >= 0"),
        (['{"prompt": [{"role": "user", "content": "a"}]}'], r"line 1: prompt: chat messages go in `messages`"),
        (['{"messages": "hi"}'], r"line 1: messages: must be a list of chat messages"),
        (['{"prompt": "a", "id": true}'], r"line 1: id: must be a non-empty string or an integer"),
        (['{"prompt": "a", "id": "x"}', '{"prompt": "b", "id": "x"}'], r"line 2: id 'x' is already used on line 1"),
        (['{"prompt": "a"}', '{"prompt": "b", "id": 1}'], r"line 2: id 1 is already used on line 1"),
        (["", "  "], r"no prompts in the file"),
    ],
)
def test_bad_prompt_lines_are_named(tmp_path, lines, match):
    path = write_lines(tmp_path / "p.jsonl", lines)
    with pytest.raises(PromptFileError, match=match):
        read_prompts(path)


def test_non_utf8_and_missing_prompt_files(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"prompt": "a"}\n{"prompt": "\xff"}\n')
    with pytest.raises(PromptFileError, match="line 2: not UTF-8"):
        read_prompts(path)
    with pytest.raises(PromptFileError, match="cannot read the prompts file"):
        read_prompts(tmp_path / "missing.jsonl")


def test_a_prompt_the_model_cannot_take_stops_the_job_before_generating(tmp_path, toy_rollouts):
    path = write_lines(tmp_path / "p.jsonl", [{"prompt": "ab"}, {"prompt": "ab" * 40}])
    out = tmp_path / "out.jsonl"
    with pytest.raises(ValueError, match=r"p.jsonl line 2: 80 tokens do not fit the context of 'toy'"):
        job(path, out, toy_rollouts)
    assert not out.exists()


# ---------------------------------------------------------------- the command line


def test_cli_bad_line_exits_2_before_loading_anything(tmp_path, capsys):
    path = write_lines(tmp_path / "p.jsonl", ['{"prompt": "a"}', '{"prompt": 3}'])
    out = tmp_path / "out.jsonl"
    code = main(["rollouts", "--prompts", str(path), "--out", str(out), "--max-tokens", "4", "--model", "/nowhere"])
    assert code == 2 and not out.exists()
    err = capsys.readouterr().err
    assert "p.jsonl line 2: prompt: must be text, a list of token ids" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "args, match",
    [
        (["--decoding", "{nope"], "argument --decoding: not valid JSON"),
        (["--decoding", "[1]"], "argument --decoding: must be a JSON object"),
        (["--model", "=x"], "argument --model: expected PATH or NAME=PATH"),
    ],
)
def test_cli_bad_arguments(tmp_path, capsys, args, match):
    path = write_lines(tmp_path / "p.jsonl", ['{"prompt": "a"}'])
    with pytest.raises(SystemExit) as exc:
        main(["rollouts", "--prompts", str(path), "--out", str(tmp_path / "o"), "--max-tokens", "4", *args])
    assert exc.value.code == 2 and match in capsys.readouterr().err


def test_cli_bad_setting_and_unloadable_model(tmp_path, capsys):
    path = write_lines(tmp_path / "p.jsonl", ['{"prompt": "a"}'])
    base = ["rollouts", "--prompts", str(path), "--out", str(tmp_path / "o"), "--max-tokens", "4"]
    assert main([*base, "--n", "0", "--model", "/nowhere"]) == 2
    assert "n: Input should be greater than or equal to 1" in capsys.readouterr().err
    assert main([*base, "--model", str(tmp_path / "missing")]) == 2
    assert "no model directory" in capsys.readouterr().err


def count_results(path: Path) -> int:
    try:
        return max(path.read_bytes().count(b"\n") - 1, 0)
    except FileNotFoundError:
        return 0


def test_killed_job_finishes_on_rerun_with_every_prompt_once(tmp_path, tiny_model_dir):
    """A real `temper rollouts` process, SIGKILLed mid-job; the same command then finishes it."""
    n_prompts = 24
    path = write_lines(tmp_path / "p.jsonl", [{"prompt": f"Question {i}: say something."} for i in range(n_prompts)])
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "temper.server.cli", "rollouts", "--prompts", str(path), "--out", str(out)]
    cmd += ["--n", "2", "--max-tokens", "48", "--seed", "3", "--concurrency", "2", "--no-progress"]
    cmd += ["--model", f"tiny={tiny_model_dir}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while count_results(out) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, f"the job ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    partial = count_results(out)
    assert 3 <= partial < n_prompts
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert f"{partial} already done" in done.stderr.decode()
    head, rows = read_out(out)
    assert head["job"]["prompts"] == n_prompts
    assert sorted(r["id"] for r in rows) == list(range(1, n_prompts + 1))  # each exactly once
    assert all(len(r["rollouts"]) == 2 for r in rows)
    # seeded per prompt: the interrupted job drew what an uninterrupted one draws
    with Rollouts.local({"tiny": tiny_model_dir}) as r:
        run_rollout_job(path, tmp_path / "whole.jsonl", RolloutConfig(n=2, max_tokens=48, seed=3), r, progress=False)
    tokens = lambda rows: {x["id"]: [ro["token_ids"] for ro in x["rollouts"]] for x in rows}
    assert tokens(rows) == tokens(read_out(tmp_path / "whole.jsonl")[1])
