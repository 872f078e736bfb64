"""RPT's next-token reasoning prompts (arXiv 2506.08007 App. D; research/training_methods.md
§2.2): the context of a corpus position in, chat messages out.

The paper tested seven templates and trained with v0. Its exact wording is not reproduced
here; these are our own texts of the variants it describes:
  v0  complete the text under "### Context" by predicting the next token; reason, then put the
      token in \\boxed{}; it may start with a space (\\boxed{ para}); no \\text{}   (the default)
  v1  v0 with the context in triple backticks
  v2  v0 with a "helpful assistant" system message
  v3  v0, asking for several candidate tokens before choosing the most probable
  v6  the context in backticks, with the instruction repeated after it
(v4, three few-shot examples, and v5 are not included.)
"""

from __future__ import annotations

INSTRUCTION = (
    'Complete the text under "### Context" by predicting the token that comes next. Reason step '
    "by step about which token is most likely, then give that token in \\boxed{}. The token may "
    "start with a space, and the space then goes inside the box, as in \\boxed{ para} or \\boxed{ =}. "
    "Write the token exactly as it would appear in the text; do not use \\text{}."
)
CANDIDATES = (
    " First list several candidate tokens that could come next, weigh each against the context, "
    "and then choose the most probable one."
)
SYSTEM = "You are a helpful assistant."

TEMPLATES = {
    "v0": f"{INSTRUCTION}\n\n### Context\n{{context}}",
    "v1": f"{INSTRUCTION}\n\n### Context\n```\n{{context}}\n```",
    "v2": f"{INSTRUCTION}\n\n### Context\n{{context}}",
    "v3": f"{INSTRUCTION}{CANDIDATES}\n\n### Context\n{{context}}",
    "v6": f"{INSTRUCTION}\n\n### Context\n```\n{{context}}\n```\n\n{INSTRUCTION}",
}
WITH_SYSTEM = frozenset({"v2"})
DEFAULT_TEMPLATE = "v0"


def check_template(name: str) -> str:
    if name not in TEMPLATES:
        raise ValueError(f"template: unknown RPT template {name!r}; available: {', '.join(TEMPLATES)}")
    return name


def rpt_messages(context: str, template: str = DEFAULT_TEMPLATE) -> list[dict[str, str]]:
    """The chat messages asking for the token after `context` (inserted verbatim)."""
    text = TEMPLATES[check_template(template)].replace("{context}", context)
    messages = [{"role": "user", "content": text}]
    return [{"role": "system", "content": SYSTEM}, *messages] if template in WITH_SYSTEM else messages
