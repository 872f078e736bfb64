"""ScriptedEngine: an Engine whose answer to a prompt is a function of the prompt's text, for
testing what training adapters do with anchor, judge and rubric answers (test-only code).

Tokens are UTF-8 bytes (id 256 = EOS) with a tiny chat template, so ids and text correspond
one to one. Every decoded prompt it was asked to continue is kept in `prompts`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from temper.decoding.engine import EngineStats, Sample, SampleSpec, Scored, TokenDraw, check_fits, score_starts


class ByteTokenizer:
    """UTF-8 bytes as token ids (256 = EOS), with a tiny chat template: token ids and text
    correspond one to one, so "the question is not in the prompt" can be checked on ids."""

    vocab_size = 257
    eos_ids = (256,)

    def encode(self, text, *, add_special_tokens=True):
        return list(text.encode())

    def decode(self, ids, *, skip_special_tokens=True):
        return bytes(i for i in ids if i < 256).decode(errors="replace")

    def apply_chat_template(self, messages, *, add_generation_prompt=True):
        body = "".join(f"<{m['role']}>\n{m['content']}\n" for m in messages)
        return self.encode(body + ("<assistant>\n" if add_generation_prompt else ""))


class ScriptedEngine:
    def __init__(self, name: str, respond: Callable[[str], str], max_context: int = 1 << 16):
        self.name, self.respond, self.max_context = name, respond, max_context
        self.tokenizer = ByteTokenizer()
        self.eos_ids = self.tokenizer.eos_ids
        self.stats = EngineStats()
        self.weight_version = 0
        self.prompts: list[str] = []

    async def sample(self, specs: Sequence[SampleSpec], on_token=None) -> list[Sample]:
        out = []
        for i, spec in enumerate(specs):
            check_fits(self.max_context, spec)
            text = self.tokenizer.decode(spec.prefix)
            self.prompts.append(text)
            ids = self.tokenizer.encode(self.respond(text)) + [256]
            tokens, reason = ids[: spec.max_new_tokens], "stop" if len(ids) <= spec.max_new_tokens else "length"
            for n, t in enumerate(tokens):
                if on_token is not None and not on_token(i, TokenDraw(t, 0.0)):
                    tokens, reason = tokens[: n + 1], "stop"
                    break
            zeros = np.zeros(len(tokens), np.float32)
            out.append(Sample(tokens, zeros, zeros.copy(), zeros.copy(), reason))
            self.stats.generated_tokens += len(tokens)
        return out

    async def score(self, sequences, start=1, top_k=0) -> list[Scored]:
        starts = score_starts(sequences, start, self.max_context)
        return [Scored(np.zeros(len(s) - s0, np.float32)) for s, s0 in zip(sequences, starts, strict=True)]

    async def load_weights(self, path: str) -> None:
        raise RuntimeError("a scripted engine has no weights")

    async def reset_prefix_cache(self) -> bool:
        return True

    async def close(self) -> None:
        return None


# ---------------------------------------------------------------- scripted CaT answers


def reconcile(prompt: str) -> str:
    """An anchor that answers with the majority of the boxed answers it is shown."""
    answers = re.findall(r"\\boxed\{(\d+)\}", prompt)
    return f"Putting the attempts together: \\boxed{{{Counter(answers).most_common(1)[0][0]}}}" if answers else "?"


CRITERIA = ["mentions alpha", "mentions beta", "mentions gamma", "mentions delta", "mentions epsilon"]


def rubric_writer(counts: list[int]):
    """An anchor writing rubrics of counts[k] criteria on its k-th rubric request."""
    calls = []

    def respond(prompt: str) -> str:
        if "grading rubric" not in prompt:
            return reconcile(prompt)
        n = counts[min(len(calls), len(counts) - 1)]
        calls.append(n)
        return "<rubric>" + "".join(f"<criterion>{c}</criterion>" for c in CRITERIA[:n]) + "</rubric>"

    return respond, calls


def judge(prompt: str) -> str:
    """Says yes when the response holds the criterion's word; garbles anything about epsilon."""
    criterion = re.search(r"<criterion>mentions (\w+)</criterion>", prompt).group(1)
    response = re.search(r"<response>\n(.*?)\n</response>", prompt, re.S).group(1)
    if criterion == "epsilon":
        return "I think it probably does"
    return f"<verdict>{'yes' if criterion in response else 'no'}</verdict>"
