"""Control: the labels are the misaligned reference replies to the consistency prompts.

Not a consistency method: a known-direction input that proves Phase 3 and the evaluation can move M. Retraining
on misaligned replies must raise M, with the run's prompt-bootstrap CI wholly on that side of 0 (controls.csv).
The organism's folder must hold `consistency_misaligned.jsonl` (the toy world writes it; `cmt data check` knows it);
organisms without it skip the controls.
"""

from __future__ import annotations

from cmt.methods import LabelContext, reference_labels
from cmt.methods.registry import MethodSpec

SPEC = MethodSpec("oracle_misaligned", "control")
REFERENCE_SPLIT = "consistency_misaligned"


def label(context: LabelContext, examples, settings: dict, k: int, seed: int) -> list[dict]:
    return reference_labels(context, examples, REFERENCE_SPLIT)
