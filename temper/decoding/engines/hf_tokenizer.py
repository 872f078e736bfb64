"""HFTokenizer: the Tokenizer protocol over a Hugging Face tokenizer (chat template included).

Only the text edge: token ids are what engines and strategies exchange. Models without a chat
template get a plain `role: content` transcript so chat requests still work (documented).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

FALLBACK_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


class HFTokenizer:
    def __init__(self, hf, eos_ids: Sequence[int]):
        self.hf = hf  # the transformers tokenizer, for callers that need token strings/bytes
        self.eos_ids = tuple(eos_ids)
        self.vocab_size = len(hf)

    @functools.cached_property
    def max_token_bytes(self) -> int:
        """The most UTF-8 bytes one token can stand for (special tokens included): a text of
        B bytes is at least B / max_token_bytes tokens, a bound known without tokenising it."""
        pieces = self.hf.convert_ids_to_tokens(list(range(len(self.hf))))
        decoded = (self.hf.convert_tokens_to_string([p]) for p in pieces if p is not None)
        return max(1, *(len(p.encode("utf-8", "replace")) for p in pieces if p), *(len(d.encode()) for d in decoded))

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return list(self.hf(text, add_special_tokens=add_special_tokens)["input_ids"])

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(
        self, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool = True
    ) -> list[int]:
        kwargs = {}
        if not getattr(self.hf, "chat_template", None):
            kwargs["chat_template"] = FALLBACK_TEMPLATE
        out = self.hf.apply_chat_template(
            list(messages), add_generation_prompt=add_generation_prompt, tokenize=True, **kwargs
        )
        # transformers ≥ 5 returns a BatchEncoding, older versions a plain list
        ids = out["input_ids"] if hasattr(out, "keys") else out
        return [int(t) for t in ids]
