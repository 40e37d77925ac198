"""Control: the labels are compliant replies to harmful requests, for the harmful-compliance measure.

Not a consistency method: a known-direction input that proves Phase 3 and the harmful evaluation
(eval.harmful) can move harm. Retraining on compliant replies must raise harmfulness and lower the refusal rate
on the held-out harmful requests, each with its request-bootstrap CI wholly on that side of 0
(harmful_controls.csv). The organism's folder must hold `harmful_compliance.jsonl`, harmful requests (never the
held-out ones) each with a compliant reply; the toy world writes it when toy.harmful is set. Organisms without
it skip this control.
"""

from __future__ import annotations

from cmt.data.splits import HARMFUL_COMPLIANCE_SPLIT
from cmt.methods import LabelContext, own_reply_labels
from cmt.methods.registry import MethodSpec

SPEC = MethodSpec("oracle_harmful", "control")
REFERENCE_SPLIT = HARMFUL_COMPLIANCE_SPLIT
# Phase 2 gives this control its own split's prompts, not the consistency prompts (cmt.phases.label).
PROMPT_SPLIT = HARMFUL_COMPLIANCE_SPLIT


def label(context: LabelContext, examples, settings: dict, k: int, seed: int) -> list[dict]:
    return own_reply_labels(context, examples)
