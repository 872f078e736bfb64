"""Helpers shared by the examples: start `temper serve` as a child process and wait for it,
pick a free port, print a step's numbers. Not part of the temper package."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def temper_server(
    models: Mapping[str, Path], *, frozen: Sequence[str] = (), extra: Sequence[str] = ()
) -> Iterator[str]:
    """`temper serve --model NAME=PATH ... --frozen NAME ...` on a free port; yields its URL."""
    port = free_port()
    cmd = [sys.executable, "-m", "temper.server.cli", "serve", "--port", str(port), "--log-level", "warning"]
    for name, path in models.items():
        cmd += ["--model", f"{name}={path}"]
    for name in frozen:
        cmd += ["--frozen", name]
    cmd += list(extra)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    print("$", " ".join(cmd[1:]), flush=True)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"temper serve exited with status {proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("temper serve did not come up within 120 s")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def arithmetic(count: int, seed: int = 0) -> list[tuple[str, str]]:
    """(question, answer) pairs: "What is 3+4?" → "3+4=7. The answer is \\boxed{7}."."""
    rng = __import__("random").Random(seed)
    out = []
    for _ in range(count):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        out.append((f"What is {a}+{b}?", f"{a}+{b}={a + b}. The answer is \\boxed{{{a + b}}}."))
    return out


def finetune(
    model_dir: Path, pairs: Sequence[tuple[str, str]], *, steps: int, lr: float = 3e-3, batch: int = 16, seed: int = 0
) -> Path:
    """Supervised fine-tuning of a tiny model in place on chat-formatted (question, answer) pairs
    (loss on the answer tokens only), so that it answers in a recognisable way."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).train()
    rows = []
    for q, a in pairs:
        prompt = tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True)
        prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
        answer = tok(a + "<|im_end|>", add_special_tokens=False)["input_ids"]
        rows.append((prompt + answer, len(prompt)))
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    rng = __import__("random").Random(seed)
    for _ in range(steps):
        chosen = rng.sample(rows, min(batch, len(rows)))
        width = max(len(s) for s, _ in chosen)
        ids = torch.full((len(chosen), width), tok.pad_token_id)
        labels = torch.full((len(chosen), width), -100)
        attn = torch.zeros((len(chosen), width), dtype=torch.long)
        for i, (seq, p) in enumerate(chosen):
            ids[i, : len(seq)] = torch.tensor(seq)
            labels[i, p : len(seq)] = torch.tensor(seq[p:])
            attn[i, : len(seq)] = 1
        loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(model_dir, safe_serialization=True)
    return model_dir


# The anchor's synthesis template in the CaT example: short, so a tiny model can learn it.
SYNTHESIS_TEMPLATE = "Attempts:\n{rollouts}\nOne correct solution:"


def synthesis_pairs(count: int, group: int = 4, seed: int = 0) -> list[tuple[str, str]]:
    """(synthesis prompt, answer) pairs in the CaT example's format: `group` attempts at a+b,
    each wrong with probability 0.4, rendered as the synthesis strategy renders them; the
    answer is the correct solution. Teaches a tiny model the anchor's job."""
    from temper.decoding.synthesis_prompt import render

    rng = __import__("random").Random(seed)
    out = []
    for _ in range(count):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        attempts = []
        for _ in range(group):
            c = a + b if rng.random() < 0.6 else rng.randint(0, 18)
            attempts.append(f"{a}+{b}={c}. The answer is \\boxed{{{c}}}.")
        out.append((render(SYNTHESIS_TEMPLATE, attempts), f"{a}+{b}={a + b}. The answer is \\boxed{{{a + b}}}."))
    return out
