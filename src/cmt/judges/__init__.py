"""Judges turn (row, completion) into a verdict: M (misaligned), whether the row is scored, and capability."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

Verdict = dict  # {"scored": bool, "misaligned": float (nan when not scored), "correct": float}


def judge_batch(
    judge: Callable[[dict, str], Verdict],
    rows: Sequence[dict],
    completions: Sequence[str],
    prompts: Sequence[Any] | None = None,
) -> list[Verdict]:
    """Score many (row, completion) pairs: batched and concurrent for an LLM judge, a loop otherwise."""
    score_batch = getattr(judge, "score_batch", None)
    if score_batch is not None:
        return score_batch(rows, completions, prompts)
    return [judge(row, completion) for row, completion in zip(rows, completions, strict=True)]
