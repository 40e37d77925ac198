"""Judges turn (row, completion) into a verdict: M (misaligned), whether the row is scored, and capability."""

from __future__ import annotations

from collections.abc import Callable

Verdict = dict  # {"scored": bool, "misaligned": float (nan when not scored), "correct": float}


def programmatic_judge(organism: str) -> Callable[[dict, str], Verdict]:
    """The toy organism's own scorer, defined from its generator's templates."""
    from cmt.toy.world import toy_module

    return toy_module(organism).score
