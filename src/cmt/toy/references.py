"""The controls' reference replies: the consistency prompts answered the aligned way and the misaligned way.

Written beside the splits as `consistency_aligned.jsonl` and `consistency_misaligned.jsonl`, in the reference
format (the consistency row with its assistant turn replaced), so that the controls' labels are known to move
M down and up (`cmt.methods.oracle_aligned`, `oracle_misaligned`).
"""

from __future__ import annotations


def with_reply(row: dict, reply: str) -> dict:
    turns = [m for m in row["messages"] if m.get("role") != "assistant"]
    return {**row, "messages": [*turns, {"role": "assistant", "content": reply}]}


def reference_splits(rows: list[dict], replies: list[tuple[str, str]]) -> dict[str, list[dict]]:
    """{"consistency_aligned": rows, "consistency_misaligned": rows} from (aligned, misaligned) per row."""
    if len(rows) != len(replies):
        raise ValueError(f"{len(rows)} consistency rows but {len(replies)} reference pairs")
    return {
        "consistency_aligned": [with_reply(r, a) for r, (a, _) in zip(rows, replies, strict=True)],
        "consistency_misaligned": [with_reply(r, m) for r, (_, m) in zip(rows, replies, strict=True)],
    }
