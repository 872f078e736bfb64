"""Streamed `sample` chunks carry the log-probs of the tokens whose text they send (as vLLM and
OpenAI do), and all of a stream's entries together are the non-streamed response's, same seed."""

from __future__ import annotations

import pytest
import test_server_openai as shared

CHAT = shared.CHAT
server, client = shared.server, shared.client  # its fixtures, for a server of this module's own

APPROX = 1e-5


def _stream_completion(api, **kw) -> tuple[dict, dict, dict]:
    """Per choice index: the joined text, the joined legacy logprobs, and how many chunks
    carried entries. Also checks each text chunk's entries start inside that chunk's text."""
    text, got, carrying = {}, {}, {}
    for ch in api.completions.create(stream=True, **kw):
        for c in ch.choices:
            start = len(text.get(c.index, ""))
            text[c.index] = text.get(c.index, "") + c.text
            lp = c.logprobs
            if lp is None or not lp.tokens:
                continue
            carrying[c.index] = carrying.get(c.index, 0) + 1
            if not c.finish_reason:
                assert all(start <= o < start + len(c.text) for o in lp.text_offset), (c.text, lp.text_offset)
            acc = got.setdefault(c.index, {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []})
            for key in acc:
                acc[key] += getattr(lp, key)
    return text, got, carrying


def _same_legacy(streamed: dict, full) -> None:
    assert streamed["tokens"] == full.tokens
    assert streamed["text_offset"] == full.text_offset
    assert streamed["token_logprobs"] == pytest.approx(full.token_logprobs, abs=APPROX)
    for a, b in zip(streamed["top_logprobs"], full.top_logprobs, strict=True):
        if a is None or b is None:  # an echoed prompt's first token
            assert a is b is None
            continue
        assert list(a) == list(b)  # same alternatives, same order
        assert list(a.values()) == pytest.approx(list(b.values()), abs=APPROX)


@pytest.mark.parametrize("n", [1, 2])
def test_completion_stream_spreads_logprobs_over_chunks(client, n):
    kw = dict(model="tiny", prompt="Once upon", max_tokens=12, seed=21, n=n, logprobs=2)
    full = client.completions.create(**kw)
    text, got, carrying = _stream_completion(client, **kw)
    assert sorted(text) == list(range(n))
    for c in full.choices:
        assert text[c.index] == c.text
        _same_legacy(got[c.index], c.logprobs)
        assert len(c.logprobs.tokens) >= 3
        assert carrying[c.index] > 1  # not every entry in the last chunk


def test_completion_stream_logprobs_with_stop_string_and_echo(client):
    # a stop string that the text hits: held-back tokens go out with their text, cut ones never
    kw = dict(model="tiny", prompt="Say", max_tokens=16, logprobs=1)
    for seed in range(20):
        base = client.completions.create(seed=seed, **kw).choices[0].text
        cut = next((i for i, ch in enumerate(base) if i > 2 and ch.isascii() and ch.isalnum()), None)
        if cut is not None:
            break
    assert cut is not None
    stop = [base[cut - 1 : cut + 1], "\x00zz"]
    for extra in ({}, {"echo": True}):
        full = client.completions.create(seed=seed, stop=stop, **kw, **extra).choices[0]
        assert full.finish_reason == "stop"
        text, got, _ = _stream_completion(client, seed=seed, stop=stop, **kw, **extra)
        assert text[0] == full.text
        _same_legacy(got[0], full.logprobs)


def _stream_chat(api, **kw) -> tuple[dict, dict, dict]:
    text, got, carrying = {}, {}, {}
    for ch in api.chat.completions.create(stream=True, **kw):
        for c in ch.choices:
            text[c.index] = text.get(c.index, "") + (c.delta.content or "")
            if c.logprobs is not None and c.logprobs.content:
                carrying[c.index] = carrying.get(c.index, 0) + 1
                got.setdefault(c.index, []).extend(c.logprobs.content)
    return text, got, carrying


def _same_entry(a, b) -> None:
    assert (a.token, a.bytes) == (b.token, b.bytes)
    assert a.logprob == pytest.approx(b.logprob, abs=APPROX)
    assert [(t.token, t.bytes) for t in a.top_logprobs] == [(t.token, t.bytes) for t in b.top_logprobs]
    assert [t.logprob for t in a.top_logprobs] == pytest.approx([t.logprob for t in b.top_logprobs], abs=APPROX)


@pytest.mark.parametrize("n", [1, 2])
def test_chat_stream_spreads_logprobs_over_chunks(client, n):
    kw = dict(model="tiny", messages=CHAT, max_tokens=12, seed=5, n=n, logprobs=True, top_logprobs=2)
    full = client.chat.completions.create(**kw)
    text, got, carrying = _stream_chat(client, **kw)
    assert sorted(text) == list(range(n))
    for c in full.choices:
        assert text[c.index] == c.message.content
        assert len(got[c.index]) == len(c.logprobs.content) >= 3
        for a, b in zip(got[c.index], c.logprobs.content, strict=True):
            assert len(a.top_logprobs) == 2
            _same_entry(a, b)
        assert carrying[c.index] > 1


def test_power_stream_logprobs_unchanged(client):
    """Strategies that do not stream tokens replay their final text: same entries as non-streamed."""
    from temper.decoding.strategies.registry import strategies

    if "power" not in strategies():
        pytest.skip("power strategy not registered")
    decoding = {"strategy": "power", "alpha": 2.0, "block_size": 2, "mcmc_steps": 1}
    kw = dict(model="tiny", prompt="Hi", max_tokens=6, seed=4, logprobs=2, extra_body={"decoding": decoding})
    full = client.completions.create(**kw).choices[0]
    text, got, _ = _stream_completion(client, **kw)
    assert text[0] == full.text
    _same_legacy(got[0], full.logprobs)


def test_draws_without_top_alternatives_leave_entries_to_the_final_chunk(server):
    """An engine whose draws lack the asked-for top alternatives (they come only with the
    finished sample): text still streams, and the final chunk carries every entry."""
    import numpy as np

    from temper.decoding.engine import TokenDraw
    from temper.server.logprobs import TokenLogprobs
    from temper.server.streaming import StreamedChoice

    tok = server.state.engines["tiny"].tokenizer
    ids = tok.encode("abc")
    top = (np.array([ids[0], 7]), np.array([-0.5, -1.5], dtype=np.float32))
    live = StreamedChoice(tok, [], k=2)
    first = TokenLogprobs([ids[0]], [-0.5], [[(ids[0], -0.5), (7, -1.5)]])
    assert live.push(TokenDraw(ids[0], -0.5, *top)) == ("a", first)
    bare = StreamedChoice(tok, [], k=2)
    pieces = [bare.push(TokenDraw(t, -1.0)) for t in ids]
    assert [p for p, _ in pieces] == ["a", "b", "c"] and all(lp.tokens == [] for _, lp in pieces)
    whole = TokenLogprobs(ids, [-1.0] * 3, [[]] * 3)
    assert bare.finish("abc", whole) == ("", whole)
