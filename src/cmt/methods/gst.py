"""Greedy self-training (baseline): the organism's greedy output on each prompt becomes its label.

No scoring and no selection: the "distribution shift without selection" control.
"""

from __future__ import annotations

from cmt.methods import Candidate, LabelContext, candidate_rows, greedy_params
from cmt.methods.registry import MethodSpec

SPEC = MethodSpec("gst", "baseline")


def label(context: LabelContext, examples, settings: dict, k: int, seed: int) -> list[dict]:
    params = greedy_params(context, settings)
    completions = context.generator.generate([e.prompt for e in examples], 1, params, seed)
    rows = []
    for example, cands in zip(examples, completions, strict=True):
        rows.extend(candidate_rows(example, [Candidate(cands[0], params, "greedy")], selected=0))
    return rows
