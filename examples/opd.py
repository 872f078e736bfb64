"""On-policy distillation end to end on CPU: a tiny student learns from a tiny teacher served by
temper, over HTTP, with a plain PyTorch learner.

    python -m examples.opd            # about a minute on 2 CPU cores

Each step: the student (served by temper, kept in sync with the learner) samples rollouts;
the teacher (served by the same server, frozen) scores exactly those tokens through
/v1/logprobs; temper's OnPolicyDistillation turns them into per-token reverse KL and advantages
(−KL, discount 0: Thinking Machines' recipe); the learner takes one importance-sampling policy
gradient step, writes a safetensors checkpoint and pushes it to the server with
/update_weights_from_disk; the next step's rollouts must carry the new weight version.

Both models are random-weight tiny Llamas (different seeds) sharing one byte-level tokenizer
(temper.tiny_model), so the text means nothing; what the run shows is the loop driving the
student's distribution onto the teacher's: the mean per-token reverse KL of the student's own
samples falls. Writes the KL curve (opd_kl.png) and the numbers (opd.json) to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from examples.common import arithmetic, temper_server
from temper.tiny_model import build_tiny_model
from temper.training_adapters.distillation import DistillationBatch, OnPolicyDistillation
from temper.training_adapters.rollouts import Rollouts


def prompts(step: int, count: int) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": q}] for q, _ in arithmetic(count, seed=1000 + step)]


def policy_gradient_step(model, opt, b: DistillationBatch) -> float:
    """One step of Tinker's importance_sampling loss: −Σ ratio · A over completion tokens, where
    ratio = p_learner / p_sampler (1 on-policy, but it carries the gradient)."""
    tokens = torch.from_numpy(b.tokens)
    attn = torch.from_numpy(b.attention_mask)
    logits = model(input_ids=tokens[:, :-1], attention_mask=attn[:, :-1]).logits.float()
    logp = torch.log_softmax(logits, -1).gather(-1, tokens[:, 1:, None])[..., 0]
    mask = torch.from_numpy(b.mask)
    ratio = torch.exp(logp - torch.from_numpy(b.sampled_logprobs)) * mask
    loss = -(ratio * torch.from_numpy(b.advantages)).sum() / mask.sum()
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return float(loss)


def save_checkpoint(model, path: Path) -> Path:
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path / "model.safetensors"))
    return path


def plot(kls: list[float], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(len(kls)), kls, marker="o", ms=3, alpha=0.4, label="per step")
    w = 5
    smooth = np.convolve(kls, np.ones(w) / w, mode="valid")
    ax.plot(range(w - 1, len(kls)), smooth, lw=2, label=f"{w}-step mean")
    ax.legend()
    ax.set_xlabel("training step")
    ax.set_ylabel("mean per-token reverse KL (nats)")
    ax.set_title("On-policy distillation over HTTP (tiny student ← tiny teacher)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def train(url: str, student_dir: Path, work: Path, args) -> list[dict]:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32).train()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    history = []
    with Rollouts.http(url) as rollouts:
        opd = OnPolicyDistillation(rollouts, student_model="student", teacher_model="teacher")
        version = 0
        for step in range(args.steps + 1):
            t0 = time.monotonic()
            groups = opd.sample(prompts(step, args.prompts), n=args.group, max_tokens=args.max_tokens, seed=step)
            assert all(g.weight_version == version for g in groups), "stale rollouts"
            batch = opd.batch(groups)
            row = {
                "step": step,
                "weight_version": version,
                "reverse_kl": batch.mean_reverse_kl,
                "tokens": batch.completion_tokens,
            }
            if step < args.steps:  # the last step only measures
                row["loss"] = policy_gradient_step(model, opt, batch)
                version = rollouts.update_weights(save_checkpoint(model, work / "ckpt"), model="student")
            row["seconds"] = round(time.monotonic() - t0, 2)
            history.append(row)
            print(json.dumps(row), flush=True)
    return history


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--prompts", type=int, default=16, help="prompts per step")
    ap.add_argument("--group", type=int, default=4, help="rollouts per prompt")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t0 = time.monotonic()
        student = build_tiny_model(work / "student", seed=0)
        teacher = build_tiny_model(work / "teacher", seed=1)
        models = {"student": student, "teacher": teacher}
        with temper_server(models, frozen=["teacher"], extra=["--logprobs-mode", "processed_logprobs"]) as url:
            history = train(url, student, work, args)
        seconds = time.monotonic() - t0
    kls = [h["reverse_kl"] for h in history]
    plot(kls, args.out / "opd_kl.png")
    start, end = float(np.mean(kls[:5])), float(np.mean(kls[-5:]))
    summary = {"reverse_kl_start": start, "reverse_kl_end": end, "steps": args.steps, "seconds": round(seconds, 1)}
    (args.out / "opd.json").write_text(json.dumps({"summary": summary, "history": history}, indent=1))
    print(f"mean per-token reverse KL: {start:.3f} → {end:.3f} nats (first/last 5 steps), {seconds:.0f} s")
    print(f"wrote {args.out / 'opd_kl.png'} and {args.out / 'opd.json'}")
    return 0 if end < start else 1


if __name__ == "__main__":
    sys.exit(main())
