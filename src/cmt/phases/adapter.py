"""What every LoRA training phase shares (Phase 1 induce, Phase 3 retrain and the consistency losses): SFT on
conversations, and the tail that saves the adapter with its manifest and then drops the run's checkpoints."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from cmt.models import training
from cmt.runtime import checkpoint
from cmt.runtime.io import atomic_dir, write_json
from cmt.runtime.manifest import build_manifest, record_outputs
from cmt.runtime.runlog import timed


def train_adapter(
    model,
    tokenizer,
    conversations: list[list[dict]],
    settings: dict,
    seed: int,
    desc: str,
    checkpoint_dir=None,
    **stop,
):
    """LoRA SFT; with `checkpoint_dir` resumable (cmt.runtime.checkpoint), and the caller removes it after saving.

    The loss covers the assistant's reply, or every token with `loss_span: all` in `settings`. `stop` passes an
    early-stop rule to `training.train` (stop_check, stop_every, loss_key).
    """
    train_settings = training.TrainSettings.from_dict(settings)
    assistant_only = training.loss_span_assistant_only(settings)
    examples = [
        training.encode_chat(tokenizer, m, train_settings.max_length, assistant_only=assistant_only)
        for m in conversations
    ]
    return training.train(
        model, examples, train_settings, seed, tokenizer.pad_token_id, desc, checkpoint_dir, **stop
    )


@timed("save")
def save_adapter(model, out_dir: str | Path, manifest: dict) -> None:
    """Save the adapter and its manifest (with the sha256 of every adapter file) into `out_dir` at once."""
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        _sort_target_modules(tmp / "adapter_config.json")
        manifest = record_outputs(manifest, [tmp], tmp / "cmt_manifest.json")
        write_json(tmp / "cmt_manifest.json", manifest)


def _sort_target_modules(config_file: Path) -> None:
    """peft writes a set of target module names in the process's string-hash order, so two identical runs wrote
    different adapter_config.json files (and manifest hashes); sorted, they write the same bytes."""
    config = json.loads(config_file.read_text())
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
        write_json(config_file, config)


def finish_adapter(
    model,
    out_dir: str | Path,
    checkpoint_dir: str | os.PathLike,
    history: training.TrainHistory,
    *,
    task: str,
    settings: dict,
    seed: int,
    inputs: Iterable[str | os.PathLike],
    **extra,
) -> None:
    """The end of a training job: the manifest (the training seed, the inputs' hashes, steps and first and final
    loss, plus `extra`), the adapter saved with it, and then the run's checkpoints removed."""
    manifest = build_manifest(
        task=task,
        settings=settings,
        seeds={"train": seed},
        inputs=inputs,
        steps=history.steps,
        first_loss=history.first_loss,
        final_loss=history.final_loss,
        **extra,
    )
    save_adapter(model, out_dir, manifest)
    checkpoint.remove(checkpoint_dir)
