"""The bytes of each token of a text, from the tokenizer's own pieces (not from decoding token
prefixes, which miscounts where a token splits a multi-byte UTF-8 character).

RPT's reward needs L_gt, the cumulative byte lengths of the ground-truth tokens (rpt_math), and
RPT's data needs the context text up to a token boundary. Two piece schemes cover the open
models: byte-level BPE (GPT-2, Llama 3, Qwen: each piece character stands for one byte) and
SentencePiece-style pieces ("▁" for a space, "<0xNN>" byte fallback). Whatever the scheme, the
pieces must join back into the text's exact bytes, or a ValueError says the tokenizer cannot be
used (a normaliser that rewrites text, say).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache

_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@cache
def _byte_decoder() -> dict[str, int]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {ch: b for b, ch in bytes_to_unicode().items()}


def _is_byte_level(hf) -> bool:
    backend = getattr(hf, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    return decoder is not None and "ByteLevel" in repr(decoder)


def token_bytes(hf, ids: Sequence[int]) -> list[bytes]:
    """The bytes of each token id under a Hugging Face (fast) tokenizer `hf`."""
    added = {i: t.content for i, t in getattr(hf, "added_tokens_decoder", {}).items()}
    pieces = hf.convert_ids_to_tokens(list(ids))
    byte_level = _is_byte_level(hf)
    decoder = _byte_decoder() if byte_level else {}
    out = []
    for i, piece in zip(ids, pieces, strict=True):
        if i in added:
            out.append(added[i].encode("utf-8"))
        elif byte_level:
            try:
                out.append(bytes(decoder[ch] for ch in piece))
            except KeyError:
                raise ValueError(f"token {i} ({piece!r}) is not a byte-level piece") from None
        elif m := _BYTE_FALLBACK.fullmatch(piece):
            out.append(bytes([int(m.group(1), 16)]))
        else:
            out.append(piece.replace("\u2581", " ").encode("utf-8"))
    return out


def text_pieces(hf, text: str) -> tuple[list[int], list[bytes]]:
    """`text` tokenised without special tokens, and each token's bytes; the bytes join back to
    exactly text.encode("utf-8") (a SentencePiece prefix space is taken off the first piece)."""
    ids = list(hf(text, add_special_tokens=False)["input_ids"])
    pieces = token_bytes(hf, ids)
    want = text.encode("utf-8")
    joined = b"".join(pieces)
    if joined != want and pieces and joined == b" " + want and pieces[0].startswith(b" "):
        pieces[0] = pieces[0][1:]  # the prefix space SentencePiece adds to the first word
        joined = want
    if joined != want:
        name = getattr(hf, "name_or_path", type(hf).__name__)
        raise ValueError(
            f"tokenizer {name!r}: its pieces do not join back into the text's bytes (it normalises "
            "text), so token byte boundaries cannot be known"
        )
    return ids, pieces
