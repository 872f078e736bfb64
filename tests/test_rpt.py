"""RPT data and rewards: token bytes from the tokenizer's own pieces, positions picked by the
proxy's top-16 entropy, examples that split text only where text can split, templates, and the
reward of a rollout for an example."""

from __future__ import annotations

import numpy as np
import pytest

from temper.decoding.engines.toy import ToyEngine, ToyModel
from temper.training_adapters.rollouts import Rollouts
from temper.training_adapters.rpt_data import RPTData, example_at, rpt_reward, select_positions
from temper.training_adapters.rpt_math import topk_entropy
from temper.training_adapters.rpt_prompt import TEMPLATES, rpt_messages
from temper.training_adapters.token_bytes import text_pieces, token_bytes
from temper.training_adapters.vocabulary import VocabularyError

DOC = "The sum of 12 and 30 is 42, café. Then {x} follows."


@pytest.fixture(scope="module")
def hf_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def metaspace_tokenizer():
    """A SentencePiece-style tokenizer: "▁" for spaces, <0xNN> byte fallback."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "▁": 1, "a": 2, "b": 3, "▁a": 4, "<0xC3>": 5, "<0xA9>": 6, "!": 7, "▁ab": 8}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("▁", "a"), ("▁a", "b")], byte_fallback=True, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def test_token_bytes_byte_level(hf_tokenizer):
    ids, pieces = text_pieces(hf_tokenizer, "hé!")
    assert pieces == [b"h", b"\xc3", b"\xa9", b"!"]  # é is split across two byte tokens
    assert token_bytes(hf_tokenizer, [hf_tokenizer.convert_tokens_to_ids("<|im_end|>")]) == [b"<|im_end|>"]


def test_token_bytes_sentencepiece_style():
    ids, pieces = text_pieces(metaspace_tokenizer(), "ab é!")
    assert ids == [8, 1, 5, 6, 7]
    assert pieces == [b"ab", b" ", b"\xc3", b"\xa9", b"!"]  # the prefix space of "▁ab" is taken off


@pytest.mark.parametrize(
    "entropy, kw, want",
    [
        ([0.1, 2.0, 0.5, 3.0], {}, [2, 4]),  # entropy[t-1] is the entropy before token t
        ([0.1, 2.0, 0.5, 3.0], {"min_context": 3}, [4]),
        ([0.1, 2.0, 0.5, 3.0], {"max_positions": 1}, [4]),
        ([2.0, 3.0, 2.5], {"max_positions": 2}, [2, 3]),  # the highest, in document order
        ([1.0, 1.0], {}, []),  # strictly above the threshold
    ],
)
def test_select_positions(entropy, kw, want):
    assert select_positions(np.array(entropy), 1.0, **kw) == want


def test_examples_split_only_between_characters():
    pieces = [b"a", b" ", b"\xc3", b"\xa9", b"!", b"b"]
    assert example_at(pieces, 3, 4) is None  # the context would end inside é
    assert example_at(pieces, 2, 1) is None  # a one-token window would end inside é
    assert example_at(pieces, 2, 2) == ("a ", "é", [1, 2])
    assert example_at(pieces, 2, 3) == ("a ", "é!", [1, 2, 3])
    assert example_at(pieces, 4, 10) == ("a é", "!b", [1, 2])  # the window stops at the end


def test_templates_put_the_context_in_verbatim():
    msgs = rpt_messages("x = {context} and \\boxed{1}", "v0")
    assert msgs[-1]["content"].endswith("### Context\nx = {context} and \\boxed{1}")
    assert [m["role"] for m in rpt_messages("c", "v2")] == ["system", "user"]
    assert "```\nc\n```" in rpt_messages("c", "v1")[0]["content"]
    assert set(TEMPLATES) == {"v0", "v1", "v2", "v3", "v6"}
    with pytest.raises(ValueError, match="unknown RPT template 'v9'"):
        rpt_messages("c", "v9")


def test_data_from_a_proxy(hf_engine, hf_tokenizer):
    proxy = Rollouts.local({"proxy": hf_engine})
    try:
        data = RPTData(hf_tokenizer, proxy, threshold=0.0, min_context=4, window=6)
        (ids, pieces, ent), _ = data.entropies([DOC, "x"])
        (sc,) = proxy.score([ids], 1, 16)
        np.testing.assert_allclose(ent, topk_entropy(sc.top_logps))
        examples = data.examples([DOC])
        assert examples and all(e.position >= 4 for e in examples)
        for e in examples:
            assert DOC.startswith(e.context + e.continuation)
            assert e.context.encode() == b"".join(pieces[: e.position])
            assert e.boundaries[-1] == len(e.continuation.encode())
            assert e.entropy == pytest.approx(float(ent[e.position - 1]))
            assert e.prompt[-1]["content"].endswith(e.context)
            first = pieces[e.position].decode("utf-8", errors="ignore")
            if first and first not in "{}":  # a whole-character token (a lone brace cannot be boxed)
                assert e.reward(f"<think>hmm</think> \\boxed{{{first}}}").value == 1.0
        row = examples[0].to_dict()
        assert set(row) == {"prompt", "continuation", "boundaries", "entropy", "document", "position"}
        # é is two byte tokens: no example targets its second byte
        cafe = DOC.index("é")
        assert all(len(e.context.encode()) != len(DOC[:cafe].encode()) + 1 for e in examples)
        hard = RPTData(hf_tokenizer, proxy, threshold=100.0)
        assert hard.examples([DOC]) == []
    finally:
        proxy.close()


def test_a_proxy_with_another_vocabulary_is_refused(hf_tokenizer):
    proxy = Rollouts.local({"toy": ToyEngine(ToyModel(vocab_size=4))})
    try:
        with pytest.raises(VocabularyError, match="RPT"):
            RPTData(hf_tokenizer, proxy)
    finally:
        proxy.close()


@pytest.mark.parametrize(
    "completion, value, reason",
    [
        ("<think>a number</think>\\boxed{ 42}", 1.0, "match"),
        ("<think>a number</think>\\boxed{ 42,}", 1.0, "match"),
        ("<think>a number</think>\\boxed{42}", 0.0, "not a prefix of the continuation"),
        ("<think>a number</think>\\boxed{ 4}", 0.0, "ends inside a token"),
        ("\\boxed{ 42}", 0.0, "no </think>"),
        ("<think>unsure</think>", 0.0, "no \\boxed{} after </think>"),
    ],
)
def test_rpt_reward(completion, value, reason):
    r = rpt_reward(completion, " 42, café", [3, 4, 10])  # tokens " 42" | "," | " café"
    assert (r.value, r.reason) == (value, reason)
