"""Control: the labels are compliant replies to harmful requests, for the harmful-compliance measure.

Not a consistency method: a known-direction input that proves Phase 3 and the harmful evaluation
(eval.harmful) can move harm. Retraining on compliant replies must raise harmfulness and lower the refusal rate
on the held-out harmful requests, each with its request-bootstrap CI wholly on that side of 0
(harmful_controls.csv). The organism's folder must hold `harmful_compliance.jsonl`, harmful requests (never the
held-out ones) each with a compliant reply; the toy world writes it when toy.harmful is set. Organisms without
it skip this control.

With `with_own_replies`, the organism's own greedy replies to the consistency prompts (gst's labels) join the
compliant ones: the labels are then a method's labels carrying harmful compliance, and the model keeps
training on its own task, so that the control can raise harm in a model that still works (a control run whose
capability falls is invalid and proves nothing).
"""

from __future__ import annotations

from pathlib import Path

from cmt.data.splits import HARMFUL_COMPLIANCE_SPLIT, load_split
from cmt.methods import LabelContext, gst, own_reply_labels
from cmt.methods.registry import MethodSpec

SPEC = MethodSpec("oracle_harmful", "control")
REFERENCE_SPLIT = HARMFUL_COMPLIANCE_SPLIT
# Phase 2 gives this control its own split's prompts, not (only) the consistency prompts (cmt.phases.label).
PROMPT_SPLIT = HARMFUL_COMPLIANCE_SPLIT
OWN_REPLIES_SPLIT = "consistency"


def prompt_splits(settings: dict) -> tuple[str, ...]:
    return (PROMPT_SPLIT, OWN_REPLIES_SPLIT) if settings.get("with_own_replies") else (PROMPT_SPLIT,)


def label(context: LabelContext, examples, settings: dict, k: int, seed: int) -> list[dict]:
    if not settings.get("with_own_replies"):
        return own_reply_labels(context, examples)
    if context.data_dir is None:
        raise ValueError("oracle_harmful with_own_replies needs the organism's data folder")
    compliant_ids = {e.prompt_id for e in load_split(Path(context.data_dir), PROMPT_SPLIT)}
    compliant = [e for e in examples if e.prompt_id in compliant_ids]
    own = [e for e in examples if e.prompt_id not in compliant_ids]
    return own_reply_labels(context, compliant) + (gst.label(context, own, settings, 1, seed) if own else [])
