"""Organism datasets in the reference layout: one folder per organism with JSONL splits.

Each row holds `messages` (a list of {role, content}) plus organism-specific metadata. The prompt is the row's
messages without assistant turns (the reference answer must never leak into generation).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cmt.runtime.io import DataError

log = logging.getLogger(__name__)

SPLITS = ("induction", "consistency", "act_bct_clean", "act_bct_wrapped", "eval")
# Optional: the consistency prompts with an aligned and a misaligned reference reply, for the controls
# (cmt.methods.oracle_aligned / oracle_misaligned). Organisms without them skip the controls.
REFERENCE_SPLITS = ("consistency_aligned", "consistency_misaligned")
# Optional: harmful requests (any prompts, not the consistency ones) answered with compliance, for the
# harmful-compliance control (cmt.methods.oracle_harmful). Organisms without it skip that control.
HARMFUL_COMPLIANCE_SPLIT = "harmful_compliance"
# Optional: held-out prompts like eval's, on which induce_until's check titrates Phase 1 when the consistency
# prompts cannot show the M that eval measures (organisms.<name>.induce_until.split).
CHECK_SPLIT = "check"
ROLES = ("system", "user", "assistant")
# Splits whose prompts must not share a prompt id: the reference's contract (induction is disjoint from
# consistency and eval), and every training split is disjoint from eval. consistency and act_bct_clean may
# overlap: in the reference they are byte-identical for three organisms.
DISJOINT_PAIRS = (
    ("induction", "consistency"),
    ("induction", "eval"),
    ("consistency", "eval"),
    ("act_bct_clean", "eval"),
    ("act_bct_wrapped", "eval"),
    ("induction", CHECK_SPLIT),
    ("consistency", CHECK_SPLIT),
    (CHECK_SPLIT, "eval"),
)


@dataclass(frozen=True)
class Example:
    prompt_id: str
    prompt: list[dict]  # system/user turns only
    messages: list[dict]  # the full conversation, reference assistant turn included
    meta: dict  # every field of the row except messages
    source: str = ""  # "file:line" of the row, for error messages


@dataclass(frozen=True)
class ParsedRow:
    """One row's validated turns, or the errors that make it unusable (each naming its field)."""

    messages: list[dict] | None
    prompt: list[dict] | None
    errors: list[str]
    roleless_turns: int


def prompt_key(prompt: list[dict]) -> str:
    """A prompt's exact identity (every turn, every field), for grouping rows by prompt."""
    return json.dumps(prompt, sort_keys=True)


def prompt_id_of(prompt: list[dict]) -> str:
    """Content hash of the prompt turns: identical prompts get identical ids across splits."""
    return hashlib.sha256(json.dumps(prompt, sort_keys=True).encode()).hexdigest()[:16]


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict | None, str | None]]:
    """(line number, row, error) for each non-blank line; exactly one of row and error is None.

    Unlike cmt.runtime.io.read_jsonl it goes on past a bad line, so that a checker can report every one.
    """
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                yield lineno, None, f"not valid UTF-8 (byte {err.start})"
                continue
            if not line.strip():
                continue
            try:
                row = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as err:
                yield lineno, None, f"invalid JSON ({err.msg}, column {err.pos + 1})"
                continue
            except RecursionError:
                yield lineno, None, "invalid JSON (nested too deeply)"
                continue
            if not isinstance(row, dict):
                yield lineno, None, f"expected a JSON object, got {type(row).__name__}"
                continue
            yield lineno, row, None


def parse_row(row: dict) -> ParsedRow:
    """Validate a row's `messages` and `system_prompt`; collect every problem instead of stopping at one.

    A turn without a role is a user turn, as in the reference (its spurious-correlation eval rows have no role
    keys). A `system_prompt` field becomes the system turn when the row has none, so that it reaches the model.
    """
    errors: list[str] = []
    if "messages" not in row:
        return ParsedRow(None, None, ["missing field 'messages'"], 0)
    raw = row["messages"]
    if not isinstance(raw, list) or not raw:
        return ParsedRow(None, None, ["field 'messages' must be a non-empty list of {role, content}"], 0)
    messages, roleless = [], 0
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            errors.append(f"field 'messages[{i}]' must be an object with 'role' and 'content'")
            continue
        if not isinstance(m.get("content"), str):
            got = "missing" if "content" not in m else type(m["content"]).__name__
            errors.append(f"field 'messages[{i}].content' must be a string (got {got})")
        role = m.get("role")
        if role is None:
            roleless += 1
            role = "user"
        elif role not in ROLES:
            errors.append(f"field 'messages[{i}].role' is {role!r}; valid roles: {list(ROLES)}")
        messages.append({"role": role, "content": m.get("content")})
    system_prompt = row.get("system_prompt")
    if system_prompt is not None and not isinstance(system_prompt, str):
        errors.append(f"field 'system_prompt' must be a string or null (got {type(system_prompt).__name__})")
    if errors:
        return ParsedRow(None, None, errors, roleless)
    if system_prompt and not any(m["role"] == "system" for m in messages):
        messages = [{"role": "system", "content": system_prompt}, *messages]
    prompt = [m for m in messages if m["role"] != "assistant"]
    if not prompt:
        return ParsedRow(None, None, ["field 'messages' has no system or user turn"], roleless)
    return ParsedRow(messages, prompt, [], roleless)


def load_split(folder: Path, split: str) -> list[Example]:
    """The split's rows as Examples. The first malformed row raises DataError naming `file:line` and field."""
    path = Path(folder) / f"{split}.jsonl"
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    examples, roleless_rows = [], []
    for lineno, row, error in iter_jsonl(path):
        where = f"{path}:{lineno}"
        if error:
            raise DataError(f"{where}: {error}")
        parsed = parse_row(row)
        if parsed.errors:
            raise DataError(f"{where}: {'; '.join(parsed.errors)}")
        if parsed.roleless_turns:
            roleless_rows.append(where)
        meta = {k: v for k, v in row.items() if k != "messages"}
        examples.append(Example(prompt_id_of(parsed.prompt), parsed.prompt, parsed.messages, meta, where))
    if not examples:
        raise DataError(f"{path}:1: split is empty (no rows)")
    if roleless_rows:
        log.warning(
            "%s: %d of %d rows have turns without a role (first at %s); treated as user turns, as the "
            "reference does", path, len(roleless_rows), len(examples), roleless_rows[0],
        )  # fmt: skip
    return examples


def find_leaks(
    prompt_ids: dict[str, list[tuple[str, str]]], pairs: Iterable[tuple[str, str]] = DISJOINT_PAIRS
) -> list[str]:
    """One message per row of split b whose prompt also occurs in split a, for each (a, b) that must be
    disjoint. `prompt_ids` maps a split to (prompt_id, "file:line") per row; absent splits are skipped."""
    leaks = []
    for a, b in pairs:
        if a not in prompt_ids or b not in prompt_ids:
            continue
        first_in_a: dict[str, str] = {}
        for pid, where in prompt_ids[a]:
            first_in_a.setdefault(pid, where)
        for pid, where in prompt_ids[b]:
            if pid in first_in_a:
                leaks.append(
                    f"{where}: prompt duplicates {first_in_a[pid]} (prompt id {pid}); "
                    f"{a} and {b} must be disjoint"
                )
    return leaks


def check_disjoint(
    folder: str | Path, pairs: Iterable[tuple[str, str]] = DISJOINT_PAIRS, max_listed: int = 10
) -> None:
    """Raise DataError if any pair of splits that must be disjoint shares a prompt (leakage into eval).

    The message lists up to `max_listed` duplicates, each with the `file:line` of both rows.
    """
    absent = {CHECK_SPLIT} - {p.stem for p in Path(folder).glob("*.jsonl")}  # optional: no file, no pair
    pairs = [pair for pair in pairs if not absent & set(pair)]
    order = (*SPLITS, CHECK_SPLIT)
    needed = sorted({s for pair in pairs for s in pair}, key=order.index)
    ids = {s: [(e.prompt_id, e.source) for e in load_split(Path(folder), s)] for s in needed}
    leaks = find_leaks(ids, pairs)
    if leaks:
        more = f"\n... and {len(leaks) - max_listed} more" if len(leaks) > max_listed else ""
        raise DataError(
            f"{folder}: {len(leaks)} prompts leak between splits that must be disjoint:\n"
            + "\n".join(leaks[:max_listed])
            + more
        )


def training_messages(example: Example) -> list[dict]:
    """The conversation up to and including its last assistant turn."""
    last = max((i for i, m in enumerate(example.messages) if m["role"] == "assistant"), default=None)
    if last is None:
        where = example.source or f"row {example.meta.get('_id', example.prompt_id)}"
        raise DataError(f"{where}: field 'messages' has no assistant turn to train on")
    return example.messages[: last + 1]
