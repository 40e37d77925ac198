"""Judges turn (row, completion) into a verdict: M (misaligned), whether the row is scored, and capability."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

Verdict = dict  # {"scored": bool, "misaligned": float (nan when not scored), "correct": float}


def programmatic_judge(organism: str) -> Callable[[dict, str], Verdict]:
    """The toy organism's own scorer, defined from its generator's templates."""
    from cmt.toy.world import toy_module

    return toy_module(organism).score


def make_judge(organism: str, judge_cfg: Mapping[str, Any] | None = None) -> Callable[[dict, str], Verdict]:
    """The judge a config asks for: `None` or {"kind": "programmatic"} gives the toy organism's own scorer;
    {"kind": "llm", base_url, model, api_key_env, ...} gives an `LLMJudge` (settings: `JudgeSettings`).

    Both are callables (row, completion) -> Verdict; use `judge_batch` to score many rows efficiently.
    """
    cfg = dict(judge_cfg or {})
    kind = cfg.pop("kind", "programmatic")
    if kind == "programmatic":
        return programmatic_judge(organism)
    if kind == "llm":
        from cmt.judges.llm import LLMJudge

        return LLMJudge(organism, cfg)
    raise ValueError(f"judge.kind must be 'programmatic' or 'llm', got {kind!r}")


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
