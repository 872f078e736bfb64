"""Train the bundled demo model from scratch on CPU: `make demo-model` (one deterministic command).

What this is: the recipe that writes temper/assets/demo/, a Hugging Face model directory
(config.json, model.safetensors, tokenizer with the ChatML chat template, generation_config.json
with the eos ids) that `temper serve` serves by default and `HFEngine.from_pretrained` loads:
  1. check memory and disk first (a clear message and exit status 2 when short);
  2. generate the training examples (tools/demo_data.py, seed TRAIN_SEED);
  3. train a byte-level BPE tokenizer on them (digits stay single tokens, with or without the
     space before them, so column arithmetic works digit by digit);
  4. train a Llama-shaped causal LM (head_dim 64, which vLLM's CPU attention accepts) on the
     assistant turns only, one pass over the examples, fixed seed, fixed thread count;
  5. write the directory atomically (a temporary directory renamed into place).

Deterministic: the same flags and the same torch thread count give the same weights
(`--threads` is part of the recipe because float reductions depend on it).

What this is not: the data (tools/demo_data.py) or the benchmark (bench/quality.py).

    python -m tools.demo_model [--out temper/assets/demo] [--examples N] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from temper.tiny_model import CHAT_TEMPLATE, SPECIALS
from tools.demo_data import TRAIN_EXAMPLES, TRAIN_SEED, Example, chat_text, examples

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "temper" / "assets" / "demo"
EOS, PAD = "<|im_end|>", "<|endoftext|>"
GIB, MIB = 1 << 30, 1 << 20
WIDTH_STEP = 64  # batches are padded to a multiple of this many tokens


@dataclass(frozen=True)
class TrainConfig:
    seed: int = TRAIN_SEED
    examples: int = TRAIN_EXAMPLES
    vocab_size: int = 512
    hidden: int = 256
    layers: int = 4
    heads: int = 4  # head_dim = hidden / heads = 64
    intermediate: int = 768
    max_positions: int = 2048
    max_len: int = 1536  # longer examples (a few synthesis prompts) are left out
    batch_tokens: int = 4096  # padded tokens per batch
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.1
    # One thread: on a small shared machine two OpenMP threads lose more to waiting on each
    # other (whenever a neighbour's process takes a core) than they gain.
    threads: int = 1
    bf16: bool = True  # autocast the forward pass


# ---------------------------------------------------------------- resources


def available_memory() -> int:
    """Bytes of memory available to a new process (MemAvailable on Linux)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def free_disk(path: Path) -> int:
    """Free bytes on the file system that will hold `path` (its nearest existing parent)."""
    p = path.resolve()
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free


def resource_problem(memory: int, disk: int, need_memory: int, need_disk: int) -> str | None:
    """Why training cannot start, or None."""
    if memory < need_memory:
        return f"not enough memory: {memory / GIB:.1f} GiB available, {need_memory / GIB:.1f} GiB needed"
    if disk < need_disk:
        return f"not enough disk space: {disk / MIB:.0f} MiB free, {need_disk / MIB:.0f} MiB needed"
    return None


# ---------------------------------------------------------------- tokenizer


def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE with merges learned on the texts (any text encodes). Every digit is a token
    of its own, never merged with a neighbour or a space: the model sees each digit of each
    number as the same token wherever it stands, so copying "7" out of "37" into "7 + 8" is an
    identity copy. (Merging the space into a number's first digit saves ~15% of the tokens but
    gives every digit two tokens, and training took several times longer to learn to copy.)"""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\d"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def hf_tokenizer(tok):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        pad_token=PAD,
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=1 << 30,
    )


def encode_examples(tok, data: list[Example]) -> list[tuple[list[int], int]]:
    """Per example: (token ids of the whole chat, index where the assistant's answer starts)."""
    prompts = tok.encode_batch([chat_text(ex.user) for ex in data])
    fulls = tok.encode_batch([chat_text(ex.user, ex.response) for ex in data])
    out = []
    for p, f in zip(prompts, fulls, strict=True):
        if f.ids[: len(p.ids)] != p.ids:
            raise AssertionError("the chat prompt must tokenize to a prefix of the full example")
        out.append((f.ids[:-1], len(p.ids)))  # the newline after the final <|im_end|> is not learned
    return out


# ---------------------------------------------------------------- batches


def batches(encoded: list[tuple[list[int], int]], batch_tokens: int, seed: int) -> list[list[int]]:
    """Example indices per batch, in a seeded random order. Examples are bucketed by padded
    width (a multiple of WIDTH_STEP) and each batch holds batch_tokens // width of them, so the
    whole run uses a few dozen tensor shapes: on CPU every new shape costs oneDNN a new kernel
    plan, and thousands of them made training slow and its memory grow without bound."""
    rng = random.Random(seed)
    buckets: dict[int, list[int]] = {}
    for i, (ids, _) in enumerate(encoded):
        buckets.setdefault(padded_width(len(ids)), []).append(i)
    out: list[list[int]] = []
    for width in sorted(buckets):
        idx = buckets[width]
        rng.shuffle(idx)
        rows = max(1, batch_tokens // width)
        out += [idx[k : k + rows] for k in range(0, len(idx), rows)]
    rng.shuffle(out)
    return out


def padded_width(n: int) -> int:
    return -(-n // WIDTH_STEP) * WIDTH_STEP


def collate(encoded: list[tuple[list[int], int]], idx: list[int], pad_id: int):
    import torch

    width = padded_width(max(len(encoded[i][0]) for i in idx))
    ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
    labels = torch.full((len(idx), width), -100, dtype=torch.long)
    mask = torch.zeros((len(idx), width), dtype=torch.long)
    for r, i in enumerate(idx):
        seq, start = encoded[i]
        ids[r, : len(seq)] = torch.tensor(seq)
        labels[r, start : len(seq)] = torch.tensor(seq[start:])  # the answer and its <|im_end|>
        mask[r, : len(seq)] = 1
    return ids, mask, labels


# ---------------------------------------------------------------- model and training


def build_model(cfg: TrainConfig, vocab_size: int, eos_id: int, pad_id: int):
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden,
        intermediate_size=cfg.intermediate,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.heads,
        head_dim=cfg.hidden // cfg.heads,
        max_position_embeddings=cfg.max_positions,
        eos_token_id=[eos_id, pad_id],
        pad_token_id=pad_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=[eos_id, pad_id], pad_token_id=pad_id)
    return model


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, total - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def train(model, encoded, plan: list[list[int]], cfg: TrainConfig, pad_id: int, log_every: int = 50) -> list[float]:
    import torch

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.95),
    )
    model.train()
    losses, t0 = [], time.monotonic()
    for step, idx in enumerate(plan):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, len(plan), cfg)
        ids, mask, labels = collate(encoded, idx, pad_id)
        # bf16 matmuls (AMX / AVX512-BF16 where the CPU has them), fp32 weights and optimizer
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if (step + 1) % log_every == 0 or step + 1 == len(plan):
            recent = sum(losses[-log_every:]) / len(losses[-log_every:])
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)  # KiB on Linux
            print(f"step {step + 1}/{len(plan)}  loss {recent:.4f}  {time.monotonic() - t0:.0f}s  "
                  f"peak memory {rss:.1f} GiB", flush=True)
    model.eval()
    return losses


def write_model(out: Path, model, tok, cfg: TrainConfig, record: dict) -> None:
    """Write the directory next to `out` and rename it into place, so a failed run never leaves
    a half-written model where the server looks for one."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        hf_tokenizer(tok).save_pretrained(tmp)
        (tmp / "training.json").write_text(json.dumps({"config": asdict(cfg), **record}, indent=2) + "\n")
        tmp.chmod(0o755)  # mkdtemp makes it private; the model ships inside the package
        for f in tmp.iterdir():
            f.chmod(0o644)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--examples", type=int, default=TrainConfig.examples)
    ap.add_argument("--seed", type=int, default=TrainConfig.seed)
    ap.add_argument("--threads", type=int, default=TrainConfig.threads)
    ap.add_argument("--need-memory-gb", type=float, default=3.0, help="refuse to start with less available")
    ap.add_argument("--need-disk-mb", type=float, default=200.0, help="refuse to start with less free")
    a = ap.parse_args(argv)
    problem = resource_problem(available_memory(), free_disk(a.out), int(a.need_memory_gb * GIB),
                               int(a.need_disk_mb * MIB))
    if problem:
        print(f"demo-model: {problem}; training needs about {a.need_memory_gb:g} GiB of memory and "
              f"{a.need_disk_mb:g} MiB of disk (--need-memory-gb / --need-disk-mb)", file=sys.stderr)
        return 2
    import torch

    cfg = TrainConfig(examples=a.examples, seed=a.seed, threads=a.threads)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    t0 = time.monotonic()
    data = examples(cfg.examples, cfg.seed)
    tok = train_tokenizer([t for ex in data for t in (ex.user, ex.response)], cfg.vocab_size)
    encoded = [e for e in encode_examples(tok, data) if len(e[0]) <= cfg.max_len]
    plan = batches(encoded, cfg.batch_tokens, cfg.seed)
    n_tokens = sum(len(s) - start for s, start in encoded)
    print(f"{len(encoded)} examples ({len(data) - len(encoded)} too long), {n_tokens} answer tokens, "
          f"{len(plan)} steps, vocab {tok.get_vocab_size()}, data ready in {time.monotonic() - t0:.0f}s", flush=True)
    model = build_model(cfg, tok.get_vocab_size(), tok.token_to_id(EOS), tok.token_to_id(PAD))
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters", flush=True)
    losses = train(model, encoded, plan, cfg, tok.token_to_id(PAD))
    record = {"final_loss": sum(losses[-50:]) / len(losses[-50:]), "steps": len(plan),
              "answer_tokens": n_tokens, "seconds": round(time.monotonic() - t0), "torch": torch.__version__}
    write_model(a.out, model, tok, cfg, record)
    size = sum(f.stat().st_size for f in a.out.iterdir())
    print(f"wrote {a.out} ({size / MIB:.1f} MiB) in {time.monotonic() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
