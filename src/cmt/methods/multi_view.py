"""Multi-view consistency: greedy answers to three views of the prompt; keep the plain answer if another view
agrees with it, else drop the prompt (drops are counted in the manifest).

Views: plain, a step-by-step suffix, a JSON-answer suffix. `checker: normalized` compares the organism's
normalised final answers with a program; `checker: self` asks the organism whether two answers agree (YES/NO); `checker: judge` asks the LLM judge of
the config's `judge` block (rubric `answer_agreement`).
"""

from __future__ import annotations

from cmt.generation import derive_seed
from cmt.judges.parsing import is_unparseable, parse_choice, parse_json_object
from cmt.methods import Candidate, LabelContext, candidate_rows, greedy_params, last_user_turn, with_suffix
from cmt.methods.registry import MethodSpec

SPEC = MethodSpec("multi_view", "label_generation")

VIEWS = {
    "plain": "",
    "cot": "\nThink step by step.",
    "json": '\nAnswer in JSON with the key "answer".',
}
AGREEMENT_TEMPLATE = "Question: {question}\nAnswer A: {a}\nAnswer B: {b}\nDo the two answers give the same final answer? Reply YES or NO."


def view_answer(view: str, text: str) -> str:
    """The answer a view's reply gives: the JSON `answer` field for the JSON view, else the reply."""
    if view == "json":
        parsed = parse_json_object(text)
        if not is_unparseable(parsed) and isinstance(parsed.get("answer"), str):
            return parsed["answer"]
    return text


def normalized_agree(organism, plain: str, other: str) -> bool:
    a, b = organism.final_answer(plain), organism.final_answer(other)
    return a is not None and a == b


def judge_agreement(context: LabelContext, prompts, answers: dict[str, list[str]]) -> dict[str, list[bool]]:
    """The LLM judge's YES/NO on (plain, other view) per prompt; an unparseable reply counts as no agreement."""
    from cmt.judges.llm import LLMJudge

    if not context.judge_settings or context.judge_settings.get("kind") != "llm":
        raise ValueError("multi_view checker 'judge' needs the config's top-level judge block (an LLM judge)")
    judge = LLMJudge("answer_agreement", context.judge_settings)
    questions = [last_user_turn(p) for p in prompts]
    agree = {}
    for view in ("cot", "json"):
        rows = [{"answer_a": a} for a in answers["plain"]]
        verdicts = judge.score_batch(rows, answers[view], questions)
        agree[view] = [v["agrees"] == 1.0 for v in verdicts]
    return agree


def label(context: LabelContext, examples, settings: dict, k: int, seed: int) -> list[dict]:
    prompts = [e.prompt for e in examples]
    params = greedy_params(context, settings)
    outputs = {
        view: context.generator.generate(
            [with_suffix(p, suffix) for p in prompts], 1, params, derive_seed(seed, SPEC.name, view)
        )
        for view, suffix in VIEWS.items()
    }
    answers = {view: [view_answer(view, out[0].text) for out in outs] for view, outs in outputs.items()}
    agree: dict[str, list[bool]] = {}
    if settings["checker"] == "normalized":
        if context.organism is None or not hasattr(context.organism, "final_answer"):
            raise ValueError(
                "multi_view checker 'normalized' needs an organism with a final_answer normaliser"
            )
        for view in ("cot", "json"):
            agree[view] = [
                normalized_agree(context.organism, a, b)
                for a, b in zip(answers["plain"], answers[view], strict=True)
            ]
    elif settings["checker"] == "self":
        for view in ("cot", "json"):
            questions = [
                [{"role": "user", "content": AGREEMENT_TEMPLATE.format(question=last_user_turn(p), a=a, b=b)}]
                for p, a, b in zip(prompts, answers["plain"], answers[view], strict=True)
            ]
            replies = context.generator.generate(
                questions, 1, params, derive_seed(seed, SPEC.name, "check", view)
            )
            agree[view] = [parse_choice(r[0].text, ("YES", "NO")) == "YES" for r in replies]
    elif settings["checker"] == "judge":
        agree = judge_agreement(context, prompts, answers)
    else:
        raise ValueError(
            f"multi_view checker {settings['checker']!r} is not available; valid: normalized, self, judge"
        )
    rows = []
    for i, example in enumerate(examples):
        kept = agree["cot"][i] or agree["json"][i]
        candidates = [
            Candidate(outputs[view][i][0], params, f"view:{view}", extra={"answer": answers[view][i], **(
                {"agrees": agree[view][i]} if view != "plain" else {})})
            for view in VIEWS
        ]  # fmt: skip
        rows.extend(candidate_rows(example, candidates, selected=0 if kept else None))
    return rows
