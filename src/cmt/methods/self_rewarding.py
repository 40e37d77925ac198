"""Self-rewarding: sample k replies; the organism grades each with the organism's rubric (0-5); keep the best.

Grades are parsed in two tiers (a digit after Score/Rating/Result, else the last standalone digit 0-5);
unparseable grades are recorded and never win.
"""

from __future__ import annotations

from cmt.data.check import fill_rubric
from cmt.generation import SamplingParams, derive_seed
from cmt.judges.parsing import is_unparseable, parse_int_score
from cmt.methods import Candidate, LabelContext, argmax_first, candidate_rows, last_user_turn, sample_params
from cmt.methods.registry import MethodSpec

SPEC = MethodSpec("self_rewarding", "label_generation", selects=True)


def grading_prompt(rubric: str, prompt: list[dict], answer: str) -> list[dict]:
    return [{"role": "user", "content": fill_rubric(rubric, last_user_turn(prompt), answer)}]


def label(context: LabelContext, examples, settings: dict, k: int, seed: int) -> list[dict]:
    if not context.rubric:
        raise ValueError("self_rewarding needs the organism's rubric (rubric.txt in its data folder)")
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
    rows, pos = [], 0
    for example, cands in zip(examples, samples, strict=True):
        candidates = []
        for c in cands:
            text = grades[pos][0].text
            pos += 1
            parsed = parse_int_score(text, 0, 5)
            score = float("nan") if is_unparseable(parsed) else float(parsed)
            candidates.append(
                Candidate(
                    c, params, "sample", score, {"grade_text": text, "parse_ok": not is_unparseable(parsed)}
                )
            )
        rows.extend(candidate_rows(example, candidates, argmax_first([c.score for c in candidates])))
    return rows
