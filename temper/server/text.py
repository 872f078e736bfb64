"""Token ids → text at the server's edge: token strings and bytes for log-probs, and
incremental detokenizing for streams (text is sent only once it decodes cleanly, so a
multi-byte character split over byte tokens never reaches the client as U+FFFD).

Knows tokenizers (the Tokenizer protocol, plus `.hf` when there is one), not HTTP.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from temper.decoding.engine import Tokenizer
from temper.decoding.strategies.stops import cut_at_stop

REPLACEMENT = "\ufffd"


@lru_cache(maxsize=1)
def _byte_level_decoder() -> dict[str, int]:
    """The GPT-2 byte-level alphabet: the printable character standing for each byte."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


class TokenText:
    """Per-token strings and raw bytes for one tokenizer (cached: log-probs ask repeatedly)."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self._hf = hf = getattr(tokenizer, "hf", None)
        self._special = set(getattr(hf, "added_tokens_decoder", None) or ())
        decoder = getattr(getattr(hf, "backend_tokenizer", None), "decoder", None)
        self._byte_level = type(decoder).__name__ == "ByteLevel"
        self.token_bytes = lru_cache(maxsize=65536)(self._token_bytes)

    def _token_bytes(self, token: int) -> bytes:
        if self._hf is None:
            return self.tokenizer.decode([token], skip_special_tokens=False).encode()
        piece = self._hf.convert_ids_to_tokens(int(token))
        if piece is None:
            return b""
        if token in self._special:
            return piece.encode()
        if self._byte_level:
            table = _byte_level_decoder()
            if all(c in table for c in piece):
                return bytes(table[c] for c in piece)
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):  # sentencepiece byte
            return bytes([int(piece[3:5], 16)])
        return piece.replace("\u2581", " ").encode()

    def label(self, token: int, as_ids: bool = False) -> str:
        """How a log-prob entry names the token: its text, or "token_id:<id>" (vLLM's
        return_tokens_as_token_ids, which RL clients parse back into ids)."""
        return f"token_id:{int(token)}" if as_ids else self.token_str(token)

    def token_str(self, token: int) -> str:
        """The token as text; a token that is not valid UTF-8 on its own reads "bytes:\\xe2\\x80"
        (OpenAI's convention)."""
        raw = self.token_bytes(int(token))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


class IncrementalDetokenizer:
    """Text deltas as tokens arrive. Decodes a short window (from the last clean boundary), so
    each step costs a few tokens, and holds back text while it ends in a partial character."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self._prefix = 0  # window start
        self._read = 0  # tokens whose text has been returned

    def push(self, token: int) -> str:
        self.tokens.append(int(token))
        prefix_text = self.tokenizer.decode(self.tokens[self._prefix : self._read])
        text = self.tokenizer.decode(self.tokens[self._prefix :])
        if len(text) > len(prefix_text) and not text.endswith(REPLACEMENT):
            self._prefix, self._read = self._read, len(self.tokens)
            return text[len(prefix_text) :]
        return ""


class OffsetCounter:
    """Character offset at which each token's text starts (a partial character counts where
    it will appear), for tokens that arrive in runs: a streamed choice's log-probs go out a
    chunk at a time, yet must read exactly as one pass over all its tokens would."""

    def __init__(self, tokenizer: Tokenizer, start: int = 0):
        self.detok = IncrementalDetokenizer(tokenizer)
        self.pos = start

    def take(self, tokens: Sequence[int]) -> list[int]:
        out = []
        for t in tokens:
            out.append(self.pos)
            self.pos += len(self.detok.push(t))
        return out


def text_offsets(tokenizer: Tokenizer, tokens: Sequence[int], start: int = 0) -> list[int]:
    """Each token's character offset (see OffsetCounter), shifted by `start`."""
    return OffsetCounter(tokenizer, start).take(tokens)


class ChoiceText:
    """One streamed choice: turns tokens into text deltas that are always a prefix of the final
    text. With stop strings, the last (longest stop − 1) characters are held back until they
    cannot start a stop string, so text after a stop is never sent."""

    def __init__(self, tokenizer: Tokenizer, stops: Sequence[str] = ()):
        self.detok = IncrementalDetokenizer(tokenizer)
        self.stops = [s for s in stops if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.text = ""
        self.sent = 0
        self.stopped = False

    def push(self, token: int) -> str:
        if self.stopped:
            return ""
        self.text += self.detok.push(token)
        safe = len(self.text)
        if self.stops:
            # only text a stop string can still start in: the held-back tail and the new piece
            lo = max(0, self.sent - self.hold)
            window, self.stopped = cut_at_stop(self.text[lo:], self.stops)
            if self.stopped:
                self.text = self.text[:lo] + window
            safe = len(self.text) if self.stopped else max(self.sent, len(self.text) - self.hold)
        delta, self.sent = self.text[self.sent : safe], max(self.sent, safe)
        return delta

    def finish(self, final_text: str) -> str:
        """What is left to send of the strategy's final text (sent text is never retracted)."""
        sent = self.text[: self.sent]
        rest = final_text[len(sent) :] if final_text.startswith(sent) else ""
        self.sent = len(sent) + len(rest)
        return rest
