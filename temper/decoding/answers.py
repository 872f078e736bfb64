"""Final answers out of free text: extraction, normalisation and majority voting.

Pure functions over strings and floats, used by self-consistency, synthesis metadata and the
CaT verifiable reward (answer(rollout) == answer(synthesis)). No engine, no tokenizer.

- Extractors are registered by name: "boxed" (last \\boxed{...} or \\fbox{...}, nested braces
  allowed), "last_number", and "auto" (boxed, else last number). `register_extractor` adds more.
- `normalize_answer` maps equal answers to one string: numbers lose thousands separators,
  trailing zeros, "+" and `$`; every exact rational (0.50, 1/2, \\dfrac{2}{4}) becomes one form,
  a terminating decimal when there is one ("0.5"), else a reduced fraction ("-1/3");
  \\text{}, units, degrees, percent, \\left/\\right, spacing commands and a trailing period go.
  Non-numeric answers keep their LaTeX with all whitespace removed.
- `majority_vote` ranks answers by votes, then by mean log-prob, then by first appearance.

Not a symbolic checker: `\\sqrt{2}/2` and `\\frac{\\sqrt2}{2}` stay different answers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

Extractor = Callable[[str], "str | None"]

# ---------------------------------------------------------------- extraction


def braced_group(text: str, open_at: int) -> tuple[str, int] | None:
    """The content of the brace group opening at text[open_at] == "{", and the index after it."""
    depth, i = 0, open_at
    while i < len(text):
        ch = text[i]
        if ch == "\\":  # \{ and \} are literal braces: skip the escaped character
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[open_at + 1 : i], i + 1
        i += 1
    return None  # unbalanced: the text was cut off inside the group


_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")


def extract_boxed(text: str) -> str | None:
    """The last well-formed \\boxed{...} / \\fbox{...} (or "\\boxed 5"); None when there is none.

    A box cut off by max_tokens is skipped in favour of an earlier complete one."""
    for m in reversed(list(_BOX.finditer(text))):
        i = m.end()
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            got = braced_group(text, i)
            if got is not None:
                return got[0].strip()
        elif i > m.end():  # "\boxed 5": the box holds the next run of non-space characters
            word = re.match(r"[^\s$]+", text[i:])
            if word:
                return word.group(0)
    return None


_NUM = r"(?:\d{1,3}(?:,\d{3})+(?!\d)(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
_SIGN = r"(?:(?<![\w)\]}])-)?"  # a minus, but not the hyphen in "x-3" or "step-2"
_LAST_NUMBER = re.compile(
    rf"{_SIGN}\\[dt]?frac\{{\s*-?{_NUM}\s*\}}\{{\s*-?{_NUM}\s*\}}"  # \frac{1}{2}
    rf"|{_SIGN}{_NUM}\s*/\s*{_NUM}(?![\d.])"  # 1/2
    rf"|{_SIGN}{_NUM}"
)


def extract_last_number(text: str) -> str | None:
    """The last number in the text (with its sign, thousands separators, a/b or \\frac{a}{b})."""
    text = text.replace("{,}", ",").replace("\u2212", "-")
    found = _LAST_NUMBER.findall(text)
    return found[-1] if found else None


def extract_auto(text: str) -> str | None:
    """\\boxed{} when the text has one, else the last number."""
    boxed = extract_boxed(text)
    return boxed if boxed else extract_last_number(text)


EXTRACTORS: dict[str, Extractor] = {
    "auto": extract_auto,
    "boxed": extract_boxed,
    "last_number": extract_last_number,
}


def register_extractor(name: str, fn: Extractor) -> None:
    """Add an extractor by name (plugins call this at import time)."""
    EXTRACTORS[name] = fn


def get_extractor(name: str) -> Extractor:
    if name not in EXTRACTORS:
        raise KeyError(f"unknown extractor {name!r}; available: {', '.join(sorted(EXTRACTORS))}")
    return EXTRACTORS[name]


# ---------------------------------------------------------------- normalisation

_WRAPPERS = ("text", "textbf", "textrm", "textit", "mathrm", "mathbf", "mbox", "operatorname")
_WRAPPER = re.compile(r"\\(?:" + "|".join(_WRAPPERS) + r")\s*(?=\{)")
_DROP = re.compile(r"\\left(?![a-z])|\\right(?![a-z])|\\displaystyle|\\[!,;: ]|~|\\\$|\$")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|°|\\%|%")
# Units only come off a number when a space separates them ("5 cm", "5\text{ cm}") or when the
# word is an unambiguous unit: "5x" must stay an expression.
_UNIT_WORD = r"[A-Za-z]+(?:\^\{?\d\}?)?"
_UNITS = rf"(?:\s+{_UNIT_WORD}(?:\s*/\s*{_UNIT_WORD}|\s+{_UNIT_WORD})*|(?:cm|mm|km|kg|mg|ml|mL|ft|hrs?|min|sec|mph|lbs?|oz)(?:\^\{{?\d\}}?)?)"  # noqa: E501
_VALUE = rf"[-+]?{_NUM}"
_NUMERIC = re.compile(
    rf"(?P<sign>[-+]?)\s*(?:\\frac\{{\s*(?P<fn>{_VALUE})\s*\}}\{{\s*(?P<fd>{_VALUE})\s*\}}"
    rf"|(?P<n>{_VALUE})\s*/\s*(?P<d>{_VALUE})|(?P<v>{_VALUE}))(?:{_UNITS})?"
)


def _unwrap(s: str) -> str:
    """\\text{abc} → abc (nested braces allowed), for every wrapper command."""
    while m := _WRAPPER.search(s):
        got = braced_group(s, m.end())
        if got is None:
            return s[: m.start()] + s[m.end() :]
        s = s[: m.start()] + got[0] + s[got[1] :]
    return s


def _fraction(v: str) -> Fraction:
    return Fraction(v.replace(",", "").replace("+", ""))


def canonical_number(x: Fraction) -> str:
    """One string per rational: a terminating decimal when one exists, else "p/q"."""
    p, q = x.numerator, x.denominator
    twos = fives = 0
    while q % 2 == 0:
        q //= 2
        twos += 1
    while q % 5 == 0:
        q //= 5
        fives += 1
    if q != 1:
        return f"{x.numerator}/{x.denominator}"
    k = max(twos, fives)
    scaled = abs(p) * 10**k // x.denominator
    digits = str(scaled).rjust(k + 1, "0")
    out = digits if k == 0 else f"{digits[:-k]}.{digits[-k:]}"
    return ("-" if p < 0 else "") + out


def normalize_answer(ans: str | None) -> str | None:
    """The comparison form of an extracted answer; None for no answer (or an empty one)."""
    if ans is None:
        return None
    s = ans.replace("\u2212", "-").replace("{,}", ",")
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)  # \frac12 shorthand
    s = _unwrap(s)
    s = _DROP.sub(" ", s)
    s = _DEGREES.sub("", s)
    s = s.strip().rstrip(".").strip()
    s = re.sub(r"^[A-Za-z]\s*=\s*(?=\S)", "", s)  # "x = 5" → "5"
    s = re.sub(r"(?<=\d)\s+(?=\d{3}(?!\d))", "", s)  # "1 000" and "1\,000" (spaced thousands)
    m = _NUMERIC.fullmatch(s)
    if m:
        try:
            if m["v"] is not None:
                val = _fraction(m["v"])
            else:
                num, den = (m["fn"], m["fd"]) if m["fn"] is not None else (m["n"], m["d"])
                val = _fraction(num) / _fraction(den)
        except ZeroDivisionError:
            val = None
        if val is not None:
            return canonical_number(-val if m["sign"] == "-" else val)
    s = re.sub(r"\s+", "", s)
    return s or None


def extract_answer(text: str, extractor: str = "auto") -> str | None:
    """Extract with the named extractor, then normalise."""
    return normalize_answer(get_extractor(extractor)(text))


# ---------------------------------------------------------------- voting


@dataclass(frozen=True)
class Vote:
    """The outcome of a majority vote over rollouts.

    `order` lists rollout indices best first: the best rollout of each answer in answer rank,
    then the other rollouts with answers (by answer rank, then score), then those without."""

    order: list[int]
    table: dict[str, int]  # normalised answer → votes, in rank order
    answer_scores: dict[str, float] = field(default_factory=dict)  # mean of the voters' scores
    winner: str | None = None

    @property
    def chosen(self) -> int:
        return self.order[0]


def _nan_last(x: float) -> float:
    return x if not math.isnan(x) else -math.inf


def majority_vote(answers: Sequence[str | None], scores: Sequence[float]) -> Vote:
    """Majority over normalised answers (None = no answer, no vote). Ties between answers go
    to the higher mean score (mean token log-prob of the answer's rollouts), then to the answer
    seen first; within an answer, the rollout with the best score, then the earliest."""
    if len(answers) != len(scores):
        raise ValueError(f"answers and scores differ in length: {len(answers)} vs {len(scores)}")
    if not answers:
        raise ValueError("majority_vote needs at least one rollout")
    sc = [_nan_last(float(x)) for x in scores]
    voters: dict[str, list[int]] = {}
    for i, a in enumerate(answers):
        if a is not None:
            voters.setdefault(a, []).append(i)
    mean = {a: sum(sc[i] for i in ix) / len(ix) for a, ix in voters.items()}
    # dicts keep insertion order, so the first-seen answer wins the final tie
    ranked = sorted(voters, key=lambda a: (-len(voters[a]), -mean[a]))
    by_score = lambda ix: sorted(ix, key=lambda i: (-sc[i], i))
    members = {a: by_score(voters[a]) for a in ranked}
    order = [members[a][0] for a in ranked]
    order += [i for a in ranked for i in members[a][1:]]
    order += by_score([i for i, a in enumerate(answers) if a is None])
    return Vote(
        order=order,
        table={a: len(voters[a]) for a in ranked},
        answer_scores={a: mean[a] for a in ranked},
        winner=ranked[0] if ranked else None,
    )
