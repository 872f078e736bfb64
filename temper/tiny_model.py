"""Build tiny Hugging Face model directories: random weights, byte-level tokenizer, chat template.

Tests, benchmarks and the bundled default model all load through the very code path a real
model directory takes (AutoModelForCausalLM / AutoTokenizer), so nothing here is special-cased
by the engines. Deterministic: the same arguments write the same weights.

    python -m temper.tiny_model OUT_DIR [--hidden 64] [--layers 2] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

# ChatML-style template, the shape most open chat models use.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def build_tokenizer(out: Path, alphabet: str | None = None) -> int:
    """A byte-level BPE tokenizer with no merges (256 byte tokens + specials), or, with
    `alphabet`, one token per character of it (+ specials: an enumerable vocabulary for
    exactness tests). Returns vocab size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel

    if alphabet is None:
        vocab = {ch: i for i, ch in enumerate(sorted(ByteLevel.alphabet()))}  # stand-ins for bytes
        tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tok.decoder = decoders.ByteLevel()
    else:
        tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
        tok.decoder = decoders.BPEDecoder()
    tok.add_special_tokens(SPECIALS)
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "model_max_length": 1 << 30,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (out / "special_tokens_map.json").write_text(
        json.dumps({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}, indent=2)
    )
    return tok.get_vocab_size()


def build_tiny_model(
    out: str | Path,
    *,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    max_positions: int = 2048,
    seed: int = 0,
    init_std: float = 0.3,
    head_dim: int | None = None,
    reserved_vocab: int = 0,
    alphabet: str | None = None,
) -> Path:
    """Write a random-weight Llama-architecture model with a byte tokenizer to `out`.

    `init_std` is large on purpose: default HF init gives near-uniform next-token
    distributions, which make sampling tests uninformative.
    `head_dim`: None = hidden // heads (vLLM's CPU attention needs 64 or more).
    `reserved_vocab`: extra model-vocabulary ids past the tokenizer's, which the model never
    emits (log-prob below −100 everywhere), as real checkpoints pad their vocabularies; the
    vLLM engine's one-pass log-normaliser uses such an id (see `_reserve_vocab`).
    `alphabet`: a tokenizer of one token per character (+ the 3 specials) instead of bytes.
    """
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    vocab_size = build_tokenizer(out, alphabet)
    eos = vocab_size - 1  # <|im_end|>
    cfg = LlamaConfig(
        vocab_size=vocab_size + reserved_vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim or hidden // heads,
        max_position_embeddings=max_positions,
        initializer_range=init_std,
        eos_token_id=[eos, vocab_size - 3],
        pad_token_id=vocab_size - 3,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    if reserved_vocab:
        _reserve_vocab(model, vocab_size)
    model.save_pretrained(out, safe_serialization=True)
    GenerationConfig(eos_token_id=[eos, vocab_size - 3], pad_token_id=vocab_size - 3).save_pretrained(out)
    return out


@torch.no_grad()
def _reserve_vocab(model, first: int, level: float = 4.0, weight: float = 2000.0) -> None:
    """Make ids ≥ `first` never emitted: residual-stream channel 0 is held at `level` (constant
    embedding column, no layer writes to it), so after the final RMSNorm it is always positive,
    and the reserved rows of lm_head read only that channel, with a large negative weight."""
    m = model.model
    m.embed_tokens.weight[:, 0] = level
    for layer in m.layers:
        layer.self_attn.o_proj.weight[0, :] = 0.0
        layer.mlp.down_proj.weight[0, :] = 0.0
    head = model.lm_head.weight  # [V, hidden]
    head[first:] = 0.0
    head[first:, 0] = -weight


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(build_tiny_model(a.out, hidden=a.hidden, layers=a.layers, seed=a.seed))


if __name__ == "__main__":
    main()
