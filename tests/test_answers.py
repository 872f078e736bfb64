"""Answer extraction, normalisation and majority voting (temper.decoding.answers)."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

from temper.decoding import answers as A
from temper.decoding.answers import (
    canonical_number,
    extract_answer,
    extract_boxed,
    extract_last_number,
    majority_vote,
    normalize_answer,
)

# (model output, expected normalised answer with the default "auto" extractor)
CASES = [
    # \boxed, nested braces, \fbox
    (r"so the answer is \boxed{42}.", "42"),
    (r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt{3}}{2}"),
    (r"first \boxed{1} then \boxed{\{1,2\}}", r"\{1,2\}"),
    (r"\fbox{17}", "17"),
    (r"\boxed 5$ done", "5"),
    (r"\boxed{7} and later \boxed{8", "7"),  # a box cut off by max_tokens is skipped
    (r"\boxed{} but 12 apples", "12"),  # an empty box falls back to the last number
    # fractions: \frac, \dfrac, \tfrac, shorthand, a/b, signs, reduction
    (r"\boxed{\frac{1}{2}}", "0.5"),
    (r"\boxed{\dfrac{2}{4}}", "0.5"),
    (r"\boxed{\tfrac{1}{3}}", "1/3"),
    (r"\boxed{\frac12}", "0.5"),
    (r"\boxed{-\frac{1}{3}}", "-1/3"),
    (r"\boxed{\frac{-2}{6}}", "-1/3"),
    (r"\boxed{6/4}", "1.5"),
    (r"\boxed{\frac{4}{2}}", "2"),
    (r"\boxed{1/0}", "1/0"),  # not a number: kept as text
    # negatives and decimals
    (r"\boxed{-7}", "-7"),
    (r"\boxed{−4}", "-4"),  # unicode minus
    (r"\boxed{+7}", "7"),
    (r"\boxed{-0}", "0"),
    (r"\boxed{0.50}", "0.5"),
    (r"\boxed{5.0}", "5"),
    (r"\boxed{.5}", "0.5"),
    (r"\boxed{3.}", "3"),
    # thousands separators
    (r"\boxed{1,234,567}", "1234567"),
    (r"\boxed{1{,}000}", "1000"),
    (r"\boxed{1\,000.50}", "1000.5"),
    (r"\boxed{ 1 000 000 }", "1000000"),
    # \text, units, $, degrees, percent, \left/\right, x =
    (r"\boxed{5\text{ cm}}", "5"),
    (r"\boxed{12 \text{ square units}}", "12"),
    (r"\boxed{5cm}", "5"),
    (r"\boxed{5x}", "5x"),  # a variable is not a unit
    (r"\boxed{10\%}", "10"),
    (r"\boxed{90^\circ}", "90"),
    (r"\boxed{\$5.00}", "5"),
    (r"$\boxed{x = 3}$", "3"),
    (r"\boxed{\text{(B)}}", "(B)"),
    (r"\boxed{\textbf{\text{yes}}}", "yes"),
    (r"\boxed{\left( 1, 2 \right)}", "(1,2)"),
    (r"\boxed{2x + 1}", "2x+1"),
    # last number (no box)
    ("The answer is 42.", "42"),
    ("it costs $1,200.50 in total", "1200.5"),
    ("the temperature fell to -3 degrees", "-3"),
    ("from x-3 we get nothing", "3"),  # a hyphen is not a minus
    ("3 of 4, so a ratio of 3/4", "0.75"),
    (r"so it is $\frac{2}{3}$ of it", "2/3"),
    ("values 1,2,3", "3"),  # not thousands groups
    # no answer
    ("no answer here", None),
    ("", None),
    (r"\boxed{}", None),
]


@pytest.mark.parametrize(("text", "want"), CASES)
def test_extract_and_normalise(text, want):
    assert extract_answer(text) == want


def test_table_is_big_enough():
    assert len(CASES) >= 30


def test_named_extractors_differ():
    text = r"we get \boxed{12} after 3 steps"
    assert extract_answer(text, "boxed") == "12"
    assert extract_answer(text, "last_number") == "3"
    assert extract_answer(text, "auto") == "12"
    assert extract_boxed("no box 5") is None
    assert extract_last_number("nothing") is None


def test_unknown_extractor_and_registration(monkeypatch):
    with pytest.raises(KeyError, match="unknown extractor 'nope'"):
        extract_answer("x", "nope")
    monkeypatch.setitem(A.EXTRACTORS, "first_word", lambda t: t.split()[0] if t.split() else None)
    assert extract_answer("Paris is the capital", "first_word") == "Paris"


@pytest.mark.parametrize(
    ("x", "want"),
    [(Fraction(1, 2), "0.5"), (Fraction(-5, 4), "-1.25"), (Fraction(1, 3), "1/3"), (Fraction(-2, 6), "-1/3"),
     (Fraction(0), "0"), (Fraction(1234), "1234"), (Fraction(1, 1024), "0.0009765625"), (Fraction(7, 10), "0.7")],
)
def test_canonical_number(x, want):
    assert canonical_number(x) == want
    assert Fraction(want) == x  # the canonical form reads back as the same rational


def test_equal_values_normalise_equal():
    forms = [r"\frac{1}{2}", r"\dfrac{2}{4}", "0.5", "0.50", "1/2", r"\frac12", r"\tfrac{3}{6}", ".5"]
    assert {normalize_answer(f) for f in forms} == {"0.5"}
    assert normalize_answer(None) is None
    assert normalize_answer("  ") is None


# ---------------------------------------------------------------- voting


def test_majority_wins():
    v = majority_vote(["3", "5", "3", None, "5", "3"], [-1.0, -0.1, -2.0, -0.01, -0.2, -1.5])
    assert v.winner == "3"
    assert v.table == {"3": 3, "5": 2}
    assert v.chosen == 0  # the most likely rollout that answered 3 (-1.0 beats -1.5 and -2.0)
    assert sorted(v.order) == list(range(6))
    assert v.order[:2] == [0, 1]  # best rollout of each answer, in answer rank
    assert v.order[-1] == 3  # no answer, no vote: last


def test_tie_broken_by_mean_logprob():
    # 2 votes each; mean of "a" = -1.0, of "b" = -0.75 → b
    v = majority_vote(["a", "b", "a", "b"], [-0.5, -1.0, -1.5, -0.5])
    assert v.winner == "b"
    assert v.chosen == 3  # b's rollouts: index 3 (-0.5) beats index 1 (-1.0)
    assert v.answer_scores == {"b": -0.75, "a": -1.0}


def test_full_tie_goes_to_the_earliest():
    v = majority_vote(["b", "a", "a", "b"], [-1.0, -1.0, -1.0, -1.0])
    assert v.winner == "b"
    assert v.chosen == 0
    assert v.order == [0, 1, 3, 2]


def test_no_answers_falls_back_to_score():
    v = majority_vote([None, None, None], [-2.0, -0.5, -0.5])
    assert v.winner is None and v.table == {}
    assert v.order == [1, 2, 0]


def test_nan_scores_rank_last_and_lengths_checked():
    v = majority_vote(["a", "a", "b", "b"], [math.nan, -1.0, -3.0, -3.0])
    assert v.winner == "b"  # a's mean is -inf once its NaN counts as -inf
    with pytest.raises(ValueError):
        majority_vote(["a"], [])
    with pytest.raises(ValueError):
        majority_vote([], [])
