"""Self-rewarding: sample k replies; the organism grades each with the organism's rubric (0-5); keep the best.

Two settings choose how a grade is read (docs/deviations.md):
- `grade_parse`: `cmt` (the default) takes the last labelled score ("Score: 4", "rating of 4", "4/5", ...), else
  the last standalone integer, and a number outside 0-5 is unparsed; `reference` takes the first "Score",
  "Rating" or "Result" (any case) followed by spaces or colons and a lone digit 0-5, else the last lone digit
  0-5 anywhere.
- `unparsed_grade`: `nan` (the default) records an unparsed grade as NaN, which never wins, so a prompt whose
  grades are all unparsed gets no label; `zero` scores it 0 as the reference does, so such a prompt keeps its
  first candidate.
Ties go to the first candidate either way; `extra.parse_ok` marks every unparsed grade.
"""

from __future__ import annotations

import logging
import re

from cmt.data.check import fill_rubric
from cmt.generation import SamplingParams, derive_seed
from cmt.judges.parsing import Unparseable, is_unparseable, parse_int_score
from cmt.methods import Candidate, LabelContext, argmax_first, candidate_rows, last_user_turn, sample_params
from cmt.methods.registry import MethodSpec

log = logging.getLogger(__name__)

SPEC = MethodSpec("self_rewarding", "label_generation", selects=True)
GRADE_PARSERS = ("cmt", "reference")
UNPARSED_GRADES = ("nan", "zero")

# A digit 0-5 standing alone as a word: no letter, digit or underscore touches it on either side.
_LONE_DIGIT = r"(?<!\w)([0-5])(?!\w)"
_REFERENCE_LABELLED = re.compile(r"(?:score|rating|result)[\s:]*" + _LONE_DIGIT, re.IGNORECASE)
_REFERENCE_LONE = re.compile(_LONE_DIGIT)


def parse_grade_reference(text: str) -> int | Unparseable:
    """The reference's grade: the first labelled lone digit 0-5, else the last lone digit 0-5 anywhere."""
    if not isinstance(text, str):
        return Unparseable(f"expected text, got {type(text).__name__}")
    labelled = _REFERENCE_LABELLED.search(text)
    if labelled:
        return int(labelled.group(1))
    lone = _REFERENCE_LONE.findall(text)
    if lone:
        return int(lone[-1])
    return Unparseable("no digit 0-5")


def parse_grade(text: str, how: str = "cmt") -> int | Unparseable:
    if how == "reference":
        return parse_grade_reference(text)
    return parse_int_score(text, 0, 5)


def _choice(settings: dict, key: str, default: str, valid: tuple[str, ...]) -> str:
    value = settings.get(key, default)
    if value not in valid:
        raise ValueError(f"self_rewarding {key} {value!r} is not available; valid: {', '.join(valid)}")
    return value


def grading_prompt(rubric: str, prompt: list[dict], answer: str) -> list[dict]:
    return [{"role": "user", "content": fill_rubric(rubric, last_user_turn(prompt), answer)}]


def label(context: LabelContext, examples, settings: dict, k: int, seed: int) -> list[dict]:
    if not context.rubric:
        raise ValueError("self_rewarding needs the organism's rubric (rubric.txt in its data folder)")
    how = _choice(settings, "grade_parse", "cmt", GRADE_PARSERS)
    unparsed = float("nan") if _choice(settings, "unparsed_grade", "nan", UNPARSED_GRADES) == "nan" else 0.0
    params = sample_params(context, settings)
    prompts = [e.prompt for e in examples]
    samples = context.generator.generate(prompts, k, params, derive_seed(seed, SPEC.name, "sample"))
    grade_params = SamplingParams(temperature=0.0, max_new_tokens=settings["grade_max_new_tokens"])
    grade_prompts = [
        grading_prompt(context.rubric, p, c.text)
        for p, cands in zip(prompts, samples, strict=True)
        for c in cands
    ]
    grades = context.generator.generate(grade_prompts, 1, grade_params, derive_seed(seed, SPEC.name, "grade"))
    rows, pos, n_unparsed = [], 0, 0
    for example, cands in zip(examples, samples, strict=True):
        candidates = []
        for c in cands:
            text = grades[pos][0].text
            pos += 1
            parsed = parse_grade(text, how)
            ok = not is_unparseable(parsed)
            n_unparsed += not ok
            score = float(parsed) if ok else unparsed
            candidates.append(Candidate(c, params, "sample", score, {"grade_text": text, "parse_ok": ok}))
        rows.extend(candidate_rows(example, candidates, argmax_first([c.score for c in candidates])))
    if n_unparsed:
        log.warning("self_rewarding: %d of %d grades unparsed (scored %s)", n_unparsed, pos, unparsed)
    return rows
