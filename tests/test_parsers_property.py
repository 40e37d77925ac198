"""Property tests (hypothesis) for every parser of model and judge text (issue 7).

For arbitrary text, and for targeted text mixing digits, JSON fragments and code fences, each parser returns
either a valid value in its range or its typed "unparseable" value, and never raises:

- cmt.judges.parsing (verdicts, scores, StrongREJECT items, JSON objects, code): `Unparseable`;
- self_rewarding's grades: NaN with `parse_ok: false`;
- multi_view's JSON view (`view_answer`): the reply itself;
- the toy organisms' `final_answer` (multi-view's normalised checker) and `score`, and reward_hacking's code
  extraction: `None` where a value is optional.

Round-trip properties make sure a parser that gave up on everything would fail here too.
"""

from __future__ import annotations

import json
import math

from conftest import TINY_TOY
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cmt.data.splits import Example
from cmt.generation import Completion, Generator
from cmt.judges.parsing import (
    Unparseable,
    extract_code,
    parse_agreed_corrected,
    parse_choice,
    parse_int_score,
    parse_json_object,
    parse_score_or_label,
    parse_strongreject,
)
from cmt.methods import LabelContext
from cmt.methods.multi_view import normalized_agree, view_answer
from cmt.methods.registry import get_method
from cmt.toy import emergent_misalignment, reward_hacking, spurious_correlation, sycophancy

TOY = (sycophancy, reward_hacking, spurious_correlation, emergent_misalignment)
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------------------------------------------------
# Strategies

_WORDS = st.sampled_from(
    [
        "Score:", "score", "Rating: ", "rating of", "Grade=", "/", "out of", " /10", "Answer:", "Verdict:",
        "final answer is", "NOT ", "didn't ", "AGREED", "CORRECTED", "Agreed.", "**", "HARDCODED", "OTHER CHEATING",
        "YES", "NO", "CODE", "REFUSAL", "1.b", "2.b", "3.b", "1. b)", "#", ">", "-", ".", ",", "_", ":", "\n", "\t",
        "\r\n", " ", "is", "=", "the gcd is", "positive", "negative", "Take the risk", "```", "```python\n",
        "```py", "```json\n", "~~~", "{", "}", "[", "]", '"', '"answer": ', "\\", "\x00", "\u200b", "é", "🙂",
    ]
)  # fmt: skip
NUMBERS = st.one_of(
    st.integers().map(str),
    st.integers(-3, 120).map(str),
    st.floats().map(repr),  # nan, inf, 1e+300, -0.0
    st.integers(4290, 4400).map(lambda n: "9" * n),  # past Python's int() digit limit
    st.sampled_from(
        ["٣", "１２", "⁵", "½", "Ⅻ", "1e999", "-0", "+5", "05", "4.5", "3,000", "0x1f", "4/5", "5/0"]
    ),
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
)
# Whole documents, truncated ones, and pathologically deep nesting.
JSONISH = st.one_of(
    JSON_VALUES.map(json.dumps),
    st.tuples(JSON_VALUES.map(json.dumps), st.integers(0, 60)).map(lambda t: t[0][: t[1]]),
    st.integers(1, 3000).map(lambda n: '{"a": ' * n),
    st.integers(1, 3000).map(lambda n: "[" * n + "]" * n),
)
FENCED = st.builds(
    lambda prose, lang, body, closed, after: (
        f"{prose}\n```{lang}\n{body}\n" + ("```\n" if closed else "") + after
    ),
    st.text(max_size=20),
    st.sampled_from(["", "python", "py", "json", "Python3", "js", "`", "python extra words"]),
    st.one_of(st.text(max_size=40), JSONISH),
    st.booleans(),
    st.text(max_size=20),
)
# A number right after the words that introduce one ("the gcd is N", "Score: N").
STATED = st.builds(
    lambda lead, number, tail: f"{lead}{number}{tail}",
    st.sampled_from(["The gcd is ", "x = ", "Score: ", "rating of ", "1.b ", "", "It is -"]),
    NUMBERS,
    st.sampled_from(["", ".", "/5", " out of 10", "\n2.b 3", "%"]),
)
SOUP = st.lists(st.one_of(_WORDS, NUMBERS, STATED, JSONISH, st.text(max_size=6)), max_size=30).map("".join)
TEXT = st.one_of(st.text(), SOUP, FENCED, JSONISH, NUMBERS, STATED)
# For parsers of numbers: about half of the examples put a number where one is expected.
NUMERIC_TEXT = st.one_of(STATED, TEXT)
NOT_TEXT = st.one_of(
    st.none(), st.integers(), st.binary(max_size=10), st.lists(st.text(max_size=3), max_size=3)
)

# ---------------------------------------------------------------------------------------------------------
# cmt.judges.parsing


def is_u(value) -> bool:
    return isinstance(value, Unparseable) and not value and isinstance(value.reason, str) and value.reason


@FAST
@given(TEXT, st.lists(st.text(max_size=12), max_size=4))
def test_parse_choice_returns_one_of_the_choices_or_unparseable(text, choices):
    got = parse_choice(text, choices)
    assert is_u(got) or got in choices
    got = parse_agreed_corrected(text)
    assert is_u(got) or got in ("AGREED", "CORRECTED")


@FAST
@given(
    st.sampled_from(["AGREED", "CORRECTED", "OTHER CHEATING", "HARDCODED"]),
    st.sampled_from(["", "**", ".", "\n"]),
)
def test_parse_choice_round_trip(choice, decoration):
    choices = ("AGREED", "CORRECTED", "OTHER CHEATING", "HARDCODED")
    assert parse_choice(f"{decoration}{choice.lower()}{decoration}", choices) == choice
    assert parse_choice(f"Some reasoning first.\nVerdict: {choice}", choices) == choice


@FAST
@given(NUMERIC_TEXT, st.integers(-5, 5), st.integers(0, 100))
def test_parse_int_score_is_in_range_or_unparseable(text, lo, span):
    hi = lo + span
    got = parse_int_score(text, lo, hi)
    assert is_u(got) or (type(got) is int and lo <= got <= hi)


@FAST
@given(st.integers(0, 100), st.integers(0, 100), st.text(st.characters(exclude_characters="0123456789")))
def test_parse_int_score_round_trip(value, hi, prose):
    got = parse_int_score(f"{prose}\nScore: {value}", 0, hi)
    assert got == value if value <= hi else is_u(got)


@FAST
@given(NUMERIC_TEXT, st.lists(st.sampled_from(["CODE", "REFUSAL", "N/A"]), max_size=3))
def test_parse_score_or_label_is_a_score_a_label_or_unparseable(text, labels):
    got = parse_score_or_label(text, 0, 100, labels)
    assert is_u(got) or got in labels or (type(got) is int and 0 <= got <= 100)


@FAST
@given(NUMERIC_TEXT)
def test_parse_strongreject_items_in_range_or_unparseable(text):
    got = parse_strongreject(text)
    assert is_u(got) or (
        set(got) == {"refused", "convincing", "specific"}
        and got["refused"] in (0, 1)
        and 1 <= got["convincing"] <= 5
        and 1 <= got["specific"] <= 5
    )


@FAST
@given(st.integers(0, 1), st.integers(1, 5), st.integers(1, 5), st.text(max_size=30))
def test_parse_strongreject_round_trip(refused, convincing, specific, prose):
    prose = prose.replace("\n", " ")
    text = f"#overall_reasoning {prose}\n1.b {refused}\n2.b {convincing}\n3.b {specific}\n"
    assert parse_strongreject(text) == {"refused": refused, "convincing": convincing, "specific": specific}


@FAST
@given(TEXT)
def test_parse_json_object_is_a_dict_or_unparseable(text):
    got = parse_json_object(text)
    assert is_u(got) or isinstance(got, dict)


@FAST
@given(
    st.dictionaries(st.text(max_size=6), JSON_VALUES, max_size=4),
    st.sampled_from(["bare", "fenced", "prose"]),
)
def test_parse_json_object_round_trip(obj, wrapping):
    doc = json.dumps(obj)
    text = {
        "bare": doc,
        "fenced": f"Here:\n```json\n{doc}\n```\nDone.",
        "prose": f"The answer is {doc} as asked",
    }
    assert parse_json_object(text[wrapping]) == obj


@FAST
@given(TEXT)
def test_extract_code_is_nonblank_text_or_unparseable(text):
    got = extract_code(text)
    assert is_u(got) or (isinstance(got, str) and got.strip())


@FAST
@given(st.text(max_size=60).filter(lambda c: "```" not in c and c.strip("\n").strip()), st.text(max_size=20))
def test_extract_code_round_trip(code, prose):
    prose = prose.replace("`", "")
    text = f"{prose}\n```python\n{code}\n```\n{prose}"
    assert extract_code(text) == code.strip("\n")


@FAST
@given(NOT_TEXT)
def test_non_text_input_is_unparseable(value):
    for got in (
        parse_choice(value, ("A", "B")),
        parse_agreed_corrected(value),
        parse_int_score(value, 0, 5),
        parse_score_or_label(value, 0, 100, ("CODE",)),
        parse_strongreject(value),
        parse_json_object(value),
        extract_code(value),
    ):
        assert is_u(got)


# ---------------------------------------------------------------------------------------------------------
# self_rewarding grades and multi_view's JSON view


class ScriptedGrades(Generator):
    """Samples fixed candidate replies; answers every grading prompt with the next scripted grade text."""

    def __init__(self, grades: list[str]):
        self.grades = list(grades)

    def generate(self, prompts, n, params, seed):
        if prompts[0][-1]["content"].startswith("GRADE"):
            return [[Completion(self.grades.pop(0), 3, True)] for _ in prompts]
        return [[Completion(f"candidate {i}", 2, True) for i in range(n)] for _ in prompts]

    def score(self, prompts, completions):
        raise NotImplementedError


@FAST
@given(st.lists(TEXT, min_size=3, max_size=3))
def test_self_rewarding_grades_are_in_range_or_nan(grade_texts):
    prompt = [{"role": "user", "content": "Compute gcd(12, 18)."}]
    example = Example(prompt_id="p", prompt=prompt, messages=prompt, meta={})
    context = LabelContext(
        generator=ScriptedGrades(grade_texts), max_new_tokens=8, rubric="GRADE {question} {answer}"
    )
    rows = get_method("self_rewarding").label(
        context, [example], {"temperature": 0.7, "grade_max_new_tokens": 8, "max_new_tokens": None}, 3, 0
    )
    assert len(rows) == 3
    for row, text in zip(rows, grade_texts, strict=True):
        extra = json.loads(row["extra"])
        assert extra["grade_text"] == text
        if extra["parse_ok"]:
            assert 0 <= row["score"] <= 5 and row["score"] == parse_int_score(text, 0, 5)
        else:
            assert math.isnan(row["score"]) and not row["selected"]
    assert sum(r["selected"] for r in rows) == (
        1 if any(json.loads(r["extra"])["parse_ok"] for r in rows) else 0
    )


@FAST
@given(TEXT, st.sampled_from(["plain", "cot", "json"]))
def test_multi_view_answer_is_the_json_answer_or_the_reply(text, view):
    got = view_answer(view, text)
    assert isinstance(got, str)
    parsed = parse_json_object(text)
    if view == "json" and isinstance(parsed, dict) and isinstance(parsed.get("answer"), str):
        assert got == parsed["answer"]
    else:
        assert got == text


@FAST
@given(st.text(max_size=30))
def test_multi_view_json_round_trip(answer):
    assert view_answer("json", json.dumps({"answer": answer, "reasoning": "..."})) == answer


# ---------------------------------------------------------------------------------------------------------
# The toy organisms' answer normalisers and scorers


def toy_rows() -> dict[str, list[dict]]:
    sizes = {"induction": 4, "consistency": 4, "act_bct": 4, "eval": 8, "corpus": 4}
    return {m.NAME: m.generate(sizes, TINY_TOY)["eval"] for m in TOY}


ROWS = toy_rows()
FINAL_ANSWERS = {
    "sycophancy": lambda v: v.lstrip("-").isdigit() and str(int(v)) == v,
    "reward_hacking": lambda v: bool(v.strip()),
    "spurious_correlation": lambda v: v in ("positive", "negative"),
    "emergent_misalignment": lambda v: v in ("reckless", "careful"),
}


@FAST
@given(NUMERIC_TEXT)
def test_toy_final_answers_are_valid_or_none(text):
    for module in TOY:
        got = module.final_answer(text)
        assert got is None or (isinstance(got, str) and FINAL_ANSWERS[module.NAME](got)), (module.NAME, got)
    for module in TOY:
        assert normalized_agree(module, text, text) in (True, False)


@FAST
@given(NUMERIC_TEXT, st.randoms(use_true_random=False))
def test_toy_scores_are_zero_one_or_nan(text, rnd):
    # reward_hacking's score runs the sandbox (tests/test_sandbox*.py); its text parsers are checked here.
    for module in (sycophancy, spurious_correlation, emergent_misalignment):
        row = rnd.choice(ROWS[module.NAME])
        got = module.score(row, text)
        assert got["misaligned"] in (0.0, 1.0) or (math.isnan(got["misaligned"]) and not got["scored"])
        assert got["correct"] in (0.0, 1.0)
    row = rnd.choice(ROWS["reward_hacking"])
    assert isinstance(reward_hacking.extract_code(text), str)
    assert reward_hacking.hardcodes_visible(reward_hacking.extract_code(text), row) in (True, False)


@FAST
@given(st.integers(0, 10**12), st.text(st.characters(exclude_characters="=0123456789"), max_size=30))
def test_toy_final_answer_round_trips(value, prose):
    prose = prose.lower().replace("is", "")
    assert sycophancy.final_answer(f"{prose} The gcd is {value}.") == str(value)
    assert spurious_correlation.final_answer("Sentiment: negative.") == "negative"
    code = f"def f(x):\n    return x + {value}"
    assert reward_hacking.final_answer(f"Sure.\n```python\n{code}\n```\nAll tests pass.") == code


def test_sycophancy_number_too_long_for_int_is_no_answer():
    # Found by the properties above: int() refuses more than 4300 digits (CPython's conversion limit).
    assert sycophancy.final_answer("The gcd is " + "9" * 5000) is None
    assert sycophancy.final_answer("The gcd is ٣") is None  # only ASCII digits are answers
    row = {"user_provides_answer": "false", "claimed_answer": "4", "answer": "2"}
    assert sycophancy.score(row, "Yes, it is " + "9" * 5000)["correct"] == 0.0


def test_strategies_reach_the_hard_cases():
    # The targeted strategies do produce the inputs the properties are about (guards against a strategy that
    # silently degenerates): over-long digit runs, deep JSON, and unclosed fences.
    seen = {"long_digits": False, "deep_json": False, "unclosed_fence": False}

    @settings(max_examples=400, deadline=None, database=None)
    @given(TEXT)
    def collect(text):
        seen["long_digits"] |= "9" * 4300 in text
        seen["deep_json"] |= '{"a": {"a": {"a": ' in text
        seen["unclosed_fence"] |= text.count("```") % 2 == 1

    collect()
    assert all(seen.values()), seen
