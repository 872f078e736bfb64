"""HFTokenizer: the Tokenizer protocol over a Hugging Face tokenizer (chat template included).

Only the text edge: token ids are what engines and strategies exchange. Models without a chat
template get a plain `role: content` transcript so chat requests still work (documented).
"""

from __future__ import annotations

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
