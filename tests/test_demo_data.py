"""The demo task's data generator (tools/demo_data.py): deterministic, careful solutions are right
line by line, hasty ones spread over wrong answers, the mix and difficulty knobs do what they say,
held-out problems never come from training."""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest

from temper.decoding.answers import extract_answer
from tools.demo_data import (
    CAREFUL_OPENINGS,
    HASTY_OPENING,
    TRAIN_SEED,
    MixConfig,
    TaskConfig,
    careful_solution,
    chat_text,
    column_lines,
    examples,
    forgot_carry,
    hasty_solution,
    heldout_problems,
    make_problem,
)

EQUATION = re.compile(r"(\d+(?: [+-] \d+)+) = (\d+)")


def test_same_seed_same_examples_other_seed_other_examples():
    assert examples(300, seed=5) == examples(300, seed=5)
    assert examples(300, seed=5) != examples(300, seed=6)
    assert heldout_problems(50, seed=9) == heldout_problems(50, seed=9)


def test_column_arithmetic_is_exact():
    rng = random.Random(0)
    pairs = [(rng.randint(10, 999), rng.randint(10, 999)) for _ in range(3000)] + [(999, 999), (100, 99), (10, 10)]
    for a, b in pairs:
        assert column_lines(a, "+", b)[1] == a + b
        hi, lo = max(a, b), min(a, b)
        assert column_lines(hi, "-", lo)[1] == hi - lo


def test_column_lines_read_like_school_arithmetic():
    assert column_lines(37, "+", 48) == (["ones: 7 + 8 = 15, carry 1", "tens: 3 + 4 + 1 = 8"], 85)
    assert column_lines(95, "+", 10) == (["ones: 5 + 0 = 5", "tens: 9 + 1 = 10, carry 1", "hundreds: 1"], 105)
    assert column_lines(52, "-", 27) == (["ones: 2 - 7, borrow: 12 - 7 = 5", "tens: 5 - 1 - 2 = 2"], 25)


def test_every_equation_of_a_careful_solution_holds():
    rng = random.Random(1)
    for _ in range(400):
        p = make_problem(rng, TaskConfig())
        text = careful_solution(p, rng.choice(CAREFUL_OPENINGS))
        assert extract_answer(text) == str(p.answer)
        eqs = EQUATION.findall(text)
        assert len(eqs) >= 2 * len(p.steps)  # column lines and the step results
        for lhs, rhs in eqs:
            assert eval(lhs) == int(rhs), (lhs, rhs, text)  # noqa: S307 (digits and +/- only)


def test_careful_answers_are_right_and_hasty_ones_spread():
    data = examples(3000, seed=2, mix=MixConfig(synthesis=0.0))
    by_kind = Counter(ex.kind for ex in data)
    assert set(by_kind) == {"careful", "guess", "skip"}
    rng = random.Random(2)
    problems = [make_problem(rng, TaskConfig()) for _ in range(300)]
    for p in problems:
        assert extract_answer(careful_solution(p, CAREFUL_OPENINGS[0])) == str(p.answer)
    # hasty answers to ONE problem: mostly wrong, and spread over many values
    p = problems[0]
    answers = Counter(hasty_solution(rng, p, MixConfig())[2] for _ in range(500))
    assert answers[p.answer] / 500 < 0.2
    assert len(answers) >= 8
    skips = [hasty_solution(rng, p, MixConfig(guess_share=0.0)) for _ in range(200)]
    assert all(kind == "skip" and ans != p.answer for _, kind, ans in skips)  # a skip always slips


def test_the_hasty_opening_is_one_phrase_and_the_careful_ones_several():
    data = examples(2000, seed=3, mix=MixConfig(synthesis=0.0))
    openings = Counter(ex.response.split("\n")[0] if ex.kind == "careful" else HASTY_OPENING for ex in data)
    assert set(openings) == {HASTY_OPENING, *CAREFUL_OPENINGS}
    # the single hasty opening is more likely than any single careful one (the task's trap)
    assert openings[HASTY_OPENING] > max(openings[o] for o in CAREFUL_OPENINGS)
    assert all(ex.response.startswith(HASTY_OPENING) == (ex.kind != "careful") for ex in data)


@pytest.mark.parametrize("hasty", [0.0, 0.2, 0.6, 1.0])
def test_the_mix_parameter_sets_the_hasty_share(hasty):
    data = examples(2000, seed=4, mix=MixConfig(hasty=hasty, synthesis=0.0))
    share = sum(ex.kind != "careful" for ex in data) / len(data)
    assert abs(share - hasty) < 0.04


def test_guess_knobs():
    data = examples(1000, seed=5, mix=MixConfig(hasty=1.0, guess_share=1.0, guess_correct=1.0, synthesis=0.0))
    assert all(ex.kind == "guess" for ex in data)
    rng = random.Random(5)
    for _ in range(200):
        p = make_problem(rng, TaskConfig())
        text, kind, ans = hasty_solution(rng, p, MixConfig(guess_share=1.0, guess_correct=1.0))
        assert kind == "guess" and ans == p.answer and extract_answer(text) == str(p.answer)


def test_forgot_carry_is_the_classic_slip():
    assert forgot_carry(37, "+", 48) == 75
    assert forgot_carry(99, "+", 83) == 172
    assert forgot_carry(52, "-", 27) == 35


def test_difficulty_knobs():
    rng = random.Random(6)
    task = TaskConfig(min_steps=2, max_steps=2, min_digits=3, max_digits=3, word_fraction=0.0)
    for _ in range(300):
        p = make_problem(rng, task)
        assert len(p.steps) == 2 and p.story is None and 100 <= p.start <= 999
        assert all(100 <= n <= 999 for _, n in p.steps)
        assert all(10 <= v <= 999 for v in p.values()) and p.values()[-1] == p.answer
    words = [make_problem(rng, TaskConfig(word_fraction=1.0)) for _ in range(50)]
    assert all(p.story is not None and p.question.endswith("now?") for p in words)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [({"min_steps": 0}, "steps"), ({"min_steps": 3, "max_steps": 2}, "steps"), ({"max_digits": 4}, "digits"),
     ({"word_fraction": 1.5}, "word_fraction")],
)
def test_bad_task_config_names_the_field(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        TaskConfig(**kwargs)


@pytest.mark.parametrize(("kwargs", "needle"), [({"hasty": -0.1}, "hasty"), ({"synthesis": 2}, "synthesis"),
                                               ({"max_attempts": 1}, "max_attempts")])
def test_bad_mix_config_names_the_field(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        MixConfig(**kwargs)


def test_synthesis_examples_are_the_anchor_prompt_answered_carefully():
    from temper.decoding.synthesis_prompt import PRESETS

    data = examples(200, seed=7, mix=MixConfig(synthesis=1.0))
    head = PRESETS["reasoning"].split("{count}")[0]
    for ex in data:
        assert ex.kind == "synthesis" and ex.user.startswith(head)
        assert f"### Response {ex.meta['attempts']}\n" in ex.user
        assert ex.response.split("\n")[0] in CAREFUL_OPENINGS
        assert extract_answer(ex.response) == str(ex.answer)
        assert ex.meta["question"] not in ex.user  # the anchor never sees the question


def test_heldout_problems_avoid_the_training_seed_and_questions():
    with pytest.raises(ValueError, match="training seed"):
        heldout_problems(10, seed=TRAIN_SEED)
    train = {ex.meta.get("question", ex.user) for ex in examples(3000)}
    held = heldout_problems(300, exclude=train)
    assert len({p.question for p in held}) == 300
    assert not train & {p.question for p in held}


def test_heldout_problems_give_up_clearly_when_the_task_has_too_few(monkeypatch):
    import tools.demo_data as dd

    one = dd.make_problem(random.Random(0), TaskConfig())
    monkeypatch.setattr(dd, "make_problem", lambda rng, task: one)
    with pytest.raises(ValueError, match="count: could not find 2 distinct"):
        dd.heldout_problems(2)


def test_chat_text_is_what_the_bundled_chat_template_renders():
    from transformers import AutoTokenizer

    from temper.decoding.engines.hf import DEFAULT_MODEL_PATH

    tok = AutoTokenizer.from_pretrained(DEFAULT_MODEL_PATH)
    msgs = [{"role": "user", "content": "What is 37 + 48?"}]
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == chat_text(msgs[0]["content"])
    full = tok.apply_chat_template([*msgs, {"role": "assistant", "content": "85"}], tokenize=False)
    assert full == chat_text(msgs[0]["content"], "85")
