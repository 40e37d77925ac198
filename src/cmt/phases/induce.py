"""Phase 1: LoRA SFT of the base model on the organism's induction split (assistant tokens only)."""

from __future__ import annotations

import logging
from pathlib import Path

from cmt import training
from cmt.data import load_split, training_messages
from cmt.io import atomic_dir, write_json
from cmt.manifest import build_manifest
from cmt.models import load_model, load_tokenizer

log = logging.getLogger(__name__)


def train_adapter(model, tokenizer, conversations: list[list[dict]], settings: dict, seed: int, desc: str):
    train_settings = training.TrainSettings.from_dict(settings)
    examples = [training.encode_chat(tokenizer, m, train_settings.max_length) for m in conversations]
    return training.train(model, examples, train_settings, seed, tokenizer.pad_token_id, desc)


def save_adapter(model, out_dir: str | Path, manifest: dict) -> None:
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        write_json(tmp / "cmt_manifest.json", manifest)


def induce(model_dir: str, data_dir: str, out_dir: str, settings: dict, seed: int) -> None:
    from peft import get_peft_model

    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir, dtype=settings["dtype"])
    model = get_peft_model(model, training.lora_config(settings["lora"]))
    examples = load_split(Path(data_dir), "induction")
    history = train_adapter(
        model, tokenizer, [training_messages(e) for e in examples], settings["train"], seed, "induce"
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
