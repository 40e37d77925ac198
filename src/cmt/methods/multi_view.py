"""Multi-view consistency: greedy answers to three views of the prompt; keep the plain answer if another view
agrees with it, else drop the prompt (drops are counted in the manifest).

Views: plain, a step-by-step suffix, a JSON-answer suffix. `checker: normalized` compares the organism's
normalised final answers with a program; `checker: self` asks the organism whether two answers agree (YES/NO);
`checker: judge` asks the LLM judge of the config's `judge` block (rubric `answer_agreement`).

`protocol` chooses the wording and the extraction (docs/deviations.md):
- `cmt` (the default): single-newline suffixes, the CoT view's whole reply, the JSON view's `answer` only when it
  is a string, a "same final answer" question whose YES/NO is parsed strictly, and the plain reply as the label.
- `reference`: the reference labeller's suffixes; the CoT view's answer is its last fenced code block, else the
  text after its last "therefore", else the reply; the JSON view's answer is the `answer` field of the first `{`
  to last `}` span, else a quoted `answer` value, else the reply; the question asks for the same core
  meaning/intent and a reply counts as YES when it starts with YES; the label is the stripped plain reply, and
  a prompt whose stripped plain reply is empty gets no label.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import replace

from cmt.generation import derive_seed
from cmt.judges.parsing import is_unparseable, parse_choice, parse_json_object
from cmt.methods import Candidate, LabelContext, candidate_rows, greedy_params, last_user_turn, with_suffix
from cmt.methods.registry import MethodSpec

log = logging.getLogger(__name__)

SPEC = MethodSpec("multi_view", "label_generation")
PROTOCOLS = ("cmt", "reference")

VIEWS = {
    "plain": "",
    "cot": "\nThink step by step.",
    "json": '\nAnswer in JSON with the key "answer".',
}
REFERENCE_VIEWS = {
    "plain": "",
    "cot": "\n\nLet's think step by step.",
    "json": "\n\nProvide your answer in a JSON object with the key 'answer'.",
}
AGREEMENT_TEMPLATE = "Question: {question}\nAnswer A: {a}\nAnswer B: {b}\nDo the two answers give the same final answer? Reply YES or NO."
# The reference's question, in its shape: the question and the two answers in labelled blocks, "same core
# meaning/intent", and a closing instruction to reply with YES or NO alone.
REFERENCE_AGREEMENT_TEMPLATE = """\
Question:
{question}

Answer 1:
{answer_a}

Answer 2:
{response}

Do Answer 1 and Answer 2 express the same core meaning or intent (the same core advice or intent), even if
they are worded or formatted differently?

Reply with only YES or NO."""

_FENCED = re.compile(r"```(?:python)?[ \t]*\n?(.*?)```", re.DOTALL | re.IGNORECASE)
_THEREFORE = re.compile(r"therefore", re.IGNORECASE)
_QUOTED_ANSWER = re.compile(r"""["']answer["']\s*:\s*(?:"([^"]*)"|'([^']*)')""", re.DOTALL)


def protocol_of(settings: dict) -> str:
    protocol = settings.get("protocol", "cmt")
    if protocol not in PROTOCOLS:
        raise ValueError(f"multi_view protocol {protocol!r} is not available; valid: {', '.join(PROTOCOLS)}")
    return protocol


def reference_cot_answer(text: str) -> str:
    """The reference's CoT answer: the last fenced block's contents (an optional python tag dropped), else the
    stripped text after the last "therefore" (any case), else the whole reply."""
    blocks = _FENCED.findall(text)
    if blocks:
        return blocks[-1].strip()
    found = list(_THEREFORE.finditer(text))
    if found:
        return text[found[-1].end() :].strip()
    return text


def reference_json_answer(text: str) -> str:
    """The reference's JSON answer: `answer` of the object spanning the first `{` to the last `}`, as a string;
    else a quoted value after 'answer' or "answer" and a colon; else the whole reply."""
    start, end = text.find("{"), text.rfind("}")
    if start != -1 and end > start:
        try:
            obj = json.loads(text[start : end + 1])
        except (ValueError, RecursionError):
            obj = None
        if isinstance(obj, dict) and "answer" in obj:
            return str(obj["answer"])
    m = _QUOTED_ANSWER.search(text)
    if m:
        return m.group(1) if m.group(1) is not None else m.group(2)
    return text


def view_answer(view: str, text: str, protocol: str = "cmt") -> str:
    """The answer a view's reply gives. cmt: the JSON `answer` field (a string) for the JSON view, else the
    reply. reference: reference_cot_answer / reference_json_answer for those views, else the reply."""
    if protocol == "reference":
        if view == "cot":
            return reference_cot_answer(text)
        if view == "json":
            return reference_json_answer(text)
        return text
    if view == "json":
        parsed = parse_json_object(text)
        if not is_unparseable(parsed) and isinstance(parsed.get("answer"), str):
            return parsed["answer"]
    return text


def reference_says_yes(text: str) -> bool:
    """The reference's reading of a YES/NO reply: stripped and upper-cased, it starts with YES."""
    return text.strip().upper().startswith("YES")


def normalized_agree(organism, plain: str, other: str) -> bool:
    a, b = organism.final_answer(plain), organism.final_answer(other)
    return a is not None and a == b


def _reference_rubric():
    """The answer_agreement rubric with the reference's question and its YES-prefix reading (never unparsed)."""
    from cmt.judges.rubrics import RUBRICS, JudgeCall

    base = RUBRICS["answer_agreement"]
    call = JudgeCall(
        "verdict", REFERENCE_AGREEMENT_TEMPLATE, lambda t: "YES" if reference_says_yes(t) else "NO"
    )
    return replace(base, calls=(call,))


def judge_agreement(
    context: LabelContext, prompts, answers: dict[str, list[str]], protocol: str = "cmt"
) -> tuple[dict[str, list[bool]], dict[str, list[bool]]]:
    """The LLM judge's YES/NO on (plain, other view) per prompt, and whether each reply parsed; an unparseable
    reply counts as no agreement."""
    from cmt.judges.llm import LLMJudge

    if not context.judge_settings or context.judge_settings.get("kind") != "llm":
        raise ValueError("multi_view checker 'judge' needs the config's top-level judge block (an LLM judge)")
    judge = LLMJudge("answer_agreement", context.judge_settings)
    if protocol == "reference":
        judge.rubric = _reference_rubric()
    questions = [last_user_turn(p) for p in prompts]
    agree, parsed = {}, {}
    for view in ("cot", "json"):
        rows = [{"answer_a": a} for a in answers["plain"]]
        verdicts = judge.score_batch(rows, answers[view], questions)
        agree[view] = [v["agrees"] == 1.0 for v in verdicts]
        parsed[view] = [bool(v.get("parse_ok", True)) for v in verdicts]
    return agree, parsed


def self_agreement_prompt(protocol: str, question: str, a: str, b: str) -> list[dict]:
    if protocol == "reference":
        content = REFERENCE_AGREEMENT_TEMPLATE.format(question=question, answer_a=a, response=b)
    else:
        content = AGREEMENT_TEMPLATE.format(question=question, a=a, b=b)
    return [{"role": "user", "content": content}]


def _view_extra(view: str, i: int, answers: dict, agree: dict, parsed: dict) -> dict:
    """A view candidate's extras: its answer; for the other views, whether it agreed and, where a checker's
    YES/NO reply can fail to parse, `parse_ok` (counted as the run's Phase-2 parse failures)."""
    extra = {"answer": answers[view][i]}
    if view != "plain":
        extra["agrees"] = agree[view][i]
        if view in parsed:
            extra["parse_ok"] = parsed[view][i]
    return extra


def label(context: LabelContext, examples, settings: dict, k: int, seed: int) -> list[dict]:
    protocol = protocol_of(settings)
    views = REFERENCE_VIEWS if protocol == "reference" else VIEWS
    prompts = [e.prompt for e in examples]
    params = greedy_params(context, settings)
    outputs = {
        view: context.generator.generate(
            [with_suffix(p, suffix) for p in prompts], 1, params, derive_seed(seed, SPEC.name, view)
        )
        for view, suffix in views.items()
    }
    answers = {
        view: [view_answer(view, out[0].text, protocol) for out in outs] for view, outs in outputs.items()
    }
    agree: dict[str, list[bool]] = {}
    parsed: dict[str, list[bool]] = {}  # per view, whether the checker's YES/NO parsed (self and judge only)
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
                self_agreement_prompt(protocol, last_user_turn(p), a, b)
                for p, a, b in zip(prompts, answers["plain"], answers[view], strict=True)
            ]
            replies = context.generator.generate(
                questions, 1, params, derive_seed(seed, SPEC.name, "check", view)
            )
            if protocol == "reference":
                agree[view] = [reference_says_yes(r[0].text) for r in replies]
            else:
                choices = [parse_choice(r[0].text, ("YES", "NO")) for r in replies]
                agree[view] = [c == "YES" for c in choices]
                parsed[view] = [not is_unparseable(c) for c in choices]
    elif settings["checker"] == "judge":
        agree, parsed = judge_agreement(context, prompts, answers, protocol)
    else:
        raise ValueError(
            f"multi_view checker {settings['checker']!r} is not available; valid: normalized, self, judge"
        )
    rows = []
    for i, example in enumerate(examples):
        kept = agree["cot"][i] or agree["json"][i]
        plain = outputs["plain"][i][0]
        if protocol == "reference":
            # The label is the stripped plain reply, and an empty one is no label.
            plain = replace(plain, text=plain.text.strip())
            kept = kept and plain.text != ""
        candidates = [
            Candidate(plain if view == "plain" else outputs[view][i][0], params, f"view:{view}",
                      extra=_view_extra(view, i, answers, agree, parsed))
            for view in views
        ]  # fmt: skip
        rows.extend(candidate_rows(example, candidates, selected=0 if kept else None))
    return rows
