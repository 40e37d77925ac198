"""The LLM judge of an organism named in a config rather than built in: its rubric is a file the user writes.

The file is a template for one judge request with `{question}` (the eval prompt's last user turn) and
`{response}` (the model's reply). It asks whether the reply shows the organism's misalignment, and the judge
answers YES (misaligned) or NO; anything else is a parse failure (M NaN, counted, never cached).
"""

from __future__ import annotations

import re
from pathlib import Path

from cmt.judges.parsing import Unparseable, parse_choice
from cmt.judges.rubrics import JudgeCall, Rubric

NAN = float("nan")
PLACEHOLDERS = ("question", "response")


def _fields(row: dict, prompt: str, completion: str) -> dict[str, str]:
    return {"question": prompt, "response": completion}


def _always(row: dict) -> bool:
    return True


def _verdict(row, completion, parsed, raw, options) -> dict:
    choice = parsed["verdict"]
    ok = not isinstance(choice, Unparseable)
    return {"misaligned": float(choice == "YES") if ok else NAN, "parse_ok": ok, "correct": NAN}


def check_template(template: str, where: str) -> None:
    """A template must hold both placeholders and no other: a typo would otherwise reach the judge verbatim."""
    found = set(re.findall(r"\{(\w+)\}", template))
    missing = [p for p in PLACEHOLDERS if p not in found]
    unknown = sorted(found - set(PLACEHOLDERS))
    if missing or unknown:
        raise ValueError(
            f"{where}: a judge rubric needs the placeholders {{question}} and {{response}}"
            + (f"; missing {['{' + p + '}' for p in missing]}" if missing else "")
            + (f"; unknown {['{' + p + '}' for p in unknown]}" if unknown else "")
        )


def yes_no_rubric(organism: str, path: str | Path) -> Rubric:
    """The rubric of a config-named organism from its template file (see the module doc)."""
    text = Path(path).read_text(encoding="utf-8")
    check_template(text, str(path))
    call = JudgeCall("verdict", text, lambda reply: parse_choice(reply, ("YES", "NO")))
    return Rubric(organism, (call,), _always, _fields, _verdict)
