"""RPT data: next-token reasoning examples from a text corpus (arXiv 2506.08007 §3.3;
research/training_methods.md §2), and the reward of a rollout for one.

For each document: tokenise it with the policy's tokenizer (token_bytes.py gives each token's
bytes), score it once under the proxy model with its top-k (16) log-probs at every position,
take the entropy of the renormalised top-k distribution (rpt_math.topk_entropy), and keep the
positions above `threshold` (hard tokens). Each kept position t becomes an example: the context
(the document's text before token t), the ground-truth continuation (a window of whole tokens
from t) with its token boundaries L_gt in bytes, and the chat prompt (rpt_prompt).

Positions are skipped when the context or the window would end inside a multi-byte character
(a byte-level token can split one): no text prediction could match there. The paper does not
give its training threshold; 1.0 nat here is a choice (its evaluation splits use 0.5/1.0/1.5).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from temper.decoding.engines.hf_tokenizer import HFTokenizer
from temper.training_adapters.reward import Reward
from temper.training_adapters.rollouts import Rollouts
from temper.training_adapters.rpt_math import final_prediction, prefix_reward, token_boundaries, topk_entropy
from temper.training_adapters.rpt_prompt import DEFAULT_TEMPLATE, check_template, rpt_messages
from temper.training_adapters.token_bytes import text_pieces
from temper.training_adapters.vocabulary import check_same, vocabulary_of


@dataclass(frozen=True, slots=True)
class RPTExample:
    document: int
    position: int  # index of the target token in the document's tokens
    context: str
    continuation: str  # whole tokens from the target on (a window)
    boundaries: tuple[int, ...]  # L_gt: cumulative UTF-8 byte lengths of those tokens
    entropy: float  # of the proxy's top-k distribution at the target
    prompt: tuple[dict[str, str], ...]  # chat messages

    def reward(self, completion: str) -> Reward:
        """The byte-prefix reward of a rollout's text for this example."""
        return rpt_reward(completion, self.continuation, self.boundaries)

    def to_dict(self) -> dict[str, Any]:
        """A dataset row: `prompt` for GRPOTrainer, the rest for trl_rewards.RPTReward."""
        return {
            "prompt": [dict(m) for m in self.prompt],
            "continuation": self.continuation,
            "boundaries": list(self.boundaries),
            "entropy": self.entropy,
            "document": self.document,
            "position": self.position,
        }


def rpt_reward(completion: str, continuation: str, boundaries: Sequence[int]) -> Reward:
    prediction, why = final_prediction(completion)
    if prediction is None:
        return Reward(0.0, why)
    return prefix_reward(prediction, continuation.encode("utf-8"), boundaries)


def select_positions(
    entropy: np.ndarray, threshold: float, *, min_context: int = 1, max_positions: int | None = None
) -> list[int]:
    """Target positions t (entropy[t − 1] is the entropy before token t) with entropy above
    `threshold` and at least `min_context` tokens before them; with max_positions, the
    highest-entropy ones. Ascending."""
    if min_context < 1:
        raise ValueError(f"min_context: must be >= 1, got {min_context}")
    keep = [t for t in range(max(min_context, 1), len(entropy) + 1) if entropy[t - 1] > threshold]
    if max_positions is not None and len(keep) > max_positions:
        keep = sorted(sorted(keep, key=lambda t: -entropy[t - 1])[:max_positions])
    return keep


def _decodes(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def example_at(pieces: Sequence[bytes], t: int, window: int) -> tuple[str, str, list[int]] | None:
    """(context, continuation, boundaries) at target t, or None where text cannot split."""
    context = _decodes(b"".join(pieces[:t]))
    if context is None:
        return None
    for k in range(min(window, len(pieces) - t), 0, -1):  # the longest window ending on a character
        cont = _decodes(b"".join(pieces[t : t + k]))
        if cont is not None:
            bounds = [b for b in token_boundaries([len(p) for p in pieces[t : t + k]]) if b > 0]
            return (context, cont, bounds) if bounds else None
    return None


class RPTData:
    """Builds RPT examples from documents with a proxy model (see the module docstring).

    `tokenizer` is the policy's Hugging Face tokenizer; the proxy (scored through `proxy`)
    must share its vocabulary, which is checked here."""

    def __init__(
        self,
        tokenizer,
        proxy: Rollouts,
        proxy_model: str | None = None,
        *,
        threshold: float = 1.0,
        top_k: int = 16,
        window: int = 16,
        min_context: int = 16,
        max_per_document: int | None = None,
        template: str = DEFAULT_TEMPLATE,
    ):
        if top_k < 2 or window < 1:
            raise ValueError("top_k: must be >= 2 and window >= 1")
        self.hf, self.proxy, self.proxy_model = tokenizer, proxy, proxy_model
        self.threshold, self.top_k, self.window = threshold, top_k, window
        self.min_context, self.max_per_document = min_context, max_per_document
        self.template = check_template(template)
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [0]
        policy = vocabulary_of(getattr(tokenizer, "name_or_path", "policy") or "policy", HFTokenizer(tokenizer, eos))
        check_same(policy, proxy.vocabulary(proxy_model), "RPT (the proxy scores the policy's token ids)")

    def entropies(self, documents: Sequence[str]) -> list[tuple[list[int], list[bytes], np.ndarray]]:
        """Per document: token ids, token bytes and the top-k entropy before each token 1..T−1."""
        tokenised = [text_pieces(self.hf, d) for d in documents]
        todo = [i for i, (ids, _) in enumerate(tokenised) if len(ids) >= 2]
        scored = self.proxy.score([tokenised[i][0] for i in todo], 1, self.top_k, self.proxy_model)
        ent = {i: topk_entropy(s.top_logps) for i, s in zip(todo, scored, strict=True)}
        return [(ids, pieces, ent.get(i, np.zeros(0))) for i, (ids, pieces) in enumerate(tokenised)]

    def examples(self, documents: Sequence[str]) -> list[RPTExample]:
        out = []
        for d, (_, pieces, ent) in enumerate(self.entropies(documents)):
            kept = select_positions(
                ent, self.threshold, min_context=self.min_context, max_positions=self.max_per_document
            )
            for t in kept:
                got = example_at(pieces, t, self.window)
                if got is None:
                    continue
                context, cont, bounds = got
                msgs = tuple(rpt_messages(context, self.template))
                out.append(RPTExample(d, t, context, cont, tuple(bounds), float(ent[t - 1]), msgs))
        return out
