"""Phase 1: LoRA SFT of the base model on the organism's induction split (assistant tokens only)."""

from __future__ import annotations

import logging
from pathlib import Path

from cmt.data.splits import check_disjoint, load_split, training_messages
from cmt.models import training
from cmt.models.loading import load_model, load_tokenizer
from cmt.runtime import checkpoint
from cmt.runtime.io import atomic_dir, write_json
from cmt.runtime.manifest import build_manifest, record_outputs

log = logging.getLogger(__name__)


def train_adapter(
    model,
    tokenizer,
    conversations: list[list[dict]],
    settings: dict,
    seed: int,
    desc: str,
    checkpoint_dir=None,
):
    """LoRA SFT; with `checkpoint_dir` resumable (cmt.runtime.checkpoint), and the caller removes it after saving."""
    train_settings = training.TrainSettings.from_dict(settings)
    examples = [training.encode_chat(tokenizer, m, train_settings.max_length) for m in conversations]
    return training.train(model, examples, train_settings, seed, tokenizer.pad_token_id, desc, checkpoint_dir)


def save_adapter(model, out_dir: str | Path, manifest: dict) -> None:
    """Save the adapter and its manifest (with the sha256 of every adapter file) into `out_dir` at once."""
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        manifest = record_outputs(manifest, [tmp], tmp / "cmt_manifest.json")
        write_json(tmp / "cmt_manifest.json", manifest)


def induce(
    model_dir: str, data_dir: str, out_dir: str, settings: dict, seed: int, checkpoint_dir: str | None = None
) -> None:
    """Checkpoints go to `checkpoint_dir`, by default resources/checkpoints/<out_dir> (cmt.runtime.checkpoint)."""
    import torch
    from peft import get_peft_model

    checkpoint_dir = checkpoint_dir or checkpoint.checkpoint_dir_for(out_dir)

    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir, dtype=settings["dtype"], quantization=settings.get("quantization"))
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
    manifest = build_manifest(
        task="induce",
        settings=settings,
        seeds={"train": seed},
        inputs=[Path(data_dir) / "induction.jsonl"],
        n_examples=len(examples),
        steps=history.steps,
        first_loss=history.first_loss,
        final_loss=history.final_loss,
    )
    save_adapter(model, out_dir, manifest)
    checkpoint.remove(checkpoint_dir)
