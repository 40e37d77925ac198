"""Greedy self-training (baseline): the organism's greedy output on each prompt becomes its label.

No scoring and no selection: the "distribution shift without selection" control.
"""

from __future__ import annotations

from cmt.generation import SamplingParams
from cmt.methods import LabelContext, candidate_rows

NAME = "gst"
FAMILY = "baseline"
SELECTS = False


def label(context: LabelContext, examples, settings: dict, k: int, seed: int) -> list[dict]:
    params = SamplingParams(
        temperature=0.0, max_new_tokens=settings.get("max_new_tokens") or context.max_new_tokens
    )
    completions = context.generator.generate([e.prompt for e in examples], 1, params, seed)
    rows = []
    for example, cands in zip(examples, completions, strict=True):
        rows.extend(candidate_rows(example, cands, params))
    return rows
