"""`cmt data check DIR`: validate an organism folder in the reference format before any job uses it.

The folder holds induction.jsonl, consistency.jsonl, act_bct_clean.jsonl, act_bct_wrapped.jsonl, eval.jsonl
(rows with a `messages` list of {role, content} plus metadata) and rubric.txt (the self-rewarding rubric).
The check reads every line and collects every problem instead of stopping at the first; each error names
`file:line` and the field. Row parsing is cmt.data.splits's, so a folder that passes loads in the pipeline:
what the loader rejects (a UTF-8 byte-order mark, for one) is an error here too, with a message that says why.
"""

from __future__ import annotations

import os
import string
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from cmt.data.splits import (
    CHECK_SPLIT,
    DISJOINT_PAIRS,
    HARMFUL_COMPLIANCE_SPLIT,
    REFERENCE_SPLITS,
    SPLITS,
    find_leaks,
    iter_jsonl,
    parse_row,
    prompt_id_of,
)

# Splits that are training targets: each row needs an assistant turn (Phase 1 SFT, ACT/BCT pairs).
NEEDS_ASSISTANT = (
    "induction",
    "act_bct_clean",
    "act_bct_wrapped",
    *REFERENCE_SPLITS,
    HARMFUL_COMPLIANCE_SPLIT,
)
# Splits a folder may lack: the controls' replies (those controls are skipped) and induce_until's check split.
OPTIONAL_SPLITS = (*REFERENCE_SPLITS, HARMFUL_COMPLIANCE_SPLIT, CHECK_SPLIT)
RUBRIC = "rubric.txt"
# What cmt.methods.self_rewarding fills into the rubric with str.format: the question and the graded answer,
# each under this project's short name or the name the reference repository's rubric files use.
RUBRIC_ALIASES = {"question": "original_question_text", "answer": "generated_answer_text"}
RUBRIC_FIELDS = (*RUBRIC_ALIASES, *RUBRIC_ALIASES.values())
# A row longer than this is almost surely not a chat example (a pasted file, a missing newline): warn.
LONG_LINE_BYTES = 2**20
BOM = b"\xef\xbb\xbf"


def fill_rubric(rubric: str, question: str, answer: str) -> str:
    """The grading message: `rubric` with the question and answer in whichever placeholders it uses."""
    values = {"question": question, "answer": answer}
    return rubric.format(**values, **{RUBRIC_ALIASES[k]: v for k, v in values.items()})


@dataclass
class SplitSummary:
    file: str
    rows: int = 0  # rows that are JSON objects, valid or not
    valid_rows: int = 0
    fields: Counter = field(default_factory=Counter)  # metadata field -> number of rows carrying it
    roleless_rows: int = 0


@dataclass
class DatasetReport:
    folder: str
    splits: dict[str, SplitSummary] = field(default_factory=dict)
    rubric_fields: list[str] | None = None  # placeholders found in rubric.txt; None when it is missing
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    errors_omitted: int = 0  # errors past max_errors, counted but not listed
    max_errors: int = 50

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def n_errors(self) -> int:
        return len(self.errors) + self.errors_omitted

    def error(self, message: str) -> None:
        if len(self.errors) < self.max_errors:
            self.errors.append(message)
        else:
            self.errors_omitted += 1

    def to_dict(self) -> dict:
        return {
            "folder": self.folder,
            "ok": self.ok,
            "splits": {
                name: {
                    "file": s.file,
                    "rows": s.rows,
                    "valid_rows": s.valid_rows,
                    "fields": dict(sorted(s.fields.items())),
                    "roleless_rows": s.roleless_rows,
                }
                for name, s in self.splits.items()
            },
            "rubric_fields": self.rubric_fields,
            "errors": self.errors,
            "errors_omitted": self.errors_omitted,
            "warnings": self.warnings,
        }

    def format(self) -> str:
        """The human-readable report: a table of splits, then warnings, then errors."""
        lines = [f"dataset {self.folder}", f"{'split':<16} {'rows':>7}  metadata fields (rows carrying each)"]
        for name, s in self.splits.items():
            fields = ", ".join(
                name if n == s.rows else f"{name} ({n}/{s.rows})" for name, n in sorted(s.fields.items())
            )
            lines.append(f"{name:<16} {s.rows:>7}  {fields or '-'}")
        if self.rubric_fields is not None:
            placeholders = ", ".join("{" + f + "}" for f in self.rubric_fields) or "none"
            lines.append(f"{RUBRIC}: placeholders {placeholders}")
        lines += [f"warning: {w}" for w in self.warnings]
        lines += [f"error: {e}" for e in self.errors]
        if self.errors_omitted:
            lines.append(f"... and {self.errors_omitted} more errors")
        verdict = "OK" if self.ok else f"{self.n_errors} errors"
        lines.append(f"{verdict}, {len(self.warnings)} warnings")
        return "\n".join(lines)


def check_dataset(folder: str | Path, max_errors: int = 50) -> DatasetReport:
    """Validate every split file and the rubric of `folder`; never raises on bad data.

    Errors: a missing split file; bad UTF-8 or JSON; a row that is not an object; a missing or invalid
    `messages` (not a non-empty list, a turn without string content, an unknown role, no system or user turn);
    a non-string `system_prompt`; a training row without an assistant turn; an empty split; act_bct files of
    different lengths or pairs with different `_id`s; a prompt shared by splits that must be disjoint
    (cmt.data.splits.DISJOINT_PAIRS); an unknown placeholder or a stray brace in rubric.txt.
    A split file or rubric.txt that is a symbolic link to a file outside the folder is an error and is not read
    (inside the folder, a link is read like the file it names); a split file that starts with a UTF-8
    byte-order mark is an error, because cmt.data.splits rejects it.
    Warnings: turns without a role (read as user turns, as the reference does); a missing rubric.txt or one
    without a placeholder that self_rewarding fills; a row with both a system turn and a `system_prompt`; a line
    longer than LONG_LINE_BYTES.
    At most `max_errors` errors are listed; the rest are counted in `errors_omitted`.
    """
    folder = Path(folder)
    report = DatasetReport(str(folder), max_errors=max_errors)
    if not folder.is_dir():
        report.error(f"{folder}: not a directory")
        return report
    prompt_ids: dict[str, list[tuple[str, str]]] = {}
    ids_of: dict[str, list[tuple[object, str]]] = {}  # split -> (_id, file:line) per object row, in order
    incomplete: set[str] = set()  # splits with a row that did not parse
    for split in (*SPLITS, *OPTIONAL_SPLITS):
        path = folder / f"{split}.jsonl"
        if _outside_link(report, folder, path):
            continue
        if split in OPTIONAL_SPLITS and not path.exists():
            continue  # optional: the controls are skipped, or induce_until cannot use split check
        if not path.is_file():
            report.error(f"{path}: required split file is missing")
            continue
        summary = report.splits[split] = SplitSummary(str(path))
        prompt_ids[split], ids_of[split] = [], []
        lines_seen = 0
        with open(path, "rb") as fh:
            has_bom = fh.read(len(BOM)) == BOM
        for lineno, row, problem in iter_jsonl(path):
            where = f"{path}:{lineno}"
            lines_seen += 1
            if problem and lineno == 1 and has_bom:
                problem = (
                    "the file starts with a UTF-8 byte-order mark (BOM), which the loader (cmt.data.splits) "
                    "does not accept; save it as UTF-8 without a BOM"
                )
            if problem:
                report.error(f"{where}: {problem}")
                continue
            summary.rows += 1
            summary.fields.update(k for k in row if k != "messages")
            ids_of[split].append((row.get("_id"), where))
            parsed = parse_row(row)
            for message in parsed.errors:
                report.error(f"{where}: {message}")
            if parsed.roleless_turns:
                summary.roleless_rows += 1
            if parsed.errors:
                continue
            if split in NEEDS_ASSISTANT and not any(m["role"] == "assistant" for m in parsed.messages):
                report.error(
                    f"{where}: field 'messages' has no assistant turn; {split} rows are training targets"
                )
                continue
            system_turns = [m["content"] for m in row["messages"] if m.get("role") == "system"]
            if row.get("system_prompt") and system_turns and row["system_prompt"] not in system_turns:
                report.warnings.append(
                    f"{where}: field 'system_prompt' differs from the row's system turn; the turn is used"
                )
            summary.valid_rows += 1
            prompt_ids[split].append((prompt_id_of(parsed.prompt), where))
        if lines_seen == 0:
            report.error(f"{path}:1: split is empty (no rows)")
        if lines_seen == 0 or lines_seen != summary.valid_rows:
            incomplete.add(split)
        _warn_long_lines(report, path)
        if summary.roleless_rows:
            report.warnings.append(
                f"{path}: {summary.roleless_rows} of {summary.rows} rows have turns without a role; "
                "they are read as user turns, as the reference does"
            )
    _check_pairs(report, ids_of)
    if "consistency" not in incomplete:  # its own errors are reported; a comparison would only repeat them
        _check_references(report, folder, prompt_ids)
    for leak in find_leaks(prompt_ids, DISJOINT_PAIRS):
        report.error(leak)
    if not _outside_link(report, folder, folder / RUBRIC):
        _check_rubric(report, folder / RUBRIC)
    return report


def _outside_link(report: DatasetReport, folder: Path, path: Path) -> bool:
    """True (and an error) when `path` is a symbolic link to something outside `folder`, or to nothing: such a
    file is not read, so a link to /etc/passwd is reported instead of checked as a split."""
    if not path.is_symlink():
        return False
    target = os.readlink(path)
    resolved = path.resolve()
    if not resolved.exists():
        report.error(f"{path}: a symbolic link to {target}, which does not exist")
        return True
    if resolved.is_relative_to(folder.resolve()):
        return False
    report.error(
        f"{path}: a symbolic link to {target}, outside the dataset folder; not read (copy the file into "
        f"{folder} instead)"
    )
    return True


def _warn_long_lines(report: DatasetReport, path: Path, limit: int = LONG_LINE_BYTES) -> None:
    """One warning per file whose lines exceed `limit` bytes, naming the first and the longest."""
    long_lines = []
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if len(raw.rstrip(b"\r\n")) > limit:
                long_lines.append((lineno, len(raw.rstrip(b"\r\n"))))
    if long_lines:
        first = long_lines[0][0]
        longest = max(n for _, n in long_lines)
        report.warnings.append(
            f"{path}:{first}: lines over {limit / 2**20:g} MiB: {len(long_lines)} (the longest "
            f"{longest / 2**20:.1f} MiB); a row this long is probably not one chat example"
        )


def _check_references(
    report: DatasetReport, folder: Path, prompt_ids: dict[str, list[tuple[str, str]]]
) -> None:
    """A control's reference file answers exactly the consistency prompts (same prompts, any order)."""
    if "consistency" not in prompt_ids:
        return
    expected = {pid for pid, _ in prompt_ids["consistency"]}
    for split in REFERENCE_SPLITS:
        if split not in prompt_ids:
            continue
        got = {pid for pid, _ in prompt_ids[split]}
        extra = [where for pid, where in prompt_ids[split] if pid not in expected]
        if extra:
            report.error(
                f"{extra[0]}: prompt is not one of consistency.jsonl's ({len(extra)} such rows in {split})"
            )
        if expected - got:
            report.error(
                f"{folder / split}.jsonl: no reference reply for {len(expected - got)} consistency prompt(s)"
            )


def _check_pairs(report: DatasetReport, ids_of: dict[str, list[tuple[object, str]]]) -> None:
    """act_bct_clean row i is paired with act_bct_wrapped row i (cmt.phases.consistency.load_pairs)."""
    if "act_bct_clean" not in ids_of or "act_bct_wrapped" not in ids_of:
        return
    clean, wrapped = ids_of["act_bct_clean"], ids_of["act_bct_wrapped"]
    if len(clean) != len(wrapped):
        longer, shorter = (clean, wrapped) if len(clean) > len(wrapped) else (wrapped, clean)
        report.error(
            f"{longer[len(shorter)][1]}: act_bct_clean.jsonl has {len(clean)} rows but act_bct_wrapped.jsonl "
            f"has {len(wrapped)}; pairs are matched by row, and this row has no partner"
        )
    for (clean_id, clean_at), (wrapped_id, wrapped_at) in zip(clean, wrapped, strict=False):
        if clean_id is not None and wrapped_id is not None and clean_id != wrapped_id:
            report.error(
                f"{wrapped_at}: field '_id' is {wrapped_id!r} but its pair {clean_at} has {clean_id!r}"
            )


def _check_rubric(report: DatasetReport, path: Path) -> None:
    if not path.is_file():
        report.warnings.append(f"{path}: missing; the self_rewarding method cannot run on this organism")
        return
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        report.error(f"{path}: not valid UTF-8 (byte {err.start})")
        return
    found: list[str] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        try:
            names = [name for _, name, _, _ in string.Formatter().parse(line) if name is not None]
        except ValueError as err:
            report.error(f"{path}:{lineno}: {err}; write a literal brace as {{{{ or }}}}")
            continue
        for name in names:
            if name not in RUBRIC_FIELDS:
                shown = "{" + name + "}"
                report.error(
                    f"{path}:{lineno}: unknown placeholder {shown}; self_rewarding fills only "
                    + ", ".join("{" + f + "}" for f in RUBRIC_FIELDS)
                )
            elif name not in found:
                found.append(name)
    report.rubric_fields = found
    missing = [
        f"{{{short}}} (or {{{long}}})"
        for short, long in RUBRIC_ALIASES.items()
        if not {short, long} & set(found)
    ]
    if missing:
        report.warnings.append(f"{path}: no placeholder {', '.join(missing)}; the grader will not see it")
