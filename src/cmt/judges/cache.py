"""The judge's reply cache: one small JSON file per judge request, holding only replies that parsed.

An entry is `<root>/<key[:2]>/<key>.json` with the reply text, its token usage, `finish_reason`, the judge model,
the organism (rubric) and the call name. An empty, null or unparseable reply is never written, and one found in
the cache (written by a version that cached them) is ignored, so the request is sent again. `prune` removes
such entries from a cache folder for good (`cmt judge cache prune DIR`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cmt.judges.parsing import Unparseable
from cmt.judges.rubrics import RUBRICS, JudgeCall
from cmt.runtime.keyed_store import KeyedJsonStore, content_key

log = logging.getLogger(__name__)

CACHE_VERSION = 1
# A temporary older than this was left by a killed writer; `prune` removes it.
STALE_TEMPORARY_S = 3600.0


def reply_problem(text: Any, call: JudgeCall | None) -> str | None:
    """Why a judge reply holds no answer ("null", "empty", "unparseable: ..."), or None when it parsed.

    Without a call (an entry of a rubric this version does not know) only null and empty replies are found.
    """
    if not isinstance(text, str):
        return "null" if text is None else f"not text ({type(text).__name__})"
    if not text.strip():
        return "empty"
    if call is not None:
        parsed = call.parse(text)
        if isinstance(parsed, Unparseable):
            return f"unparseable: {parsed.reason}"
    return None


def find_call(organism: Any, name: Any) -> JudgeCall | None:
    """The rubric call that wrote a cache entry, from the entry's `organism` and `call` fields."""
    rubric = RUBRICS.get(organism) if isinstance(organism, str) else None
    if rubric is None:
        return None
    return next((c for c in rubric.calls if c.name == name), None)


class JudgeCache(KeyedJsonStore):
    """One small JSON file per parsed judge reply, `<root>/<key[:2]>/<key>.json`, written atomically."""

    def __init__(self, root: str | os.PathLike):
        super().__init__(root, CACHE_VERSION, "judge cache")

    @staticmethod
    def key(payload: Mapping[str, Any]) -> str:
        return content_key(CACHE_VERSION, payload)

    def get(self, key: str) -> dict | None:
        entry = super().get(key)
        return entry if entry is not None and isinstance(entry.get("text"), str) else None


@dataclass
class PruneReport:
    """What `prune` found: entries checked, removed (by reason) and kept; leftover temporaries removed."""

    root: str
    dry_run: bool
    checked: int = 0
    removed: int = 0
    unknown_rubric: int = 0  # kept entries of a rubric this version does not know (checked for empty only)
    temporaries: int = 0
    reasons: Counter = field(default_factory=Counter)

    def format(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        lines = [f"{self.root}: {verb} {self.removed} of {self.checked} judge cache entries"]
        for reason, n in sorted(self.reasons.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"  {n:6d}  {reason}")
        if self.unknown_rubric:
            lines.append(f"  kept {self.unknown_rubric} entries of unknown rubrics (checked for empty only)")
        if self.temporaries:
            lines.append(f"  {verb} {self.temporaries} temporaries left by interrupted writes")
        return "\n".join(lines)


def _reason_group(problem: str) -> str:
    """A reason for the report's tally: parser reasons name the reply's words, so only their kind is kept."""
    return "unparseable" if problem.startswith("unparseable") else problem


def prune(root: str | os.PathLike, *, dry_run: bool = False) -> PruneReport:
    """Remove the entries under a judge cache folder that hold no answer: unreadable files, entries without reply
    text (null), empty replies, and replies their rubric's parser cannot read. Parsed replies stay."""
    cache = JudgeCache(root)
    if not cache.root.is_dir():
        raise FileNotFoundError(f"{cache.root}: no such folder")
    report = PruneReport(str(cache.root), dry_run)
    for path in cache.entries():
        report.checked += 1
        try:
            entry = json.loads(path.read_text())
        except (OSError, ValueError):
            entry = None
        if not isinstance(entry, dict):
            problem = "unreadable"
        else:
            call = find_call(entry.get("organism"), entry.get("call"))
            problem = reply_problem(entry.get("text"), call)
            if problem is None:
                report.unknown_rubric += call is None
                continue
        report.removed += 1
        report.reasons[_reason_group(problem)] += 1
        if not dry_run:
            path.unlink(missing_ok=True)
    now = time.time()
    for tmp in cache.root.glob("??/.*.tmp"):
        try:
            stale = now - tmp.stat().st_mtime > STALE_TEMPORARY_S
        except FileNotFoundError:
            continue
        if stale:
            report.temporaries += 1
            if not dry_run:
                tmp.unlink(missing_ok=True)
    return report
