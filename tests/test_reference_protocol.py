"""The reference switches (docs/deviations.md): each reference-mode behaviour pinned on examples built from the
reference's protocol, the defaults left as cmt's, and config/paper.yaml set to the reference's value."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import ClassVar

import pytest
import yaml

from cmt.data.splits import Example
from cmt.generation import Completion, Generator, SamplingParams
from cmt.methods import LabelContext
from cmt.methods import multi_view as mv
from cmt.methods import self_refinement as sref
from cmt.methods import self_rewarding as srew
from cmt.models import training

REPO = Path(__file__).resolve().parents[1]
QUESTION = "Compute gcd(12, 18)."


class ScriptedGenerator(Generator):
    """Replies from fn(last turn's content, params); records every prompt it was given."""

    def __init__(self, replies):
        self.replies = replies
        self.prompts: list[list[dict]] = []
        self.params: list[SamplingParams] = []

    def generate(self, prompts, n, params, seed):
        out = []
        for p in prompts:
            self.prompts.append(p)
            self.params.append(params)
            texts = self.replies(p[-1]["content"], params, n)
            assert len(texts) == n
            out.append([Completion(t, len(t.split()) + 1, True) for t in texts])
        return out

    def score(self, prompts, completions):
        raise NotImplementedError


def example(text=QUESTION, system=None):
    prompt = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    return Example(prompt_id=text, prompt=prompt, messages=prompt, meta={})


def context(generator, **kw):
    return LabelContext(generator=generator, max_new_tokens=16, **kw)


def selected(rows):
    return [r["text"] for r in rows if r["selected"]]


# ------------------------------------------------------------------------------------------------ multi_view

COT_SUFFIX = "\n\nLet's think step by step."
JSON_SUFFIX = "\n\nProvide your answer in a JSON object with the key 'answer'."


def view_of(content: str) -> str:
    if content.endswith(COT_SUFFIX):
        return "cot"
    if content.endswith(JSON_SUFFIX):
        return "json"
    return "plain"


def test_reference_views_append_the_reference_suffixes_to_the_last_user_turn():
    gen = ScriptedGenerator(lambda content, params, n: ["YES"] if "Answer 1:" in content else ["6"])
    rows = mv.label(
        context(gen), [example(system="Be brief.")], {"checker": "self", "protocol": "reference"}, 1, 0
    )
    views = gen.prompts[:3]
    assert [v[-1]["content"] for v in views] == [QUESTION, QUESTION + COT_SUFFIX, QUESTION + JSON_SUFFIX]
    assert all(v[0] == {"role": "system", "content": "Be brief."} for v in views)
    assert all(p.greedy for p in gen.params)
    assert selected(rows) == ["6"]


@pytest.mark.parametrize(
    "reply, answer",
    [
        # The last fenced block wins; an optional python tag after the fence is dropped.
        ("First:\n```\nx = 1\n```\nThen:\n```python\nprint(6)\n```\nTherefore 7.", "print(6)"),
        # No block: the stripped text after the LAST "therefore", in any case.
        ("Therefore it is 3. THEREFORE, the answer is 6.  ", ", the answer is 6."),
        ("so therefore\n 6 \n", "6"),
        # Neither: the whole reply, untouched.
        ("  The gcd is 6.  ", "  The gcd is 6.  "),
    ],
)
def test_reference_cot_answer_extraction(reply, answer):
    assert mv.view_answer("cot", reply, "reference") == answer
    assert mv.view_answer("cot", reply, "cmt") == reply  # cmt compares the whole CoT reply


@pytest.mark.parametrize(
    "reply, answer",
    [
        # json.loads of the first "{" to the last "}": its answer as a string, whatever its type.
        ('Sure: {"answer": "6"} done', "6"),
        ('{"answer": 6}', "6"),
        ('{"reasoning": {"step": 1}, "answer": "six"}', "six"),
        # Not JSON (single quotes): the regex for a quoted value after 'answer' or "answer" and a colon.
        ("{'answer': 'six'}", "six"),
        ("The 'answer' : \"6\" is final", "6"),
        # Two objects make the span invalid JSON: the regex takes the first quoted answer.
        ('{"answer": "a"} and {"answer": "b"}', "a"),
        # Neither: the whole reply.
        ("The answer is 6.", "The answer is 6."),
    ],
)
def test_reference_json_answer_extraction(reply, answer):
    assert mv.view_answer("json", reply, "reference") == answer


def test_cmt_json_answer_keeps_its_own_rule():
    assert mv.view_answer("json", '{"answer": 6}', "cmt") == '{"answer": 6}'  # a non-string answer: the reply
    assert mv.view_answer("json", '{"answer": "6"}', "cmt") == "6"


def test_reference_agreement_question_and_its_yes_prefix_reading():
    prompts = []

    def replies(content, params, n):
        if "Answer 1:" in content:
            prompts.append(content)
            return [" yes, they match" if "Answer 2:\nsix" in content else "I would say YES"]
        return {"plain": ["6"], "cot": ["Therefore six"], "json": ['{"answer": "6"}']}[view_of(content)]

    rows = mv.label(
        context(ScriptedGenerator(replies)), [example()], {"checker": "self", "protocol": "reference"}, 1, 0
    )
    cot_question, json_question = prompts
    assert cot_question.startswith(f"Question:\n{QUESTION}\n\nAnswer 1:\n6\n\nAnswer 2:\nsix\n\n")
    assert json_question.startswith(f"Question:\n{QUESTION}\n\nAnswer 1:\n6\n\nAnswer 2:\n6\n\n")
    assert "same core meaning or intent" in cot_question
    assert cot_question.endswith("Reply with only YES or NO.")
    # " yes, ..." starts with YES once stripped and upper-cased; "I would say YES" does not.
    extras = [json.loads(r["extra"]) for r in rows]
    assert extras[1] == {"answer": "six", "agrees": True}
    assert extras[2] == {"answer": "6", "agrees": False}
    assert selected(rows) == ["6"]
    assert mv.reference_says_yes("YES.") and mv.reference_says_yes("  yesterday")
    assert not mv.reference_says_yes("NO") and not mv.reference_says_yes("The answer: YES")


@pytest.mark.parametrize(
    "plain, label",
    [("  The gcd is 6.\n", ["The gcd is 6."]), ("  \n ", [])],
)
def test_reference_label_is_the_stripped_plain_reply_and_empty_is_no_label(plain, label):
    def replies(content, params, n):
        return ["YES"] if "Answer 1:" in content else [plain]

    rows = mv.label(
        context(ScriptedGenerator(replies)), [example()], {"checker": "self", "protocol": "reference"}, 1, 0
    )
    assert selected(rows) == label
    assert json.loads(rows[1]["extra"])["agrees"] is True  # dropped for emptiness alone


def test_cmt_protocol_is_the_default_and_keeps_its_views_and_label():
    gen = ScriptedGenerator(lambda content, params, n: ["YES"] if "Answer A:" in content else [" 6 "])
    rows = mv.label(context(gen), [example()], {"checker": "self"}, 1, 0)
    assert [p[-1]["content"] for p in gen.prompts[:3]] == [
        QUESTION,
        QUESTION + mv.VIEWS["cot"],
        QUESTION + mv.VIEWS["json"],
    ]
    assert "same final answer" in gen.prompts[3][-1]["content"]
    assert selected(rows) == [" 6 "]


class FakeJudge:
    """Stands in for cmt.judges.llm.LLMJudge: renders its rubric's calls and answers by script."""

    rendered: ClassVar[list[str]] = []

    def __init__(self, organism, settings):
        from cmt.judges.rubrics import get_rubric

        self.rubric = get_rubric(organism)

    def score_batch(self, rows, completions, prompts):
        from cmt.judges.rubrics import combine

        out = []
        for row, completion, prompt in zip(rows, completions, prompts, strict=True):
            fields = self.rubric.fields(row, prompt, completion)
            replies = {}
            for call in self.rubric.calls:
                text = call.render(fields)[-1]["content"]
                FakeJudge.rendered.append(text)
                replies[call.name] = "Yes." if "Answer 2:\n6" in text else "NO"
            out.append(combine(self.rubric, row, completion, replies, {}))
        return out


def test_reference_judge_checker_asks_the_reference_question(monkeypatch):
    import cmt.judges.llm

    monkeypatch.setattr(cmt.judges.llm, "LLMJudge", FakeJudge)
    FakeJudge.rendered = []

    def replies(content, params, n):
        return {"plain": ["6"], "cot": ["```python\n6\n```"], "json": ["{}"]}[view_of(content)]

    rows = mv.label(
        context(ScriptedGenerator(replies), judge_settings={"kind": "llm"}),
        [example()],
        {"checker": "judge", "protocol": "reference"},
        1,
        0,
    )
    assert len(FakeJudge.rendered) == 2
    assert all(
        "same core meaning or intent" in t and t.endswith("Reply with only YES or NO.")
        for t in FakeJudge.rendered
    )
    assert selected(rows) == ["6"]  # "Yes." on the CoT view counts, by its prefix
    assert mv._reference_rubric().calls[0].parse("yes") == "YES"


# ------------------------------------------------------------------------------------------- self_refinement


def test_reference_refinement_is_one_user_turn_without_system_turns():
    def replies(content, params, n):
        return ["refined"] if content.endswith("Refined Answer:") else ["draft text"]

    gen = ScriptedGenerator(replies)
    settings = {"temperature": 0.6, "top_p": 0.9, "max_new_tokens": None, "protocol": "reference"}
    rows = sref.label(context(gen), [example(system="You are terse.")], settings, 1, 0)
    refine = gen.prompts[1]
    assert refine == [
        {
            "role": "user",
            "content": f"{QUESTION}\n\nDraft Answer:\ndraft text\n\n"
            "Carefully review the draft answer above and provide an improved, final version.\n\n"
            "Refined Answer:",
        }
    ]
    assert gen.params[0].greedy
    assert (gen.params[1].temperature, gen.params[1].top_p) == (0.6, 0.9)
    assert selected(rows) == ["refined"]


def test_cmt_refinement_is_the_default_and_keeps_system_turns():
    prompt = sref.refinement_prompt(example(system="You are terse.").prompt, "d")
    assert prompt[0] == {"role": "system", "content": "You are terse."}
    assert prompt[1]["content"].startswith(f"Question: {QUESTION}\nDraft answer: d")


# -------------------------------------------------------------------------------------------- self_rewarding


@pytest.mark.parametrize(
    "text, grade",
    [
        ("Score: 4", 4),
        ("rating:: 3", 3),
        ("RESULT 2", 2),
        # The FIRST labelled digit, where cmt takes the last.
        ("Score: 2 at first. Final Score: 5", 2),
        # "24.5" has no lone digit after the label, so tier 1 fails; tier 2 takes the last lone digit, the 5.
        ("Final Score: 24.5", 5),
        # A label followed by an out-of-range digit falls through to the last lone digit 0-5.
        ("Score: 7, but 1 of 2 points", 2),
        ("I'd give it a 3, maybe a 4 out of 10", 4),
        ("Score3 and 23", None),
        ("no grade here", None),
        ("", None),
    ],
)
def test_reference_grade_parse(text, grade):
    parsed = srew.parse_grade(text, "reference")
    assert (None if not isinstance(parsed, int) else parsed) == grade


def test_grade_parse_orders_differ():
    assert srew.parse_grade("Score: 2 at first. Final Score: 5", "cmt") == 5
    assert srew.parse_grade("Score: 2 at first. Final Score: 5", "reference") == 2


RUBRIC = "Grade it.\nQuestion: {question}\nAnswer: {answer}\n"
SR_SETTINGS = {"temperature": 0.7, "top_p": 1.0, "grade_max_new_tokens": 8, "max_new_tokens": None}


def rewarding(grades: dict[str, str], candidates: list[str], **settings):
    def replies(content, params, n):
        if content.startswith("Grade"):
            return [next(g for key, g in grades.items() if f"Answer: {key}\n" in content)]
        return candidates

    return srew.label(context(ScriptedGenerator(replies), rubric=RUBRIC), [example()], {**SR_SETTINGS, **settings},
                      len(candidates), 0)  # fmt: skip


def test_reference_all_unparsed_scores_zero_and_keeps_the_first_candidate():
    grades = {"a": "???", "b": "no idea", "c": "good"}
    rows = rewarding(grades, ["a", "b", "c"], grade_parse="reference", unparsed_grade="zero")
    assert selected(rows) == ["a"]
    assert [r["score"] for r in rows] == [0.0, 0.0, 0.0]
    assert [json.loads(r["extra"])["parse_ok"] for r in rows] == [False, False, False]
    # cmt's default drops the prompt instead.
    assert selected(rewarding(grades, ["a", "b", "c"])) == []


def test_reference_ties_go_to_the_first_and_an_unparsed_grade_ties_a_zero():
    rows = rewarding({"a": "???", "b": "Score: 0", "c": "Rating: 0"}, ["a", "b", "c"], unparsed_grade="zero")
    assert selected(rows) == ["a"]
    rows = rewarding(
        {"a": "Score: 3", "b": "Score: 5", "c": "Result: 5"}, ["a", "b", "c"], grade_parse="reference"
    )
    assert selected(rows) == ["b"]


def test_cmt_unparsed_grade_is_nan_by_default():
    rows = rewarding({"a": "???", "b": "Score: 1"}, ["a", "b"])
    assert math.isnan(rows[0]["score"]) and selected(rows) == ["b"]


def test_unknown_settings_are_refused():
    with pytest.raises(ValueError, match="valid"):
        rewarding({"a": "1"}, ["a"], grade_parse="first")
    with pytest.raises(ValueError, match="valid"):
        mv.protocol_of({"protocol": "paper"})
    with pytest.raises(ValueError, match="valid"):
        sref.protocol_of({"protocol": "paper"})
    with pytest.raises(ValueError, match="valid"):
        training.loss_span_assistant_only({"loss_span": "prompt"})


# ------------------------------------------------------------------------------------------------ loss span


class CharTokenizer:
    """One token per character; the chat template is "<role>content</>" per turn, and "<assistant>" as the cue."""

    pad_token_id = 0

    def apply_chat_template(self, messages, add_generation_prompt=False, tokenize=False):
        text = "".join(f"<{m['role']}>{m['content']}</>" for m in messages)
        return text + ("<assistant>" if add_generation_prompt else "")

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}


@pytest.mark.parametrize("span", [None, "assistant", "all"])
def test_loss_span_reaches_the_sft_examples(monkeypatch, span):
    from cmt.phases import adapter

    seen = {}
    monkeypatch.setattr(
        adapter.training, "train", lambda model, examples, *a, **kw: seen.setdefault("ex", examples)
    )
    conversation = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]
    settings = {"learning_rate": 1e-3, "epochs": 1, "batch_size": 1, **({"loss_span": span} if span else {})}
    adapter.train_adapter(None, CharTokenizer(), [conversation], settings, 0, "test")
    (enc,) = seen["ex"]
    n_prompt = len("<user>hi</><assistant>")
    if span == "all":  # the reference: every token of the rendered chat is a target
        assert enc["labels"] == enc["input_ids"]
    else:  # cmt's default: the prompt is masked
        assert enc["labels"][:n_prompt] == [training.IGNORE] * n_prompt
        assert enc["labels"][n_prompt:] == enc["input_ids"][n_prompt:]


# ------------------------------------------------------------------------------------------- config/paper.yaml

# Each switch: where it sits in a config, and the value that gives the reference's behaviour.
REFERENCE_VALUES = {
    ("methods", "multi_view", "protocol"): "reference",
    ("methods", "self_refinement", "protocol"): "reference",
    ("methods", "self_rewarding", "grade_parse"): "reference",
    ("methods", "self_rewarding", "unparsed_grade"): "zero",
    ("methods", "act", "train", "epochs"): 3,
    ("methods", "bct", "train", "epochs"): 3,
}
PHASE_REFERENCE_VALUES = {("phase1", "loss_span"): "all", ("phase3", "loss_span"): "all"}


def get_path(config: dict, path: tuple[str, ...]):
    for key in path:
        config = config.get(key, {}) if isinstance(config, dict) else {}
    return config if config != {} else None


def test_paper_config_sets_every_switch_to_the_reference():
    paper = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    for path, value in REFERENCE_VALUES.items():
        assert get_path(paper, path) == value, ".".join(path)
    for model, spec in paper["models"].items():
        for path, value in PHASE_REFERENCE_VALUES.items():
            assert get_path(spec, path) == value, f"models.{model}.{'.'.join(path)}"
    # and each value does select the reference's behaviour in the code
    methods = paper["methods"]
    assert mv.protocol_of(methods["multi_view"]) == "reference"
    assert sref.protocol_of(methods["self_refinement"]) == "reference"
    assert not training.loss_span_assistant_only(paper["models"]["Llama-3.1-8B"]["phase1"])


def test_default_config_keeps_cmts_behaviour():
    default = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for path in REFERENCE_VALUES:
        if path[-1] != "epochs":
            assert get_path(default, path) is None, ".".join(path)
    for spec in default["models"].values():
        assert training.loss_span_assistant_only(spec["phase1"]) and training.loss_span_assistant_only(
            spec["phase3"]
        )


def test_deviations_doc_names_every_switch():
    doc = (REPO / "docs" / "deviations.md").read_text()
    for path in REFERENCE_VALUES:
        assert f"`{'.'.join(path)}" in doc, ".".join(path)
    assert "`models.<m>.phase1.loss_span`" in doc and "`models.<m>.phase3.loss_span`" in doc
