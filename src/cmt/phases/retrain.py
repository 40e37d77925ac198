"""Phase 3 for label methods: continue the organism's LoRA on the selected pseudo-labels."""

from __future__ import annotations

import json
import logging

import pandas as pd

from cmt.methods import drop_reasons, parse_failures
from cmt.models.loading import base_load_args, load_model, load_tokenizer
from cmt.models.training import TrainHistory
from cmt.phases.adapter import finish_adapter, train_adapter
from cmt.runtime import checkpoint

log = logging.getLogger(__name__)


def label_conversations(labels: pd.DataFrame) -> list[list[dict]]:
    """[prompt turns] + the selected label, for every prompt that kept a non-empty label."""
    chosen = labels[labels["selected"] & (labels["text"].str.strip() != "")]
    return [
        [*json.loads(row.prompt), {"role": "assistant", "content": row.text}] for row in chosen.itertuples()
    ]


def label_set_hash(conversations: list[list[dict]]) -> str:
    """sha256 of the (prompt, label) pairs, order-free: two runs that train on the same labels share it, so the
    tables count them once (n_effective)."""
    import hashlib

    lines = sorted(json.dumps(c, sort_keys=True, ensure_ascii=False) for c in conversations)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def retrain(
    model_dir: str,
    organism_adapter: str,
    labels_paths: list[str],
    out_dirs: list[str],
    settings: dict,
    seed: int,
    checkpoint_dirs: list[str] | None = None,
) -> None:
    """Continue the organism's LoRA on each label file in turn (one per k), each into its own adapter dir.

    Each run checkpoints to its `checkpoint_dirs` entry, by default resources/checkpoints/<out_dir>.
    """
    if len(labels_paths) != len(out_dirs):
        raise ValueError(f"{len(labels_paths)} label files but {len(out_dirs)} output directories")
    checkpoint_dirs = checkpoint_dirs or [checkpoint.checkpoint_dir_for(d) for d in out_dirs]
    tokenizer = load_tokenizer(model_dir)
    # The last run's labels in training order, its trained model and history: training is deterministic, so a
    # k whose labels equal the previous k's (a selector that keeps picking the same candidates) gets that
    # adapter saved again instead of the same steps repeated.
    previous: tuple[list, object, TrainHistory, str] | None = None
    for labels_path, out_dir, checkpoint_dir in zip(labels_paths, out_dirs, checkpoint_dirs, strict=True):
        labels = pd.read_parquet(labels_path)
        conversations = label_conversations(labels)
        n_prompts = labels["prompt_id"].nunique()
        log.info("%s: %d of %d prompts kept a label", labels_path, len(conversations), n_prompts)
        if conversations and previous is not None and previous[0] == conversations:
            _, model, history, same_as = previous
            log.info(
                "%s: the same labels in the same order as %s; its adapter is saved again",
                labels_path,
                same_as,
            )
        else:
            previous = model = None  # a trained model is held for one repeat only, never beside the next one
            model = load_model(
                model_dir, adapter=organism_adapter, trainable_adapter=True, **base_load_args(settings)
            )
            if not conversations:
                # Recorded, not skipped: the organism's adapter stands in with n_labels 0, and the tables give
                # the run no delta (there was no Phase 3) while counting it.
                log.warning(
                    "%s: no prompt kept a non-empty label; Phase 3 has nothing to train on", labels_path
                )
                history = TrainHistory()
            else:
                history = train_adapter(
                    model, tokenizer, conversations, settings["train"], seed, "retrain", checkpoint_dir
                )
                previous = (conversations, model, history, labels_path)
        finish_adapter(
            model,
            out_dir,
            checkpoint_dir,
            history,
            task="retrain",
            settings=settings,
            seed=seed,
            inputs=[labels_path, organism_adapter],
            n_labels=len(conversations),
            n_prompts=n_prompts,
            n_dropped=n_prompts - len(conversations),
            drop_reasons=drop_reasons(labels),
            n_label_parse_failures=parse_failures(labels),
            label_set=label_set_hash(conversations) if conversations else "",
        )
