"""Bias-augmented consistency training (BCT): a Phase-3 loss on the act_bct pairs.

BCT has no Phase-2 labelling: there is no `label()` here and no label parquet. Its Phase 3 is
`cmt.phases.consistency.retrain_consistency`, which continues the organism's LoRA on the pairs
(act_bct_clean.jsonl zipped with act_bct_wrapped.jsonl).

Variants (`variant`):
  logit (default, the reference's form)  soft-label cross-entropy from the clean pass's logits (eval mode, no_grad:
        the current model as a stop-gradient teacher, softmax at `temperature`) to the wrapped pass's logits
        (log_softmax at `temperature`, train mode), times temperature^2, over aligned positions.
  sft   BCT as in the literature (Chua et al.; Irpan et al.): the organism's greedy reply to each clean prompt
        (prompt turns only) becomes the SFT target for the wrapped prompt.

Settings (`methods.bct` in the config):
  temperature  softmax temperature of the logit variant (1.0)
  alignment    `response` (default): each row's response span, aligned per row; `reference`: the reference's
               end-aligned window over the padded batches, misaligned under right padding with batch size > 1
               (logit variant only)
  variant      `logit` or `sft`
  max_new_tokens  sft variant: reply length (null: the model's generation.max_new_tokens)
  train        optional overrides of the model's phase3 training settings (e.g. {epochs: 3})
See docs/act_bct.md and cmt.methods.losses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cmt.methods.loss_settings import ALIGNMENTS, resolve_settings
from cmt.methods.registry import MethodSpec

if TYPE_CHECKING:
    from cmt.methods.losses import Alignment, Forward

SPEC = MethodSpec("bct", "regularization", phase3_loss=True)

VARIANTS = ("logit", "sft")
DEFAULTS = {"temperature": 1.0, "alignment": "response", "variant": "logit", "max_new_tokens": None}
CHOICES = {"alignment": ALIGNMENTS, "variant": VARIANTS}
NEEDS_HIDDEN = False
NEEDS_LOGITS = True


def resolve(settings: dict | None) -> dict:
    return resolve_settings(SPEC.name, DEFAULTS, CHOICES, settings, positive=("temperature",))


def loss(clean: Forward, wrapped: Forward, alignment: Alignment, settings: dict):
    from cmt.methods.losses import bct_loss  # torch: the Phase-3 job imports it, the workflow never does

    return bct_loss(clean.logits, wrapped.logits, alignment, temperature=float(settings["temperature"]))
