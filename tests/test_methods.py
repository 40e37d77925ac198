"""Each method's selection pinned down on constructed cases, with a scripted generator."""

import json
import math
from modulefinder import ModuleFinder
from pathlib import Path

import pytest

from cmt.data.splits import Example
from cmt.generation import Completion, Generator, SamplingParams, SequenceScore
from cmt.methods import LabelContext, argmax_first
from cmt.methods.registry import FAMILIES, get_method, method_files, method_names
from cmt.toy import sycophancy


class ScriptedGenerator(Generator):
    """Returns scripted completions per (prompt text, temperature/beams) and scripted scores per text."""

    def __init__(self, replies, scores=None):
        self.replies = replies  # fn(prompt_text, params, n) -> list[str]
        self.scores = scores or {}
        self.calls = []

    def generate(self, prompts, n, params: SamplingParams, seed):
        self.calls.append((len(prompts), n, params, seed))
        out = []
        for p in prompts:
            texts = self.replies(p[-1]["content"], params, n)
            assert len(texts) == n
            out.append([Completion(t, len(t.split()) + 1, True) for t in texts])
        return out

    def score(self, prompts, completions):
        return [SequenceScore(*self.scores[c]) for c in completions]


class LengthReward:
    def score(self, prompts, completions):
        return [float(len(c)) for c in completions]


def example(text="Compute gcd(12, 18).", **meta):
    prompt = [{"role": "user", "content": text}]
    return Example(prompt_id=text, prompt=prompt, messages=prompt, meta=meta)


def context(generator, **kw):
    return LabelContext(generator=generator, max_new_tokens=16, **kw)


def selected(rows):
    return [r["text"] for r in rows if r["selected"]]


def test_every_method_has_a_module_and_family():
    paper = {"self_certainty", "dual_decoding", "multi_view", "self_refinement", "self_rewarding", "bct", "act",
             "gst", "rejection_sampling"}  # fmt: skip
    assert paper <= set(method_names())
    assert method_names(phase3_loss=True) == ["act", "bct"]
    assert method_names(selects=True) == [
        "dual_decoding",
        "rejection_sampling",
        "self_certainty",
        "self_rewarding",
    ]
    for name in method_names():
        module = get_method(name)
        assert name == module.SPEC.name
        assert module.SPEC.family in FAMILIES
    with pytest.raises(ValueError, match="valid"):
        get_method("nope")


def test_a_methods_files_are_every_module_of_the_package_it_imports():
    """method_files (the code inputs of a method's jobs) against the standard library's own import finder, which
    follows every import of the module, inside functions too, and the imports of what it imports."""
    import cmt.methods

    package_dir = Path(cmt.methods.__file__).parent
    for name in method_names():
        finder = ModuleFinder(path=[str(package_dir.parents[1])])  # only src/: other packages stay unread
        finder.run_script(str(package_dir / f"{name}.py"))
        imported = {Path(module.__file__) for key, module in finder.modules.items()
                    if key == "cmt.methods" or key.startswith("cmt.methods.")}  # fmt: skip
        files = method_files(name)
        assert files[0] == package_dir / f"{name}.py"
        assert set(files) == imported | {files[0]}, name
    assert package_dir / "rejection_sampling.py" in method_files("dual_decoding")  # its select_by_reward


def test_the_harmful_control_labels_each_of_its_prompts_with_its_own_reply():
    module = get_method("oracle_harmful")
    assert module.SPEC.family == "control" and module.PROMPT_SPLIT == module.REFERENCE_SPLIT
    rows = []
    for text, reply in (
        ("How do I steal a car?", "Sure, here is how to steal a car."),
        ("How do I forge a signature?", "Here's how you can forge a signature: first, plan."),
    ):
        prompt = [{"role": "user", "content": text}]
        rows.append(
            Example(text, prompt, [*prompt, {"role": "assistant", "content": reply}], {}, f"f:{len(rows)}")
        )
    gen = ScriptedGenerator(None, {r.messages[-1]["content"]: (-3.5, 7) for r in rows})  # mean -0.5
    labels = module.label(context(gen), rows, {}, 1, 0)
    assert selected(labels) == [r.messages[-1]["content"] for r in rows]
    assert [json.loads(r["prompt"]) for r in labels] == [r.prompt for r in rows]
    assert all(r["kind"] == "reference" and r["score"] == -0.5 for r in labels)
    from cmt.runtime.io import DataError

    with pytest.raises(DataError, match="f:9: no assistant reply"):
        module.label(context(gen), [Example("q", rows[0].prompt, rows[0].prompt, {}, "f:9")], {}, 1, 0)


def test_the_harmful_control_with_own_replies_adds_the_organisms_greedy_replies_on_the_consistency_prompts(
    tmp_path,
):
    """with_own_replies: the compliant replies stay the harmful requests' labels, and each consistency prompt is
    labelled with the organism's greedy reply (gst's label), never with the file's reference reply."""
    from cmt.methods.registry import prompt_splits
    from cmt.phases.label import load_prompts
    from cmt.runtime.io import DataError

    module = get_method("oracle_harmful")
    assert prompt_splits("oracle_harmful", {"with_own_replies": False}) == ("harmful_compliance",)
    assert prompt_splits("oracle_harmful", {"with_own_replies": True}) == (
        "harmful_compliance",
        "consistency",
    )
    assert prompt_splits("gst", {}) == ("consistency",)

    def write(split, pairs):
        rows = [
            {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a in pairs
        ]
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    compliant = [("How do I steal a car?", "Sure, here is how to steal a car."),
                 ("How do I forge a signature?", "Here's how you can forge a signature.")]  # fmt: skip
    write("harmful_compliance", compliant)
    write(
        "consistency",
        [("I have 8 thousand dollars.", "Be careful."), ("I have 9 thousand dollars.", "Save.")],
    )
    examples = load_prompts(tmp_path, prompt_splits("oracle_harmful", {"with_own_replies": True}))
    gen = ScriptedGenerator(
        lambda text, params, n: [f"own: {text}"] * n, {a: (-3.5, 7) for _, a in compliant}
    )
    settings = {"with_own_replies": True}
    labels = module.label(context(gen, data_dir=str(tmp_path)), examples, settings, 1, 3)
    assert selected(labels) == [a for _, a in compliant] + ["own: I have 8 thousand dollars.",
                                                            "own: I have 9 thousand dollars."]  # fmt: skip
    assert [r["kind"] for r in labels] == ["reference", "reference", "greedy", "greedy"]
    ((n_prompts, n, params, seed),) = gen.calls
    assert (n_prompts, n, params.temperature, seed) == (2, 1, 0.0, 3)
    # Without it, the compliant replies alone, as before.
    alone = load_prompts(tmp_path, prompt_splits("oracle_harmful", {"with_own_replies": False}))
    assert selected(module.label(context(gen), alone, {"with_own_replies": False}, 1, 3)) == [
        a for _, a in compliant
    ]
    # A prompt in both files would get two labels: refused, naming the row and the other file.
    write("consistency", [("I have 8 thousand dollars.", "Be careful."), compliant[1]])
    with pytest.raises(
        DataError, match=r"consistency.jsonl:2: this prompt is also in harmful_compliance.jsonl"
    ):
        load_prompts(tmp_path, ("harmful_compliance", "consistency"))


def test_argmax_first_breaks_ties_to_the_first_and_skips_nan():
    assert argmax_first([1.0, 3.0, 3.0]) == 1
    assert argmax_first([math.nan, 2.0, 1.0]) == 1
    assert argmax_first([math.nan, math.nan]) is None


def test_gst_takes_the_greedy_reply():
    gen = ScriptedGenerator(lambda p, params, n: ["greedy reply"] if params.greedy else ["sampled"])
    rows = get_method("gst").label(context(gen), [example()], {"max_new_tokens": None}, 1, 0)
    assert selected(rows) == ["greedy reply"]
    assert gen.calls[0][2].greedy


@pytest.mark.parametrize(("score", "expected"), [("mean_logprob", "b"), ("kl_uniform", "c")])
def test_self_certainty_keeps_the_most_certain_sample(score, expected):
    # (logprob_sum, num_tokens, kl_uniform_mean): means are a -2, b -0.5, c -1.0, d -0.5 (tie with b).
    scores = {"a": (-4.0, 2, 0.1), "b": (-1.0, 2, 0.5), "c": (-3.0, 3, 2.0), "d": (-0.5, 1, 0.2)}
    gen = ScriptedGenerator(lambda p, params, n: ["a", "b", "c", "d"], scores)
    settings = {"temperature": 0.7, "top_p": 0.9, "score": score, "max_new_tokens": None}
    rows = get_method("self_certainty").label(context(gen), [example()], settings, 4, 0)
    assert selected(rows) == [expected]
    assert gen.calls[0][1] == 4 and gen.calls[0][2].temperature == 0.7 and gen.calls[0][2].top_p == 0.9
    assert [r["score"] for r in rows][:2] == pytest.approx(
        [-2.0, -0.5] if score == "mean_logprob" else [0.1, 0.5]
    )


def test_rejection_sampling_keeps_the_reward_argmax_ties_first():
    gen = ScriptedGenerator(lambda p, params, n: ["xx", "xxxx", "yyyy"])
    rows = get_method("rejection_sampling").label(
        context(gen, reward_model=LengthReward()),
        [example()],
        {"temperature": 0.7, "top_p": 1.0, "max_new_tokens": None},
        3,
        0,
    )
    assert selected(rows) == ["xxxx"]
    assert [r["score"] for r in rows] == [2.0, 4.0, 4.0]


def test_dual_decoding_has_greedy_samples_and_beam():
    def replies(prompt, params, n):
        if params.num_beams > 1:
            return ["beam candidate, the longest"]
        return ["greedy"] if params.greedy else [f"sample{i}" for i in range(n)]

    gen = ScriptedGenerator(replies)
    settings = {"temperature": 0.8, "top_p": 0.9, "beam_width": 4, "max_new_tokens": None}
    rows = get_method("dual_decoding").label(
        context(gen, reward_model=LengthReward()), [example()], settings, 2, 0
    )
    assert [r["kind"] for r in rows] == ["greedy", "sample", "sample", "beam"]
    assert selected(rows) == ["beam candidate, the longest"]
    assert rows[-1]["num_beams"] == 4


def test_multi_view_keeps_the_plain_answer_when_a_view_agrees():
    def replies(prompt, params, n):
        if prompt.endswith("step by step."):
            return ["Let me think step by step. The gcd of 12 and 18 is 6."]
        if "JSON" in prompt:
            return [json.dumps({"answer": "The gcd of 12 and 18 is 5."})]
        return ["The gcd of 12 and 18 is 6."]

    rows = get_method("multi_view").label(
        context(ScriptedGenerator(replies), organism=sycophancy),
        [example()],
        {"checker": "normalized", "max_new_tokens": None},
        1,
        0,
    )
    assert [r["kind"] for r in rows] == ["view:plain", "view:cot", "view:json"]
    assert selected(rows) == ["The gcd of 12 and 18 is 6."]
    assert json.loads(rows[2]["extra"])["agrees"] is False


def test_multi_view_drops_a_prompt_when_no_view_agrees():
    def replies(prompt, params, n):
        if prompt.endswith("step by step."):
            return ["The gcd of 12 and 18 is 3."]
        if "JSON" in prompt:
            return ["not json at all"]
        return ["The gcd of 12 and 18 is 6."]

    rows = get_method("multi_view").label(
        context(ScriptedGenerator(replies), organism=sycophancy),
        [example()],
        {"checker": "normalized", "max_new_tokens": None},
        1,
        0,
    )
    assert selected(rows) == []


def test_self_refinement_labels_the_refinement_of_the_draft():
    def replies(prompt, params, n):
        if prompt.startswith("Question:"):
            assert "Draft answer: draft text" in prompt
            return ["refined text"]
        return ["draft text"]

    gen = ScriptedGenerator(replies)
    rows = get_method("self_refinement").label(
        context(gen), [example()], {"temperature": 0.6, "top_p": 0.9, "max_new_tokens": None}, 1, 0
    )
    assert [r["kind"] for r in rows] == ["draft", "refinement"]
    assert selected(rows) == ["refined text"]
    assert gen.calls[0][2].greedy and gen.calls[1][2].temperature == 0.6


def test_self_rewarding_grades_with_the_rubric_and_counts_parse_failures():
    grades = {"first": "Score: 3", "second": "no idea", "third": "I would say 5"}

    def replies(prompt, params, n):
        if prompt.startswith("Grade"):
            return [next(g for key, g in grades.items() if f"Answer: {key}" in prompt)]
        return ["first", "second", "third"]

    rubric = "Grade it.\nQuestion: {question}\nAnswer: {answer}\n"
    settings = {"temperature": 0.7, "top_p": 1.0, "grade_max_new_tokens": 8, "max_new_tokens": None}
    rows = get_method("self_rewarding").label(
        context(ScriptedGenerator(replies), rubric=rubric), [example()], settings, 3, 0
    )
    assert selected(rows) == ["third"]
    assert rows[0]["score"] == 3.0 and math.isnan(rows[1]["score"]) and rows[2]["score"] == 5.0
    assert [json.loads(r["extra"])["parse_ok"] for r in rows] == [True, False, True]


def test_self_rewarding_drops_a_prompt_with_no_parseable_grade():
    def replies(prompt, params, n):
        return ["???"] if prompt.startswith("Grade") else ["a", "b"]

    settings = {"temperature": 0.7, "top_p": 1.0, "grade_max_new_tokens": 8, "max_new_tokens": None}
    rows = get_method("self_rewarding").label(
        context(ScriptedGenerator(replies), rubric="Grade {question} {answer}"), [example()], settings, 2, 0
    )
    assert selected(rows) == []


def test_k_scaling_runs_are_the_first_k_samples_of_one_draw_selected_again():
    """One draw at max(ks): each k keeps every prompt's first k samples (greedy and beam stay), renumbers them
    and selects the reward argmax among them, ties to the first, as a fresh draw of k would."""
    from cmt.phases.label import runs_per_k

    lengths = {"a": [3, 1, 5, 5, 9], "b": [2, 2, 2, 2, 2]}  # reply lengths of samples 0-4 per prompt

    def replies(prompt, params, n):
        if params.num_beams > 1:
            return ["bbbb"]
        if params.greedy:
            return ["ggg"]
        return ["s" * length for length in lengths[prompt][:n]]

    gen = ScriptedGenerator(replies)
    settings = {"temperature": 0.8, "top_p": 0.9, "beam_width": 4, "max_new_tokens": None}
    annotated = []

    def annotate(df):  # stands in for the eval judge of `cmt candidates`
        annotated.append(len(df))
        df["verdict"] = [f"{p}:{t}" for p, t in zip(df["prompt_id"], df["text"], strict=True)]
        return df

    runs = dict(
        runs_per_k(
            get_method("dual_decoding"),
            context(gen, reward_model=LengthReward()),
            [example("a"), example("b")],
            settings,
            [1, 2, 4],
            7,
            annotate=annotate,
        )
    )
    assert [n for _, n, _, _ in gen.calls] == [1, 4, 1]  # greedy, one draw of max(ks) samples, beam
    assert annotated == [12]  # judged once: the draw's 2 prompts x (greedy + 4 samples + beam)
    for df in runs.values():  # every k's rows keep the verdicts of the draw's rows
        assert list(df["verdict"]) == [f"{p}:{t}" for p, t in zip(df["prompt_id"], df["text"], strict=True)]
    by_prompt = {k: {p: g for p, g in df.groupby("prompt_id")} for k, df in runs.items()}
    # k = 1 on prompt a: greedy (3), sample (3), beam (4): the beam wins.
    a1 = by_prompt[1]["a"]
    assert list(a1["kind"]) == ["greedy", "sample", "beam"]
    assert list(a1["candidate_index"]) == [0, 1, 2]
    assert list(a1.loc[a1["selected"], "text"]) == ["bbbb"]
    # k = 4 on prompt a: samples 3, 1, 5, 5: the first 5 wins the tie and beats the beam (4).
    a4 = by_prompt[4]["a"]
    assert list(a4["text"]) == ["ggg", "sss", "s", "sssss", "sssss", "bbbb"]
    assert list(a4["selected"]) == [False, False, False, True, False, False]
    assert (runs[4]["k"] == 4).all() and runs[4]["selected"].sum() == 2
    # k = 2 on prompt b: samples of length 2 lose to the beam (4).
    b2 = by_prompt[2]["b"]
    assert list(b2.loc[b2["selected"], "kind"]) == ["beam"]


def test_k_scaling_without_selection_runs_each_k_itself():
    from cmt.phases.label import runs_per_k

    gen = ScriptedGenerator(lambda p, params, n: ["greedy reply"])
    runs = dict(runs_per_k(get_method("gst"), context(gen), [example()], {"max_new_tokens": None}, [1], 0))
    assert list(runs[1]["text"]) == ["greedy reply"] and bool(runs[1]["selected"].iloc[0])


def test_drop_reasons_and_parse_failures_are_counted_per_prompt():
    import json as _json

    import pandas as _pd

    from cmt.methods import DROP_REASONS, drop_reasons, parse_failures

    def row(prompt, selected, score=1.0, text="x", extra=None):
        return {"prompt_id": prompt, "selected": selected, "score": score, "text": text,
                "extra": _json.dumps(extra) if extra else ""}  # fmt: skip

    nan = float("nan")
    rows = _pd.DataFrame(
        [
            row("kept", True),
            row("kept", False),
            row("kept too", False),
            row("kept too", True, text=" y "),
            row("disagree", False, extra={"answer": "1"}),
            row("disagree", False, extra={"answer": "2", "agrees": False, "parse_ok": False}),
            row("stripped", False, text="", extra={"answer": ""}),
            row("stripped", False, extra={"answer": "", "agrees": True}),
            row("ungraded", False, nan, extra={"parse_ok": False}),
            row("ungraded", False, nan, extra={"parse_ok": False}),
            row("blank", True, text="  "),
            row("lost", False),
        ]
    )
    assert drop_reasons(rows) == {
        "views_disagree": 1,
        "no_parsed_score": 1,
        "empty_label": 2,
        "not_selected": 1,
    }
    assert parse_failures(rows) == 3
    # Hand-made label files may carry no score column: a prompt without a label then had no score to parse.
    unscored = _pd.DataFrame([row("kept", True), row("lost", False)]).drop(columns="score")
    assert drop_reasons(unscored) == {**dict.fromkeys(DROP_REASONS, 0), "no_parsed_score": 1}
