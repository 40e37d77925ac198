"""Phase 3 for label methods: continue the organism's LoRA on the selected pseudo-labels."""

from __future__ import annotations

import json
import logging

import pandas as pd

from cmt.manifest import build_manifest
from cmt.models import load_model, load_tokenizer
from cmt.phases.induce import save_adapter, train_adapter
from cmt.training import TrainingError

log = logging.getLogger(__name__)


def label_conversations(labels: pd.DataFrame) -> list[list[dict]]:
    """[prompt turns] + the selected label, for every prompt that kept a non-empty label."""
    chosen = labels[labels["selected"] & (labels["text"].str.strip() != "")]
    return [
        [*json.loads(row.prompt), {"role": "assistant", "content": row.text}] for row in chosen.itertuples()
    ]


def retrain(model_dir: str, organism_adapter: str, labels_path: str, out_dir: str, settings: dict, seed: int):
    labels = pd.read_parquet(labels_path)
    conversations = label_conversations(labels)
    n_prompts = labels["prompt_id"].nunique()
    log.info("%d of %d prompts kept a label", len(conversations), n_prompts)
    if not conversations:
        raise TrainingError(f"{labels_path}: no prompt kept a non-empty label; nothing to retrain on")
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir, dtype=settings["dtype"], adapter=organism_adapter, trainable_adapter=True)
    history = train_adapter(model, tokenizer, conversations, settings["train"], seed, "retrain")
    manifest = build_manifest(
        task="retrain",
        settings=settings,
        seeds={"train": seed},
        inputs=[labels_path, organism_adapter],
        n_labels=len(conversations),
        n_prompts=n_prompts,
        steps=history.steps,
        first_loss=history.first_loss,
        final_loss=history.final_loss,
    )
    save_adapter(model, out_dir, manifest)
