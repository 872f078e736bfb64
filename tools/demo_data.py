"""Training and benchmark data for the bundled demo model: short multi-step arithmetic problems
(two- and three-digit numbers, + and −) answered in chat form, final answer in \\boxed{}.

What this is: a deterministic generator (same seed and configs → same examples) of
  * problems: a word problem ("Mia has 37 shells. She finds 48 more, then gives away 25. How
    many shells does Mia have now?") or a bare expression ("What is 37 + 48?");
  * solutions of two kinds, mixed as real corpora mix them:
      - careful: one of a few openings, then column-by-column working for every step, then the
        boxed answer; given the opening, every token follows from the problem (always right);
      - hasty: ONE opening ("Quick answer:"), then either a guessed answer ("... is about 60")
        or the steps written without working, one of them with a slip (a dropped carry, a
        ten too many, a digit off by one); right only when a guess happens to hit.
    So the single hasty opening is more likely than any one careful opening, but what follows
    it spreads over many different (mostly wrong) answers, while each careful opening leads to
    one answer: the structure in which p^α and temperature 1/α differ
    (research/power_sampling.md §2.1: p^α prefers tokens with few, likely futures);
  * synthesis examples (a small share): the anchor prompt that the `synthesis` strategy builds
    (temper.decoding.synthesis_prompt, default template, question withheld) over G attempts drawn
    from the same mix, answered by a careful solution, so the demo model can act as its own
    CaT anchor.

Difficulty (`TaskConfig`) and mix (`MixConfig`) are parameters. Held-out benchmark problems come
from HELDOUT_SEED, which training never uses, and skip any question the training set holds.

What this is not: a tokenizer or a trainer (tools/demo_model.py), or the benchmark (bench/quality.py).

    python -m tools.demo_data [--count 5 --seed 0 --hasty 0.35]   # prints examples
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass, field

from temper.decoding.synthesis_prompt import PRESETS, render

TRAIN_SEED = 0
HELDOUT_SEED = 20_260_613  # never used for training data
TRAIN_EXAMPLES = 26_000

CAREFUL_OPENINGS = (
    "Let's work it out step by step.",
    "Let me solve this carefully.",
    "I'll go one step at a time.",
    "Working carefully, column by column.",
)
HASTY_OPENING = "Quick answer:"
COLUMNS = ("ones", "tens", "hundreds", "thousands")
LIMITS = (10, 999)  # every intermediate result stays in this range

NAMES = (("Sam", "He"), ("Mia", "She"), ("Leo", "He"), ("Ava", "She"), ("Ben", "He"), ("Zoe", "She"),
         ("Max", "He"), ("Ivy", "She"), ("Tom", "He"), ("Nia", "She"))
ITEMS = ("apples", "stickers", "marbles", "coins", "books", "pencils", "cards", "shells", "stamps", "beads")
VERBS = {"+": ("buys {n} more", "finds {n} more", "gets {n} more", "wins {n} more"),
         "-": ("gives away {n}", "sells {n}", "loses {n}", "uses {n}")}
EXPR_QUESTIONS = ("What is {e}?", "Compute {e}.", "Work out {e}.", "What does {e} equal?")
GUESS_OFFSETS = (-100, -20, -10, -3, -2, -1, 1, 2, 3, 10, 20, 100)


@dataclass(frozen=True)
class TaskConfig:
    """Difficulty: how many operations, how many digits per number, how many word problems."""

    min_steps: int = 1
    max_steps: int = 3
    min_digits: int = 2
    max_digits: int = 3
    word_fraction: float = 0.7  # the rest are bare expressions ("What is 37 + 48?")

    def __post_init__(self) -> None:
        if not 1 <= self.min_steps <= self.max_steps <= 6:
            raise ValueError(f"steps: need 1 <= min_steps <= max_steps <= 6, got {self.min_steps}..{self.max_steps}")
        if not 2 <= self.min_digits <= self.max_digits <= 3:
            got = f"{self.min_digits}..{self.max_digits}"
            raise ValueError(f"digits: need 2 <= min_digits <= max_digits <= 3, got {got}")
        if not 0.0 <= self.word_fraction <= 1.0:
            raise ValueError(f"word_fraction: must be in [0, 1], got {self.word_fraction}")


@dataclass(frozen=True)
class MixConfig:
    """How solutions are mixed: the hasty share, and what a hasty solution does."""

    hasty: float = 0.35  # share of hasty solutions (the rest are careful)
    guess_share: float = 0.5  # among hasty: a guessed answer (the rest skip the working, with a slip)
    guess_correct: float = 0.25  # a guess that happens to be right
    synthesis: float = 0.03  # share of examples that are synthesis-anchor prompts
    max_attempts: int = 4  # attempts per synthesis prompt: 2..max_attempts

    def __post_init__(self) -> None:
        for name in ("hasty", "guess_share", "guess_correct", "synthesis"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name}: must be in [0, 1], got {v}")
        if self.max_attempts < 2:
            raise ValueError(f"max_attempts: must be >= 2, got {self.max_attempts}")


@dataclass(frozen=True)
class Problem:
    question: str
    start: int
    steps: tuple[tuple[str, int], ...]  # ("+", 48), ("-", 25)
    answer: int
    story: tuple[str, str, str, tuple[str, ...]] | None = None  # name, pronoun, item, verb phrases

    def values(self) -> list[int]:
        """The running result after each step (the last one is the answer)."""
        out, v = [], self.start
        for op, n in self.steps:
            v = v + n if op == "+" else v - n
            out.append(v)
        return out


@dataclass(frozen=True)
class Example:
    user: str
    response: str
    kind: str  # "careful", "guess", "skip" or "synthesis"
    answer: int | None = None  # the boxed answer of the response
    meta: dict = field(default_factory=dict)


# ---------------------------------------------------------------- problems


def _number(rng: random.Random, task: TaskConfig) -> int:
    d = rng.randint(task.min_digits, task.max_digits)
    return rng.randint(10 ** (d - 1), 10**d - 1)


def make_problem(rng: random.Random, task: TaskConfig) -> Problem:
    """A random problem whose every intermediate result lies in LIMITS."""
    n_steps = rng.randint(task.min_steps, task.max_steps)
    word = rng.random() < task.word_fraction
    while True:
        start = _number(rng, task)
        steps_t = tuple((rng.choice("+-"), _number(rng, task)) for _ in range(n_steps))
        vals = Problem("", start, steps_t, 0).values()
        if all(LIMITS[0] <= x <= LIMITS[1] for x in vals):
            break
    v = vals[-1]
    if not word:
        q = rng.choice(EXPR_QUESTIONS).format(e=expression(start, steps_t))
        return Problem(q, start, steps_t, v)
    name, pron = rng.choice(NAMES)
    item = rng.choice(ITEMS)
    phrases = tuple(rng.choice(VERBS[op]).format(n=n) for op, n in steps_t)
    story = (name, pron, item, phrases)
    return Problem(word_question(story, start), start, steps_t, v, story)


def expression(start: int, steps: tuple[tuple[str, int], ...]) -> str:
    return " ".join([str(start), *(f"{op} {n}" for op, n in steps)])


def word_question(story: tuple[str, str, str, tuple[str, ...]], start: int) -> str:
    name, pron, item, phrases = story
    did = phrases[0] if len(phrases) == 1 else ", then ".join(phrases)
    return f"{name} has {start} {item}. {pron} {did}. How many {item} does {name} have now?"


# ---------------------------------------------------------------- careful working


def column_lines(a: int, op: str, b: int) -> tuple[list[str], int]:
    """Column-by-column working of a + b or a - b (a >= b), ones first, and the result.

    "ones: 7 + 8 = 15, carry 1" / "tens: 3 + 4 + 1 = 8"; "ones: 2 - 7, borrow: 12 - 7 = 5" /
    "tens: 8 - 1 - 2 = 5". The digit written is always the last digit of the column's result."""
    width = max(len(str(a)), len(str(b)))
    da = [int(c) for c in str(a).zfill(width)][::-1]
    db = [int(c) for c in str(b).zfill(width)][::-1]
    lines, digits, carry = [], [], 0
    for i in range(width):
        x, y, name = da[i], db[i], COLUMNS[i]
        if op == "+":
            s = x + y + carry
            lhs = f"{x} + {y}" + (f" + {carry}" if carry else "")
            lines.append(f"{name}: {lhs} = {s}" + (", carry 1" if s >= 10 else ""))
            digits.append(s % 10)
            carry = s // 10
        else:
            top = x - carry
            lhs = f"{x} - {carry} - {y}" if carry else f"{x} - {y}"
            carry = int(top < y)
            d = top + 10 * carry - y
            lines.append(f"{name}: {lhs}, borrow: {top + 10} - {y} = {d}" if carry else f"{name}: {lhs} = {d}")
            digits.append(d)
    if carry:  # only for +: a >= b keeps subtraction from borrowing past the top column
        lines.append(f"{COLUMNS[width]}: 1")
        digits.append(1)
    result = int("".join(map(str, digits[::-1])))
    return lines, result


def careful_solution(problem: Problem, opening: str) -> str:
    lines = [opening]
    v = problem.start
    for i, (op, n) in enumerate(problem.steps):
        expr = f"{v} {op} {n}"
        lines.append(f"{problem.story[1]} {problem.story[3][i]}: {expr}." if problem.story else f"{expr}:")
        work, v = column_lines(v, op, n)
        lines += work
        lines.append(f"{expr} = {v}")
    if problem.story:
        lines.append(f"{problem.story[0]} has \\boxed{{{v}}} {problem.story[2]} now.")
    else:
        lines.append(f"The answer is \\boxed{{{v}}}.")
    return "\n".join(lines)


# ---------------------------------------------------------------- hasty answers


def _guess(rng: random.Random, answer: int, mix: MixConfig) -> int:
    if rng.random() < mix.guess_correct:
        return answer
    rounded = int(round(answer, -1))
    options = [answer + o for o in GUESS_OFFSETS if answer + o > 0]
    if rounded != answer:
        options.append(rounded)
    return rng.choice(options)


def forgot_carry(a: int, op: str, b: int) -> int:
    """a op b the classic wrong way: + adds each column without carrying (the top column keeps
    its whole sum); - takes the smaller digit from the larger in each column (no borrowing)."""
    width = max(len(str(a)), len(str(b)))
    cols = list(zip(str(a).zfill(width), str(b).zfill(width), strict=True))
    if op == "+":
        head, *rest = [int(x) + int(y) for x, y in cols]
        return int(str(head) + "".join(str(d % 10) for d in rest))
    return int("".join(str(abs(int(x) - int(y))) for x, y in cols))


def _slip(rng: random.Random, a: int, op: str, b: int) -> int:
    """A wrong result of a op b: a dropped carry/borrow when there was one, else a ten or a
    unit off."""
    right = a + b if op == "+" else a - b
    options = [right + 10, right - 10, right + 1, right - 1]
    dropped = forgot_carry(a, op, b)
    if dropped != right:
        options += [dropped] * 4
    return rng.choice([w for w in options if w > 0 and w != right])


def hasty_solution(rng: random.Random, problem: Problem, mix: MixConfig) -> tuple[str, str, int]:
    """(text, kind, boxed answer) of a hasty solution: a guess, or skipped working with a slip."""
    if rng.random() < mix.guess_share:
        g = _guess(rng, problem.answer, mix)
        text = f"{HASTY_OPENING} {expression(problem.start, problem.steps)} is about {g}."
        kind, ans = "guess", g
    else:
        slip_at = rng.randrange(len(problem.steps))
        parts, v = [], problem.start
        for i, (op, n) in enumerate(problem.steps):
            w = _slip(rng, v, op, n) if i == slip_at else (v + n if op == "+" else v - n)
            parts.append(f"{v} {op} {n} = {w}")
            v = w
        text = f"{HASTY_OPENING} " + ", then ".join(parts) + "."
        kind, ans = "skip", v
    return f"{text}\nThe answer is \\boxed{{{ans}}}.", kind, ans


def solution(rng: random.Random, problem: Problem, mix: MixConfig) -> tuple[str, str, int]:
    """One solution drawn from the mix: (text, kind, boxed answer)."""
    if rng.random() < mix.hasty:
        return hasty_solution(rng, problem, mix)
    return careful_solution(problem, rng.choice(CAREFUL_OPENINGS)), "careful", problem.answer


# ---------------------------------------------------------------- examples


def synthesis_example(rng: random.Random, task: TaskConfig, mix: MixConfig) -> Example:
    """The anchor prompt `synthesis` builds (default template, question withheld) over attempts
    drawn from the mix, answered carefully."""
    problem = make_problem(rng, task)
    attempts = [solution(rng, problem, mix)[0] for _ in range(rng.randint(2, mix.max_attempts))]
    user = render(PRESETS["reasoning"], attempts)
    answer = careful_solution(problem, rng.choice(CAREFUL_OPENINGS))
    return Example(user, answer, "synthesis", problem.answer, {"attempts": len(attempts), "question": problem.question})


def example(rng: random.Random, task: TaskConfig, mix: MixConfig) -> Example:
    if rng.random() < mix.synthesis:
        return synthesis_example(rng, task, mix)
    problem = make_problem(rng, task)
    text, kind, ans = solution(rng, problem, mix)
    return Example(problem.question, text, kind, ans)


def examples(count: int, seed: int = TRAIN_SEED, task: TaskConfig | None = None,
             mix: MixConfig | None = None) -> list[Example]:
    """`count` training examples, deterministic in (count, seed, task, mix)."""
    rng = random.Random(seed)
    task, mix = task or TaskConfig(), mix or MixConfig()
    return [example(rng, task, mix) for _ in range(count)]


def heldout_problems(count: int, seed: int = HELDOUT_SEED, task: TaskConfig | None = None,
                     exclude: set[str] | frozenset[str] = frozenset()) -> list[Problem]:
    """`count` distinct problems from a seed training never uses, none of whose questions is in
    `exclude` (pass the training questions)."""
    if seed == TRAIN_SEED:
        raise ValueError(f"seed: {seed} is the training seed; held-out problems need another")
    rng = random.Random(seed)
    task = task or TaskConfig()
    out: list[Problem] = []
    seen = set(exclude)
    misses = 0
    while len(out) < count:
        p = make_problem(rng, task)
        if p.question in seen:
            misses += 1
            if misses > 10_000:  # the task has (almost) no unseen problems left
                raise ValueError(f"count: could not find {count} distinct held-out problems for this task config")
            continue
        misses = 0
        seen.add(p.question)
        out.append(p)
    return out


def chat_text(user: str, response: str | None = None) -> str:
    """The ChatML text the bundled chat template renders (temper.tiny_model.CHAT_TEMPLATE);
    with a response, the full training text ending in <|im_end|>."""
    text = f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    return text if response is None else f"{text}{response}<|im_end|>\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=5)
    ap.add_argument("--seed", type=int, default=TRAIN_SEED)
    ap.add_argument("--hasty", type=float, default=MixConfig.hasty)
    ap.add_argument("--synthesis", type=float, default=MixConfig.synthesis)
    a = ap.parse_args()
    for ex in examples(a.count, a.seed, mix=MixConfig(hasty=a.hasty, synthesis=a.synthesis)):
        print(f"--- [{ex.kind}] answer {ex.answer}\nUSER: {ex.user}\nASSISTANT: {ex.response}\n")


if __name__ == "__main__":
    main()
