"""Phase 1: LoRA SFT of the base model on the organism's induction split (the loss on the assistant's
tokens, or on every token with the phase1 block's `loss_span: all`)."""

from __future__ import annotations

import logging
from pathlib import Path

from cmt.data.splits import check_disjoint, load_split, training_messages
from cmt.models import training
from cmt.models.loading import base_load_args, load_model, load_tokenizer
from cmt.phases.adapter import finish_adapter, train_adapter
from cmt.runtime import checkpoint

log = logging.getLogger(__name__)


def induce(
    model_dir: str, data_dir: str, out_dir: str, settings: dict, seed: int, checkpoint_dir: str | None = None
) -> None:
    """Checkpoints go to `checkpoint_dir`, by default resources/checkpoints/<out_dir> (cmt.runtime.checkpoint)."""
    import torch
    from peft import get_peft_model

    checkpoint_dir = checkpoint_dir or checkpoint.checkpoint_dir_for(out_dir)

    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir, **base_load_args(settings))
    # torch seeds itself at random per process: seed the LoRA initialisation, or no rerun (nor resume) matches.
    torch.manual_seed(seed)
    model = get_peft_model(model, training.lora_config(settings["lora"]))
    # Leakage between the training splits and eval would inflate every result: refuse it up front.
    check_disjoint(Path(data_dir))
    examples = load_split(Path(data_dir), "induction")
    conversations = [training_messages(e) for e in examples]
    history = train_adapter(
        model, tokenizer, conversations, settings["train"], seed, "induce", checkpoint_dir
    )
    finish_adapter(
        model,
        out_dir,
        checkpoint_dir,
        history,
        task="induce",
        settings=settings,
        seed=seed,
        inputs=[Path(data_dir) / "induction.jsonl"],
        n_examples=len(examples),
    )
