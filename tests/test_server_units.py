"""The server's pure pieces: incremental detokenizing, stop-string hold-back, token strings and
bytes, log-prob shapes, the Prometheus text format, error mapping."""

from __future__ import annotations

import numpy as np
import pytest

from temper.decoding.errors import ParamError
from temper.decoding.strategies.completion import Completion
from temper.server.errors import as_api_error
from temper.server.logprobs import FLOOR, TokenLogprobs, chat_content, legacy
from temper.server.metrics import Metrics, RequestRecord
from temper.server.streaming import replay
from temper.server.text import ChoiceText, IncrementalDetokenizer, TokenText, text_offsets


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    """The byte-level tokenizer of the tiny test model: one token per byte, which the byte
    arithmetic below relies on (the bundled demo model's tokenizer merges words)."""
    from temper.decoding.engines.hf import HFEngine

    return HFEngine.from_pretrained(tiny_model_dir, device="cpu", dtype="float32").tokenizer


def test_multibyte_text_is_held_until_it_decodes(tok):
    ids = tok.encode("h€é!")
    detok = IncrementalDetokenizer(tok)
    pieces = [detok.push(t) for t in ids]
    assert "".join(pieces) == "h€é!"
    assert all("\ufffd" not in p for p in pieces)
    assert pieces[1:4] == ["", "", "€"]  # three bytes, one character
    assert text_offsets(tok, ids) == [0, 1, 1, 1, 2, 2, 3]


def test_token_strings_and_bytes(tok):
    tt = TokenText(tok)
    ids = tok.encode("a€")
    assert tt.token_str(ids[0]) == "a" and tt.token_bytes(ids[0]) == b"a"
    assert [tt.token_str(i) for i in ids[1:]] == ["bytes:\\xe2", "bytes:\\x82", "bytes:\\xac"]
    assert b"".join(tt.token_bytes(i) for i in ids[1:]) == "€".encode()
    assert tt.token_str(tok.eos_ids[0]) == "<|im_end|>"


def test_stop_strings_are_held_back_and_never_sent(tok):
    ct = ChoiceText(tok, ["STOP"])
    sent = "".join(ct.push(t) for t in tok.encode("abcSTOPxyz"))
    assert sent == "abc" and ct.stopped
    assert ct.finish("abc") == ""
    ct = ChoiceText(tok, ["STOP"])
    sent = "".join(ct.push(t) for t in tok.encode("abcST"))
    assert sent == "ab"  # "cST" might still become a stop string
    assert ct.finish("abcST") == "cST"
    ct = ChoiceText(tok, ["LONGSTOP", "x"])  # the earliest stop wins, whatever its length
    sent = "".join(ct.push(t) for t in tok.encode("abcdefghijLONGSTOPx"))
    assert sent == "abcdefghij" and ct.text == "abcdefghij" and ct.stopped


def test_replay_clips_to_the_final_text(tok):
    c = Completion(tokens=tok.encode("hello world"), finish_reason="stop", text="hello")
    lp = TokenLogprobs.of(c.tokens, np.full(len(c.tokens), -1.0, dtype=np.float32))
    pieces = list(replay(tok, c, "hello", lp))
    assert "".join(p for p, _ in pieces) == "hello"
    assert sum(len(p.tokens) for _, p in pieces) == len(c.tokens)


def test_logprob_shapes(tok):
    tt = TokenText(tok)
    ids = tok.encode("ab")
    lp = TokenLogprobs([ids[0]], [None], [None]) + TokenLogprobs.of(
        ids[1:], np.array([-np.inf], dtype=np.float32), np.array([[ids[1], 5]]), np.array([[-0.5, -1.5]]), k=2
    )
    out = legacy(tt, lp, start_offset=10)
    assert out["tokens"] == ["a", "b"] and out["token_logprobs"] == [None, FLOOR]
    assert out["top_logprobs"][0] is None and out["top_logprobs"][1] == {"b": -0.5, tt.token_str(5): -1.5}
    assert out["text_offset"] == [10, 11]
    content = chat_content(tt, lp)
    assert content[1]["bytes"] == [98] and [e["logprob"] for e in content[1]["top_logprobs"]] == [-0.5, -1.5]


def test_prometheus_text():
    m = Metrics()
    m.watch(lambda: {}, lambda: (2, 8))
    rec = RequestRecord(m, model='m"1', strategy="sample", prompt_tokens=3, completion_tokens=5)
    rec.finish(200)
    rec.finish(500)  # a record counts once
    text = m.render().decode()
    assert 'temper_requests_total{model="m\\"1",status="200",strategy="sample"} 1.0' in text
    assert 'temper_tokens_total{kind="completion",model="m\\"1",strategy="sample"} 5.0' in text
    assert 'temper_request_seconds_bucket{le="+Inf",model="m\\"1",strategy="sample"} 1.0' in text
    assert "temper_queue_depth 2.0" in text and "temper_queue_limit 8.0" in text
    assert "# TYPE temper_request_seconds histogram" in text
    assert 'status="500"' not in text


def test_error_mapping():
    err = as_api_error(ParamError("decoding.alpha: bad", "decoding.alpha"))
    assert (err.status, err.param, err.type) == (400, "decoding.alpha", "BadRequestError")
    assert as_api_error(RuntimeError("boom")).status == 500
