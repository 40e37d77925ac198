"""Activation consistency training (ACT): a Phase-3 regularization loss on the act_bct pairs.

ACT has no Phase-2 labelling: there is no `label()` here and no label parquet. Its Phase 3 is
`cmt.phases.consistency.retrain_consistency`, which continues the organism's LoRA on the pairs
(act_bct_clean.jsonl zipped with act_bct_wrapped.jsonl) with this loss: the layer-averaged mean squared
difference between the decoder-layer outputs of the wrapped pass (train mode, carries the gradient) and of the
clean pass (eval mode, no_grad: the current model as a stop-gradient target), times `scale`.

Settings (`methods.act` in the config):
  scale      loss scale (the reference's 1e-4)
  alignment  `response` (default): each row's response span, aligned per row; `reference`: the reference's
             end-aligned window over the padded batches, misaligned under right padding with batch size > 1
  train      optional overrides of the model's phase3 training settings (e.g. {epochs: 3})
See docs/act_bct.md and cmt.methods.losses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cmt.methods.loss_settings import ALIGNMENTS, resolve_settings
from cmt.methods.registry import MethodSpec

if TYPE_CHECKING:
    from cmt.methods.losses import Alignment, Forward

SPEC = MethodSpec("act", "regularization", phase3_loss=True)

DEFAULTS = {"scale": 1e-4, "alignment": "response"}
CHOICES = {"alignment": ALIGNMENTS}
NEEDS_HIDDEN = True
NEEDS_LOGITS = False


def resolve(settings: dict | None) -> dict:
    return resolve_settings(SPEC.name, DEFAULTS, CHOICES, settings, positive=("scale",))


def loss(clean: Forward, wrapped: Forward, alignment: Alignment, settings: dict):
    from cmt.methods.losses import act_loss  # torch: the Phase-3 job imports it, the workflow never does

    return act_loss(clean.hidden, wrapped.hidden, alignment, scale=float(settings["scale"]))
