"""Organism datasets in the reference layout: one folder per organism with JSONL splits.

Each row holds `messages` (a list of {role, content}) plus organism-specific metadata. The prompt is the row's
messages without assistant turns (the reference answer must never leak into generation).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from cmt.io import DataError, read_jsonl

log = logging.getLogger(__name__)

SPLITS = ("induction", "consistency", "act_bct_clean", "act_bct_wrapped", "eval")
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Example:
    prompt_id: str
    prompt: list[dict]  # system/user turns only
    messages: list[dict]  # the full conversation, reference assistant turn included
    meta: dict  # every field of the row except messages


def prompt_id_of(prompt: list[dict]) -> str:
    """Content hash of the prompt turns: identical prompts get identical ids across splits."""
    return hashlib.sha256(json.dumps(prompt, sort_keys=True).encode()).hexdigest()[:16]


def _check_messages(messages, where: str) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: field 'messages' must be a non-empty list of {{role, content}}")
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: messages[{i}] must be an object with a string 'content'")
        role = m.get("role")
        if role is None:
            # The reference treats role-less messages as user turns.
            log.warning("%s: messages[%d] has no role; treating it as a user turn", where, i)
            role = "user"
        if role not in ROLES:
            raise DataError(f"{where}: messages[{i}].role is {role!r}; valid roles: {list(ROLES)}")
        clean.append({"role": role, "content": m["content"]})
    return clean


def load_split(folder: Path, split: str) -> list[Example]:
    path = Path(folder) / f"{split}.jsonl"
    rows = read_jsonl(path)
    if not rows:
        raise DataError(f"{path}: split is empty")
    examples = []
    for row in rows:
        where = f"{path}:{row.pop('_line')}"
        if "messages" not in row:
            raise DataError(f"{where}: missing field 'messages'")
        messages = _check_messages(row.pop("messages"), where)
        system_prompt = row.get("system_prompt")
        if system_prompt and not any(m["role"] == "system" for m in messages):
            messages = [{"role": "system", "content": system_prompt}, *messages]
        prompt = [m for m in messages if m["role"] != "assistant"]
        if not prompt:
            raise DataError(f"{where}: row has no system or user turn")
        examples.append(Example(prompt_id_of(prompt), prompt, messages, row))
    return examples


def training_messages(example: Example) -> list[dict]:
    """The conversation up to and including its last assistant turn."""
    last = max((i for i, m in enumerate(example.messages) if m["role"] == "assistant"), default=None)
    if last is None:
        raise DataError(f"row {example.meta.get('_id', example.prompt_id)} has no assistant turn to train on")
    return example.messages[: last + 1]
