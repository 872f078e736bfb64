"""Compute as Teacher end to end on CPU: one GRPOTrainer step (TRL, transformers generation in
this process) whose reward is temper's CaT verifiable reward, with the synthesis served by temper.

    python -m examples.cat_grpo       # about a minute on 2 CPU cores

The policy is a tiny Llama fine-tuned for a few hundred steps on two tasks: answering "What is
a+b?" as "a+b=c. The answer is \\boxed{c}." (often wrongly: it is tiny), and writing one
solution from several attempts shown in a short synthesis template (the anchor's job). That
checkpoint, π_0, is served by `temper serve --model anchor=PATH --frozen anchor` as CaT's frozen
anchor. In the GRPO step, TRL samples G = 4 completions per question; CaTVerifiableReward
groups them by question, asks the anchor (through the `synthesis` strategy, rollouts given,
question withheld) for one reconciled reference per question, and rewards each completion 1
when its \\boxed{} answer equals the reference's. Prints the rewards with their reasons, the references and
TRL's step metrics, and writes them to --out/cat_grpo.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from examples.common import SYNTHESIS_TEMPLATE, arithmetic, finetune, synthesis_pairs, temper_server
from temper.tiny_model import build_tiny_model
from temper.training_adapters.cat import ComputeAsTeacher
from temper.training_adapters.rollouts import Rollouts
from temper.training_adapters.trl_rewards import CaTVerifiableReward


class Recorded(CaTVerifiableReward):
    """CaTVerifiableReward that keeps what it saw, for the report."""

    def __init__(self, cat: ComputeAsTeacher):
        super().__init__(cat)
        self.seen: list[dict] = []

    def rewards(self, questions, rollouts):
        refs = self.cat.references(questions, rollouts)
        out = self.cat.verifiable_rewards(rollouts, refs)
        for q, group, ref, rewards in zip(questions, rollouts, refs, out, strict=True):
            self.seen.append(
                {
                    "question": q[-1]["content"] if isinstance(q, list) else q,
                    "reference": ref.text,
                    "reference_answer": ref.answer,
                    "completions": group,
                    "rewards": [r.value for r in rewards],
                    "reasons": [r.reason for r in rewards],
                }
            )
        return out


def grpo_step(policy: Path, reward: Recorded, work: Path, args) -> tuple[dict, float]:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    questions = [q for q, _ in arithmetic(args.questions, seed=7)]
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": q}]} for q in questions])
    config = GRPOConfig(
        output_dir=str(work / "grpo"),
        per_device_train_batch_size=args.group * args.questions,
        num_generations=args.group,
        max_completion_length=args.max_tokens,
        temperature=1.0,
        learning_rate=args.lr,
        max_steps=1,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
    )
    trainer = GRPOTrainer(model=str(policy), reward_funcs=[reward], args=config, train_dataset=data)
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    trainer.train()
    moved = sum(float((v.detach() - before[k]).norm() ** 2) for k, v in trainer.model.named_parameters()) ** 0.5
    return trainer.state.log_history[0], moved


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", type=int, default=4, help="questions in the GRPO step")
    ap.add_argument("--group", type=int, default=4, help="completions per question (G)")
    ap.add_argument("--max-tokens", type=int, default=40)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--sft-steps", type=int, default=300, help="fine-tuning steps that make the policy")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print("fine-tuning the tiny policy on arithmetic answers and on synthesis...", flush=True)
        pairs = arithmetic(400) + synthesis_pairs(400, group=args.group)
        policy = finetune(build_tiny_model(work / "policy", seed=1), pairs, steps=args.sft_steps)
        with temper_server({"anchor": policy}, frozen=["anchor"]) as url, Rollouts.http(url) as anchor:
            cat = ComputeAsTeacher(
                anchor,
                anchor_model="anchor",
                template=SYNTHESIS_TEMPLATE,
                max_tokens=args.max_tokens,
                temperature=0.7,
                seed=0,
            )
            reward = Recorded(cat)
            metrics, moved = grpo_step(policy, reward, work, args)
    seconds = time.monotonic() - t0
    for g in reward.seen:
        print(f"\n{g['question']}  reference: {g['reference']!r} → answer {g['reference_answer']!r}")
        for c, r, why in zip(g["completions"], g["rewards"], g["reasons"], strict=True):
            print(f"  {r:.0f}  {why:<22} {c!r}")
    keys = ("loss", "reward", "reward_std", "rewards/cat_verifiable/mean", "frac_reward_zero_std")
    step = {k: metrics[k] for k in keys if k in metrics}
    print(f"\nGRPO step: {json.dumps(step)}; parameters moved by {moved:.3g} (L2); {seconds:.0f} s")
    report = {"step": step, "parameter_change_l2": moved, "groups": reward.seen, "seconds": round(seconds, 1)}
    (args.out / "cat_grpo.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out / 'cat_grpo.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
