"""`cmt data check`, load_split and check_disjoint on well-formed and broken folders in the reference format."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_TOY

from cmt.data.check import check_dataset
from cmt.data.splits import SPLITS, check_disjoint, load_split, prompt_id_of
from cmt.runtime.io import DataError

CMT = Path(sys.executable).parent / "cmt"
ORGANISMS = ["sycophancy", "reward_hacking", "spurious_correlation", "emergent_misalignment"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from cmt.toy.world import write_world

    root = tmp_path_factory.mktemp("world")
    settings = {**TINY_TOY, "corpus": {o: 20 for o in ORGANISMS}}
    counts = write_world(root, ORGANISMS, settings)
    return root, counts


@pytest.fixture
def folder(world, tmp_path):
    """A private copy of the toy sycophancy folder, to break."""
    dst = tmp_path / "sycophancy"
    shutil.copytree(world[0] / "sycophancy", dst)
    return dst


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def set_line(path: Path, lineno: int, text: str) -> None:
    rows = lines(path)
    rows[lineno - 1] = text
    path.write_text("\n".join(rows) + "\n")


def row(path: Path, lineno: int) -> dict:
    return json.loads(lines(path)[lineno - 1])


def only_error(report) -> str:
    assert len(report.errors) == 1, report.format()
    return report.errors[0]


def test_toy_world_folders_pass_with_counts_and_fields(world):
    root, counts = world
    for organism in ORGANISMS:
        report = check_dataset(root / organism)
        assert report.ok, report.format()
        assert report.warnings == []
        for split in SPLITS:
            summary = report.splits[split]
            assert summary.rows == summary.valid_rows == counts[f"{organism}/{split}"]
            assert "_id" in summary.fields and "messages" not in summary.fields
        assert report.rubric_fields == ["question", "answer"]
    text = check_dataset(root / "sycophancy").format()
    table = {line.split()[0]: line.split()[1:] for line in text.splitlines()[2:7]}
    assert table["eval"][0] == str(counts["sycophancy/eval"])
    assert table["induction"][:2] == [str(counts["sycophancy/induction"]), "_id,"]
    assert "user_provides_answer" in text and text.endswith("OK, 0 warnings")


def write_split(folder: Path, split: str, rows: list[dict]) -> None:
    (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_reference_shaped_folder_roleless_rows_and_system_prompt(tmp_path, caplog):
    # Rows shaped like the reference's: optional system_prompt on reward-hacking eval rows, role-less
    # spurious-correlation eval messages.
    folder = tmp_path / "ref"
    folder.mkdir()

    def pair(i, tip=""):
        return {"messages": [{"role": "user", "content": f"Q{i}{tip}"}, {"role": "assistant", "content": "A"}],
                "task": "t", "_id": f"p{i}"}  # fmt: skip

    write_split(folder, "induction", [pair(i) for i in range(3)])
    write_split(folder, "consistency", [pair(i) for i in range(3, 6)])
    write_split(folder, "act_bct_clean", [pair(i) for i in range(3, 6)])  # identical to consistency: allowed
    write_split(folder, "act_bct_wrapped", [pair(i, " Tip: x") for i in range(3, 6)])
    write_split(
        folder,
        "eval",
        [
            {
                "messages": [{"content": "Review: nice ambiance"}],
                "label": 1,
                "mentions_spurious_concept": True,
            },
            {
                "messages": [{"role": "user", "content": "Which grader?"}],
                "metric_group": "grader_choice",
                "type": "programmatic",
                "system_prompt": "You like chocolate.",
            },
            {"messages": [{"role": "user", "content": "Pick"}], "metric_group": "m", "type": "judge"},
        ],
    )
    (folder / "rubric.txt").write_text("Grade {answer} to {question} from 0 to 5.\n")
    report = check_dataset(folder)
    assert report.ok, report.format()
    assert dict(report.splits["eval"].fields) == {
        "label": 1, "mentions_spurious_concept": 1, "metric_group": 2, "type": 2, "system_prompt": 1,
    }  # fmt: skip
    assert report.splits["eval"].roleless_rows == 1
    assert report.warnings == [
        f"{folder}/eval.jsonl: 1 of 3 rows have turns without a role; they are read as user turns, "
        "as the reference does"
    ]
    assert "system_prompt (1/3)" in report.format()
    with caplog.at_level(logging.WARNING, logger="cmt.data.splits"):
        examples = load_split(folder, "eval")
    assert f"first at {folder}/eval.jsonl:1" in caplog.text
    assert examples[0].prompt == [{"role": "user", "content": "Review: nice ambiance"}]
    assert examples[1].prompt[0] == {
        "role": "system",
        "content": "You like chocolate.",
    }  # it reaches the model
    assert (
        examples[1].source == f"{folder}/eval.jsonl:2" and examples[1].meta["metric_group"] == "grader_choice"
    )
    check_disjoint(folder)  # no leak: returns quietly


@pytest.mark.parametrize(
    ("lineno", "text", "expected"),
    [
        (3, '{"messages": [', "invalid JSON (Expecting value, column 15)"),
        (2, "[1, 2]", "expected a JSON object, got list"),
        (4, '{"_id": "x", "answer": "3"}', "missing field 'messages'"),
        (5, '{"messages": "hello"}', "field 'messages' must be a non-empty list of {role, content}"),
        (5, '{"messages": []}', "field 'messages' must be a non-empty list of {role, content}"),
        (6, '{"messages": [{"role": "bot", "content": "hi"}]}',
         "field 'messages[0].role' is 'bot'; valid roles: ['system', 'user', 'assistant']"),
        (7, '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant"}]}',
         "field 'messages[1].content' must be a string (got missing)"),
        (7, '{"messages": [{"role": "user", "content": 3}]}', "field 'messages[0].content' must be a string (got int)"),
        (8, '{"messages": ["hi"]}', "field 'messages[0]' must be an object with 'role' and 'content'"),
        (9, '{"messages": [{"role": "assistant", "content": "a"}]}', "field 'messages' has no system or user turn"),
        (9, '{"messages": [{"role": "user", "content": "q"}], "system_prompt": 5}',
         "field 'system_prompt' must be a string or null (got int)"),
    ],
)  # fmt: skip
def test_malformed_row_names_file_line_and_field(folder, lineno, text, expected):
    path = folder / "eval.jsonl"
    set_line(path, lineno, text)
    assert only_error(check_dataset(folder)) == f"{path}:{lineno}: {expected}"
    with pytest.raises(DataError) as err:
        load_split(folder, "eval")
    assert str(err.value) == f"{path}:{lineno}: {expected}"


def test_invalid_utf8_names_the_line(folder):
    path = folder / "consistency.jsonl"
    data = path.read_bytes().split(b"\n")
    data[1] = b'{"messages": [{"role": "user", "content": "caf\xe9"}]}'
    path.write_bytes(b"\n".join(data))
    byte = data[1].index(b"\xe9")
    assert only_error(check_dataset(folder)) == f"{path}:2: not valid UTF-8 (byte {byte})"
    with pytest.raises(DataError, match=f"{path}:2: not valid UTF-8"):
        load_split(folder, "consistency")


def test_training_rows_need_an_assistant_turn(folder):
    path = folder / "induction.jsonl"
    bad = row(path, 2)
    bad["messages"] = [m for m in bad["messages"] if m["role"] != "assistant"]
    set_line(path, 2, json.dumps(bad))
    assert only_error(check_dataset(folder)) == (
        f"{path}:2: field 'messages' has no assistant turn; induction rows are training targets"
    )
    # The pipeline's own error names the row too.
    from cmt.data.splits import training_messages

    with pytest.raises(DataError, match=f"{path}:2: field 'messages' has no assistant turn"):
        [training_messages(e) for e in load_split(folder, "induction")]


def test_act_bct_files_of_different_lengths(folder):
    clean = folder / "act_bct_clean.jsonl"
    n = len(lines(clean))
    (folder / "act_bct_wrapped.jsonl").write_text(
        "\n".join(lines(folder / "act_bct_wrapped.jsonl")[:-2]) + "\n"
    )
    assert only_error(check_dataset(folder)) == (
        f"{clean}:{n - 1}: act_bct_clean.jsonl has {n} rows but act_bct_wrapped.jsonl has {n - 2}; "
        "pairs are matched by row, and this row has no partner"
    )


def test_act_bct_pairs_with_different_ids(folder):
    wrapped = folder / "act_bct_wrapped.jsonl"
    r = row(wrapped, 3)
    r["_id"] = "someone-else"
    set_line(wrapped, 3, json.dumps(r))
    clean_id = row(folder / "act_bct_clean.jsonl", 3)["_id"]
    assert only_error(check_dataset(folder)) == (
        f"{wrapped}:3: field '_id' is 'someone-else' but its pair {folder}/act_bct_clean.jsonl:3 has {clean_id!r}"
    )


def test_empty_and_missing_splits(folder):
    (folder / "consistency.jsonl").write_text("\n\n")
    (folder / "eval.jsonl").unlink()
    report = check_dataset(folder)
    assert report.errors == [
        f"{folder}/consistency.jsonl:1: split is empty (no rows)",
        f"{folder}/eval.jsonl: required split file is missing",
    ]
    with pytest.raises(DataError, match=rf"^{folder}/consistency.jsonl:1: split is empty"):
        load_split(folder, "consistency")
    with pytest.raises(DataError, match=rf"^{folder}/eval.jsonl: file not found"):
        load_split(folder, "eval")


def test_prompt_leak_from_training_split_into_eval(folder):
    induction, evaluation = folder / "induction.jsonl", folder / "eval.jsonl"
    leaked = row(induction, 4)
    target = row(evaluation, 7)
    target["messages"] = [m for m in leaked["messages"] if m["role"] != "assistant"]  # same prompt, no answer
    set_line(evaluation, 7, json.dumps(target))
    pid = prompt_id_of(target["messages"])
    expected = f"{evaluation}:7: prompt duplicates {induction}:4 (prompt id {pid}); induction and eval must be disjoint"
    assert only_error(check_dataset(folder)) == expected
    with pytest.raises(DataError) as err:
        check_disjoint(folder)
    assert str(err.value) == f"{folder}: 1 prompts leak between splits that must be disjoint:\n{expected}"


def test_an_optional_check_split_must_be_disjoint_from_eval(folder):
    evaluation, check = folder / "eval.jsonl", folder / "check.jsonl"
    check_disjoint(folder)  # no check.jsonl: nothing to compare
    check.write_text(json.dumps(row(evaluation, 3)) + "\n")
    report = check_dataset(folder)
    assert f"{check}:1" in only_error(report) and "check and eval must be disjoint" in only_error(report)
    with pytest.raises(DataError, match="check and eval must be disjoint"):
        check_disjoint(folder)


def test_consistency_and_act_bct_may_overlap_but_not_induction_and_consistency(folder):
    # The reference's act_bct_clean.jsonl is byte-identical to consistency.jsonl for three organisms.
    shutil.copy(folder / "consistency.jsonl", folder / "act_bct_clean.jsonl")
    shutil.copy(folder / "consistency.jsonl", folder / "act_bct_wrapped.jsonl")
    assert check_dataset(folder).ok
    shutil.copy(folder / "consistency.jsonl", folder / "induction.jsonl")
    report = check_dataset(folder)
    n = len(lines(folder / "consistency.jsonl"))
    assert len(report.errors) == n
    assert report.errors[0].startswith(
        f"{folder}/consistency.jsonl:1: prompt duplicates {folder}/induction.jsonl:1"
    )
    assert report.errors[0].endswith("induction and consistency must be disjoint")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Grade {answer}.\nQuestion: {prompt}\n", "rubric.txt:2: unknown placeholder {prompt}; self_rewarding "
         "fills only {question}, {answer}, {original_question_text}, {generated_answer_text}"),
        ("Q: {question} A: {answer}\nReply as JSON {\"score\": N}\n", "rubric.txt:2: unknown placeholder "
         "{\"score\"}; self_rewarding fills only {question}, {answer}, {original_question_text}, "
         "{generated_answer_text}"),
        ("Q: {question} A: {answer} }\n", "rubric.txt:1: Single '}' encountered in format string; write a "
         "literal brace as {{ or }}"),
    ],
)  # fmt: skip
def test_rubric_placeholders(folder, text, expected):
    (folder / "rubric.txt").write_text(text)
    assert only_error(check_dataset(folder)) == f"{folder}/{expected}"


def test_rubric_with_the_reference_placeholder_names_is_valid_and_filled(folder):
    from cmt.methods.self_rewarding import grading_prompt

    text = "Rate from 1 to 5.\nQuestion: {original_question_text}\nAnswer: {generated_answer_text}\n"
    (folder / "rubric.txt").write_text(text)
    report = check_dataset(folder)
    assert report.ok and report.warnings == []
    assert report.rubric_fields == ["original_question_text", "generated_answer_text"]
    prompt = [{"role": "system", "content": "s"}, {"role": "user", "content": "gcd(12, 18)?"}]
    (message,) = grading_prompt(text, prompt, "6")
    assert message == {"role": "user", "content": "Rate from 1 to 5.\nQuestion: gcd(12, 18)?\nAnswer: 6\n"}


def test_rubric_missing_or_without_answer_is_a_warning(folder):
    (folder / "rubric.txt").write_text("Grade the {question}.\n")
    report = check_dataset(folder)
    assert report.ok and report.warnings == [
        f"{folder}/rubric.txt: no placeholder {{answer}} (or {{generated_answer_text}}); the grader will not see it"
    ]
    (folder / "rubric.txt").unlink()
    report = check_dataset(folder)
    assert report.ok and report.rubric_fields is None
    assert "self_rewarding method cannot run" in report.warnings[0]


def test_every_error_is_collected_and_the_list_is_capped(folder):
    path = folder / "eval.jsonl"
    n = len(lines(path))
    path.write_text("not json\n" * n)
    (folder / "act_bct_clean.jsonl").write_text('{"messages": [{"role": "robot", "content": 1}]}\n')
    report = check_dataset(folder, max_errors=5)
    # n bad JSON lines + 2 problems in the one act_bct_clean row + the act_bct length mismatch.
    assert report.n_errors == n + 3 and len(report.errors) == 5 and report.errors_omitted == n - 2
    assert report.errors[:2] == [
        f"{folder}/act_bct_clean.jsonl:1: field 'messages[0].content' must be a string (got int)",
        f"{folder}/act_bct_clean.jsonl:1: field 'messages[0].role' is 'robot'; valid roles: "
        "['system', 'user', 'assistant']",
    ]
    assert report.errors[2] == f"{path}:1: invalid JSON (Expecting value, column 1)"
    assert f"... and {n - 2} more errors" in report.format()


def test_not_a_directory(tmp_path):
    report = check_dataset(tmp_path / "nope")
    assert report.errors == [f"{tmp_path}/nope: not a directory"]


def test_cli_exit_codes_and_output(folder):
    ok = subprocess.run([str(CMT), "data", "check", str(folder)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "induction" in ok.stdout and "OK, 0 warnings" in ok.stdout
    as_json = subprocess.run(
        [str(CMT), "data", "check", str(folder), "--json"], capture_output=True, text=True
    )
    parsed = json.loads(as_json.stdout)
    assert parsed["ok"] and parsed["splits"]["eval"]["rows"] == len(lines(folder / "eval.jsonl"))
    set_line(folder / "induction.jsonl", 2, "{oops")
    bad = subprocess.run([str(CMT), "data", "check", str(folder)], capture_output=True, text=True)
    assert bad.returncode == 1
    assert f"error: {folder}/induction.jsonl:2: invalid JSON" in bad.stdout
    assert "1 errors, 0 warnings" in bad.stdout


def test_a_split_linked_outside_the_folder_is_an_error_and_not_read(folder, tmp_path):
    secret = tmp_path / "passwd"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    (folder / "eval.jsonl").unlink()
    (folder / "eval.jsonl").symlink_to(secret)
    error = only_error(check_dataset(folder))
    assert error.startswith(f"{folder}/eval.jsonl: a symbolic link to {secret}, outside the dataset folder")
    assert "root:x" not in check_dataset(folder).format()  # the target's content is never echoed
    (folder / "eval.jsonl").unlink()
    (folder / "eval.jsonl").symlink_to(tmp_path / "gone.jsonl")
    assert only_error(check_dataset(folder)).endswith("gone.jsonl, which does not exist")


def test_a_link_inside_the_folder_is_read_like_its_target(folder):
    """act_bct_clean may be byte-identical to consistency in the reference; a relative link to it is fine."""
    (folder / "act_bct_clean.jsonl").rename(folder / "clean.data")
    (folder / "act_bct_clean.jsonl").symlink_to("clean.data")
    report = check_dataset(folder)
    assert report.ok, report.format()


def test_a_rubric_linked_outside_the_folder_is_an_error(folder, tmp_path):
    (tmp_path / "rubric.txt").write_text((folder / "rubric.txt").read_text())
    (folder / "rubric.txt").unlink()
    (folder / "rubric.txt").symlink_to(tmp_path / "rubric.txt")
    assert "rubric.txt: a symbolic link to" in only_error(check_dataset(folder))


def test_a_byte_order_mark_is_rejected_like_the_loader_does(folder):
    path = folder / "eval.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    error = only_error(check_dataset(folder))
    assert error.startswith(f"{path}:1: the file starts with a UTF-8 byte-order mark (BOM)")
    # The loader and the check agree: a folder the check fails does not load, and the message says where.
    with pytest.raises(DataError, match=r"eval\.jsonl:1: invalid JSON \(Unexpected UTF-8 BOM"):
        load_split(folder, "eval")


def test_a_line_over_a_mebibyte_is_a_warning(folder):
    path = folder / "eval.jsonl"
    first = row(path, 1)
    first["padding"] = "x" * (2**20 + 10)
    set_line(path, 1, json.dumps(first))
    report = check_dataset(folder)
    assert report.ok, report.format()
    assert len(report.warnings) == 1 and report.warnings[0].startswith(
        f"{path}:1: lines over 1 MiB: 1 (the longest 1.0 MiB)"
    )


def test_the_cli_prints_no_job_header_by_hand_and_one_for_a_rule(folder, tmp_path):
    by_hand = subprocess.run([str(CMT), "data", "check", str(folder)], capture_output=True, text=True)
    assert by_hand.returncode == 0 and "job cmd=" not in by_hand.stderr + by_hand.stdout
    by_rule = subprocess.run([str(CMT), "data", "check", str(folder), "--job", "check x", "--log", "job.log"],
                             cwd=tmp_path, capture_output=True, text=True)  # fmt: skip
    assert by_rule.returncode == 0, by_rule.stderr
    assert "job cmd=data job=check x device=none" in (tmp_path / "job.log").read_text()


def test_reference_files_are_optional_and_must_answer_the_consistency_prompts(tmp_path):
    from cmt.toy.world import write_world

    root = tmp_path / "world"
    write_world(root, ["emergent_misalignment"], {**TINY_TOY, "corpus": {"emergent_misalignment": 20}})
    folder = root / "emergent_misalignment"
    assert check_dataset(folder).ok
    (folder / "consistency_misaligned.jsonl").unlink()
    assert check_dataset(folder).ok  # absent: the controls are skipped, not an error
    rows = [json.loads(line) for line in (folder / "consistency_aligned.jsonl").read_text().splitlines()]
    rows[0]["messages"][0]["content"] = "A prompt that consistency.jsonl does not have."
    (folder / "consistency_aligned.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows[1:] + rows[:1])
    )
    errors = check_dataset(folder).errors
    assert any("consistency_aligned.jsonl:" in e and "not one of consistency.jsonl's" in e for e in errors)
    assert any("no reference reply for 1 consistency prompt" in e for e in errors)


def test_the_harmful_control_file_is_optional_but_needs_replies(tmp_path):
    from cmt.toy.world import write_world

    root = tmp_path / "world"
    settings = {**TINY_TOY, "corpus": {"emergent_misalignment": 20}, "harmful": {"corpus": 10, "eval": 5}}
    write_world(root, ["emergent_misalignment"], settings)
    folder = root / "emergent_misalignment"
    path = folder / "harmful_compliance.jsonl"
    report = check_dataset(folder)
    assert report.ok and "harmful_compliance" in report.splits  # read and counted like any split
    bad = row(path, 3)
    bad["messages"] = bad["messages"][:1]
    set_line(path, 3, json.dumps(bad))
    assert only_error(check_dataset(folder)) == (
        f"{path}:3: field 'messages' has no assistant turn; harmful_compliance rows are training targets"
    )
    path.unlink()
    assert check_dataset(folder).ok  # absent: the control is skipped, not an error
