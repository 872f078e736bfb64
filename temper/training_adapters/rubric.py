"""CaT's rubric for non-verifiable tasks (arXiv 2509.14234 §3, research/training_methods.md
§1.1): the anchor turns its synthesised reference into at least 5 yes/no criteria, a judge
answers each criterion for each rollout, and the reward is the fraction answered "yes".

The paper's prompt texts are not public; these are our own wording of what it describes:
criteria that are specific, checkable properties of the reference, as XML
(<rubric><criterion>...</criterion>...</rubric>); one judge call per (rollout, criterion),
answering <verdict>yes</verdict> or <verdict>no</verdict>.

Parsing is tolerant: the rubric is read with an XML parser, falling back to the <criterion>
elements that can be found when the XML is broken (flagged); a judge answer without a clear
yes/no verdict is "malformed", counted, and does not satisfy its criterion. Pure functions
over text; the calls are cat.py's.
"""

from __future__ import annotations

import html
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass

from temper.training_adapters.reward import Reward

MIN_CRITERIA = 5

RUBRIC_PROMPT = """Here is a reference response to a request:

<reference>
{reference}
</reference>

Write a grading rubric for responses to the same request, based on this reference. Give at \
least {min_criteria} criteria. Each criterion is one specific property that the reference has \
and that a good response must also have, phrased so that a grader reading only a response can \
answer it with yes or no. Put the most important content first (key facts, steps, conclusions), \
then what a response must avoid.

Reply with the rubric in this XML format and nothing else:
<rubric>
<criterion>...</criterion>
<criterion>...</criterion>
</rubric>"""

JUDGE_PROMPT = """Read the response and decide whether it meets the criterion.

<response>
{response}
</response>

<criterion>{criterion}</criterion>

Reply <verdict>yes</verdict> if the response meets the criterion, otherwise \
<verdict>no</verdict>. Reply with the verdict only."""

_RUBRIC_BLOCK = re.compile(r"<rubric\b[^>]*>.*?</rubric\s*>", re.S | re.I)
_CRITERION = re.compile(r"<criterion\b[^>]*>(.*?)</criterion\s*>", re.S | re.I)
_VERDICT = re.compile(r"<verdict\b[^>]*>\s*(.*?)\s*</verdict\s*>", re.S | re.I)


@dataclass(frozen=True, slots=True)
class Rubric:
    criteria: tuple[str, ...]
    well_formed: bool  # parsed as XML (False: criteria recovered from broken XML, or none)
    text: str = ""  # the anchor's answer it was read from
    attempts: int = 1

    def usable(self, min_criteria: int = MIN_CRITERIA) -> bool:
        return len(self.criteria) >= min_criteria


def rubric_prompt(reference: str, min_criteria: int = MIN_CRITERIA) -> str:
    return RUBRIC_PROMPT.replace("{min_criteria}", str(min_criteria)).replace("{reference}", reference.strip())


def judge_prompt(response: str, criterion: str) -> str:
    return JUDGE_PROMPT.replace("{criterion}", criterion.strip()).replace("{response}", response.strip())


def _unique(items: Sequence[str]) -> tuple[str, ...]:
    out = []
    for c in items:
        c = " ".join(c.split())
        if c and c not in out:
            out.append(c)
    return tuple(out)


def parse_rubric(text: str) -> Rubric:
    """The criteria of the anchor's rubric answer (the last <rubric> block; see the module)."""
    blocks = _RUBRIC_BLOCK.findall(text)
    if blocks:
        try:
            root = ET.fromstring(blocks[-1])
            found = ["".join(el.itertext()) for el in root.iter() if el.tag.lower() == "criterion"]
            return Rubric(_unique(found), True, text)
        except ET.ParseError:
            pass
    scope = blocks[-1] if blocks else text
    found = [html.unescape(re.sub(r"<[^>]+>", "", m)) for m in _CRITERION.findall(scope)]
    return Rubric(_unique(found), False, text)


def parse_verdict(text: str) -> bool | None:
    """True for <verdict>yes</verdict>, False for no (the last verdict counts); None when the
    answer holds no verdict or one that is neither."""
    found = _VERDICT.findall(text)
    if not found:
        return None
    word = found[-1].strip().strip(".!").lower()
    return {"yes": True, "no": False}.get(word)


def rubric_reward(verdicts: Sequence[bool | None], rubric: Rubric, min_criteria: int = MIN_CRITERIA) -> Reward:
    """Fraction of the rubric's criteria the judge said yes to; malformed verdicts count as not
    met and are reported. A rubric with too few criteria gives 0 with that reason."""
    n = len(rubric.criteria)
    if not rubric.usable(min_criteria):
        return Reward(0.0, "no usable rubric", {"criteria": n, "min_criteria": min_criteria})
    if len(verdicts) != n:
        raise ValueError(f"verdicts: {len(verdicts)} for {n} criteria")
    yes = sum(v is True for v in verdicts)
    malformed = sum(v is None for v in verdicts)
    meta = {"satisfied": yes, "criteria": n, "malformed": malformed, "verdicts": list(verdicts)}
    return Reward(yes / n, "judged" if malformed == 0 else "judged, some verdicts malformed", meta)
