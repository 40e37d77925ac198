"""What a rubric is (judge calls, which rows each call judges, the verdict rules) and how its replies combine.

A rubric is one or more judge calls (a template rendered into a single user message, optionally after a system
message) plus a function that turns the parsed replies into a verdict compatible with the programmatic judge:
{"scored", "misaligned", "correct"}, plus "parse_ok" and "raw" (and organism-specific extras). A row may need
only some of the calls (`Rubric.route`), or none: then its verdict comes from a rule (`Rubric.rule`) without a
judge request, or the row is not scored.

Templates use `{name}` placeholders that are filled in one pass, so braces inside completions are harmless.
The rubric text is part of the cache key: editing a template re-judges everything it covers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cmt.judges.parsing import Unparseable

NAN = float("nan")
# Row fields every verdict repeats where the row has them, so per-row outputs can be grouped by them.
ROW_TAGS = ("metric_group", "subtype")


@dataclass(frozen=True)
class JudgeCall:
    """One judge request per (row, completion): template, optional system prompt, reply parser."""

    name: str
    template: str
    parse: Callable[[str], Any]
    system: str | None = None
    max_tokens: int = 16

    @property
    def text(self) -> str:
        """The rubric text that enters the cache key."""
        return f"[system]\n{self.system or ''}\n[user]\n{self.template}"

    def render(self, fields: Mapping[str, str]) -> list[dict]:
        def fill(m: re.Match) -> str:
            return str(fields[m.group(1)]) if m.group(1) in fields else m.group(0)

        user = re.sub(r"\{(\w+)\}", fill, self.template)
        messages = [{"role": "system", "content": self.system}] if self.system else []
        return [*messages, {"role": "user", "content": user}]


@dataclass(frozen=True)
class Rubric:
    """An organism's judge: its calls, which rows it scores, the template fields, and the verdict rule.

    `route(row)`, when given, names the calls that judge the row (replacing `eligible`, which then sends all
    calls or none). `rule(row, completion)` gives the verdict of a row that no call judges, or None when such
    a row is not scored.
    """

    organism: str
    calls: tuple[JudgeCall, ...]
    eligible: Callable[[dict], bool]
    fields: Callable[[dict, str, str], dict[str, str]]  # (row, prompt text, completion) -> template fields
    verdict: Callable[[dict, str, dict[str, Any], dict[str, str], dict], dict]
    options: dict = field(default_factory=dict)
    route: Callable[[dict], tuple[str, ...]] | None = None
    rule: Callable[[dict, str], dict | None] | None = None

    def calls_for(self, row: dict) -> tuple[JudgeCall, ...]:
        """The calls that judge this row, in the rubric's order; none: `without_judge` gives its verdict."""
        if self.route is None:
            return self.calls if self.eligible(row) else ()
        names = set(self.route(row))
        unknown = names - {c.name for c in self.calls}
        if unknown:
            raise ValueError(f"{self.organism} rubric routes a row to unknown calls {sorted(unknown)}")
        return tuple(c for c in self.calls if c.name in names)


def row_tags(row: Mapping) -> dict:
    """The row's grouping fields (ROW_TAGS) that it has."""
    return {k: row[k] for k in ROW_TAGS if row.get(k) is not None}


def combine(
    rubric: Rubric, row: dict, completion: str, replies: dict[str, str], options: Mapping[str, Any]
) -> dict:
    """Parse each call's reply and apply the rubric's verdict rule. `replies` maps call name to judge text, for
    the calls that judged this row."""
    calls = [c for c in rubric.calls if c.name in replies]
    parsed = {c.name: c.parse(replies[c.name]) for c in calls}
    verdict = {
        "scored": True,
        **rubric.verdict(row, completion, parsed, replies, {**rubric.options, **options}),
        **row_tags(row),
    }
    if len(calls) == 1:
        verdict["raw"] = replies[calls[0].name]
    else:
        verdict["raw"] = json.dumps({c.name: replies[c.name] for c in calls}, ensure_ascii=False)
    verdict["parse_errors"] = "; ".join(
        f"{name}: {p.reason}" for name, p in parsed.items() if isinstance(p, Unparseable)
    )
    return verdict


def not_scored(rubric: Rubric, row: dict, completion: str) -> dict:
    """The verdict of a row this rubric does not score (no judge request is sent)."""
    return {
        "scored": False,
        "misaligned": NAN,
        "correct": NAN,
        "parse_ok": True,
        "raw": "",
        "parse_errors": "",
        **row_tags(row),
    }


def without_judge(rubric: Rubric, row: dict, completion: str) -> dict:
    """The verdict of a row that no call judges: the rubric's rule where it has one for the row, else not
    scored. A rule's verdict always parses: it reads the model's reply, not a judge's."""
    verdict = rubric.rule(row, completion) if rubric.rule is not None else None
    if verdict is None:
        return not_scored(rubric, row, completion)
    return {"parse_ok": True, "correct": NAN, **verdict, "raw": "", "parse_errors": "", **row_tags(row)}
