"""Phase 3 for the regularization methods (ACT, BCT): continue the organism's LoRA on the act_bct pairs.

`settings` is the model's Phase-3 block plus the method's subtree:

    {"dtype": "float32", "train": {...phase3...}, "method": {...methods.<name>...},
     "generation": {"batch_size": 64, "max_new_tokens": 48}}   # generation: only bct variant sft uses it

`method.train`, when present, overrides keys of `train` for this method only (the reference trains ACT/BCT for
3 epochs where label methods get 2).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from cmt.data.splits import load_split, training_messages
from cmt.methods import losses as cl
from cmt.methods.registry import get_method, method_names
from cmt.models import training
from cmt.models.loading import base_load_args, load_model, load_tokenizer
from cmt.models.training import TrainingError
from cmt.phases.adapter import finish_adapter, train_adapter
from cmt.runtime import checkpoint
from cmt.runtime.io import DataError
from cmt.runtime.numerics import autocast_bf16

log = logging.getLogger(__name__)


def get_consistency_method(name: str):
    losses = method_names(phase3_loss=True)
    if name not in losses:
        raise ValueError(f"{name!r} is not a consistency-loss method; valid: {losses}")
    return get_method(name)


def load_pairs(data_dir: str | Path):
    """(clean, wrapped) Examples zipped by line; rows carrying an `_id` must carry the same one."""
    clean = load_split(Path(data_dir), "act_bct_clean")
    wrapped = load_split(Path(data_dir), "act_bct_wrapped")
    if len(clean) != len(wrapped):
        raise DataError(
            f"{data_dir}: act_bct_clean has {len(clean)} rows but act_bct_wrapped has {len(wrapped)}; "
            "they are paired by line"
        )
    for i, (c, w) in enumerate(zip(clean, wrapped, strict=True)):
        if "_id" in c.meta and "_id" in w.meta and c.meta["_id"] != w.meta["_id"]:
            raise DataError(
                f"{data_dir}: pair {i} has _id {c.meta['_id']!r} (clean) but {w.meta['_id']!r} (wrapped)"
            )
    return clean, wrapped


def encode_pairs(tokenizer, clean, wrapped, max_length: int) -> list[dict]:
    return [
        {
            "clean": cl.encode_side(tokenizer, training_messages(c), max_length),
            "wrapped": cl.encode_side(tokenizer, training_messages(w), max_length),
        }
        for c, w in zip(clean, wrapped, strict=True)
    ]


def batch_loss(
    model, module, method_settings: dict, clean: cl.SideBatch, wrapped: cl.SideBatch, train: bool = True
):
    """The method's loss on one batch: clean pass (eval, no_grad) as target, wrapped pass with the gradient."""
    c, w = cl.paired_forward(model, clean, wrapped, module.NEEDS_HIDDEN, module.NEEDS_LOGITS, train=train)
    alignment = cl.align(method_settings["alignment"], clean, wrapped)
    return module.loss(c, w, alignment, method_settings)


@torch.no_grad()
def mean_loss(
    model, module, method_settings: dict, pairs: list[dict], batch_size: int, pad_id: int, bf16: bool
) -> float:
    """The loss over every pair with both passes in eval mode (a deterministic before/after measurement),
    weighted by each batch's aligned positions."""
    device = next(model.parameters()).device
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16)
    total, weight = 0.0, 0
    for start in range(0, len(pairs), batch_size):
        clean, wrapped = cl.collate_pairs(pairs[start : start + batch_size], pad_id)
        clean, wrapped = clean.to(device), wrapped.to(device)
        n = cl.align(method_settings["alignment"], clean, wrapped).count
        if n == 0:
            continue
        with autocast:
            loss = batch_loss(model, module, method_settings, clean, wrapped, train=False)
        total += loss.item() * n
        weight += n
    model.eval()
    return total / weight if weight else float("nan")


def train_consistency(
    model,
    module,
    method_settings: dict,
    pairs: list[dict],
    settings: training.TrainSettings,
    seed: int,
    pad_id: int,
    desc: str,
    checkpoint_dir=None,
) -> training.TrainHistory:
    """Train `model` in place with the method's paired loss (cmt.models.training.train: same optimizer, schedule,
    non-finite-loss guard, and resumable checkpoints when `checkpoint_dir` is given)."""
    if not pairs:
        raise TrainingError(f"{desc}: no training pairs")
    return training.train(
        model,
        pairs,
        settings,
        seed,
        pad_id,
        desc,
        checkpoint_dir,
        collate=lambda b: cl.collate_pairs(b, pad_id),
        loss_fn=lambda m, batch: batch_loss(m, module, method_settings, *batch, train=True),
        loss_key={"method": module.SPEC.name, "settings": method_settings},
    )


def _sft_targets(model, tokenizer, clean, wrapped, settings: dict, method_settings: dict, seed: int):
    """BCT as in the literature: wrapped prompt + the organism's greedy reply to the clean prompt."""
    from cmt.generation import SamplingParams, derive_seed
    from cmt.generation.hf import HFGenerator

    generation = settings.get("generation") or {}
    max_new_tokens = method_settings.get("max_new_tokens") or generation.get("max_new_tokens")
    if not max_new_tokens:
        raise ValueError(
            "bct variant sft: set methods.bct.max_new_tokens or pass settings.generation.max_new_tokens"
        )
    generator = HFGenerator(
        model, tokenizer, batch_size=generation.get("batch_size", 64), desc="bct sft: clean replies"
    )
    params = SamplingParams(temperature=0.0, max_new_tokens=int(max_new_tokens))
    completions = generator.generate([c.prompt for c in clean], 1, params, derive_seed(seed, "bct_sft"))
    conversations, replies = [], []
    for c, w, (reply,) in zip(clean, wrapped, completions, strict=True):
        replies.append(
            {"_id": c.meta.get("_id", c.prompt_id), "text": reply.text, "finished": reply.finished}
        )
        if reply.text.strip():
            conversations.append([*w.prompt, {"role": "assistant", "content": reply.text}])
    return conversations, replies, params


def retrain_consistency(
    method: str,
    model_dir: str,
    organism_adapter: str,
    data_dir: str,
    out_dir: str,
    settings: dict,
    seed: int,
    checkpoint_dir: str | None = None,
) -> None:
    """Checkpoints go to `checkpoint_dir`, by default resources/checkpoints/<out_dir> (cmt.runtime.checkpoint)."""
    checkpoint_dir = checkpoint_dir or checkpoint.checkpoint_dir_for(out_dir)
    module = get_consistency_method(method)
    raw_method = dict(settings.get("method") or {})
    train_overrides = raw_method.pop("train", None) or {}
    method_settings = module.resolve(raw_method)
    train_dict = {**settings["train"], **train_overrides}
    train_settings = training.TrainSettings.from_dict(train_dict)
    variant = method_settings.get("variant", "loss")
    log.info("%s (%s): %s; train %s", method, variant, method_settings, train_dict)

    clean, wrapped = load_pairs(data_dir)
    tokenizer = load_tokenizer(model_dir)
    model = load_model(
        model_dir, adapter=organism_adapter, trainable_adapter=True, **base_load_args(settings)
    )
    inputs = [
        Path(data_dir) / "act_bct_clean.jsonl",
        Path(data_dir) / "act_bct_wrapped.jsonl",
        organism_adapter,
    ]
    common = {
        "method": method,
        "method_settings": method_settings,
        "train_settings": train_dict,
        "n_pairs": len(clean),
    }

    if variant == "sft":
        conversations, replies, params = _sft_targets(
            model, tokenizer, clean, wrapped, settings, method_settings, seed
        )
        log.info("bct sft: %d of %d clean replies are non-empty", len(conversations), len(replies))
        if not conversations:
            raise TrainingError("bct sft: every greedy reply to a clean prompt is empty; nothing to train on")
        history = train_adapter(
            model, tokenizer, conversations, train_dict, seed, f"retrain {method} sft", checkpoint_dir
        )
        extra = {
            "n_labels": len(conversations),
            "sft_decoding": params.to_dict(),
            "sft_replies": replies,
        }
    else:
        pairs = encode_pairs(tokenizer, clean, wrapped, train_settings.max_length)
        # Counted in file order, batched as in training (the reference window depends on the batch).
        bs, pad_id = train_settings.batch_size, tokenizer.pad_token_id
        batches = [cl.collate_pairs(pairs[i : i + bs], pad_id) for i in range(0, len(pairs), bs)]
        n_aligned = sum(cl.align(method_settings["alignment"], c, w).count for c, w in batches)
        if n_aligned == 0:
            raise TrainingError(
                f"{method}: no pair has an aligned position (empty response spans?); nothing to train on"
            )
        measure = dict(
            batch_size=train_settings.batch_size,
            pad_id=tokenizer.pad_token_id,
            bf16=autocast_bf16(train_settings.bf16, next(model.parameters()).device.type),
        )
        before = mean_loss(model, module, method_settings, pairs, **measure)
        if not math.isfinite(before):
            raise TrainingError(f"{method}: non-finite loss {before} before training; nothing saved")
        history = train_consistency(
            model,
            module,
            method_settings,
            pairs,
            train_settings,
            seed,
            tokenizer.pad_token_id,
            f"retrain {method}",
            checkpoint_dir,
        )
        epoch_means = history.epoch_means
        after = mean_loss(model, module, method_settings, pairs, **measure)
        if not math.isfinite(after):
            raise TrainingError(f"{method}: non-finite loss {after} after training; nothing saved")
        log.info("%s: eval-mode loss %.4g -> %.4g", method, before, after)
        extra = {
            "n_aligned_positions": n_aligned,
            "epoch_mean_losses": epoch_means,
            "mean_loss_first_epoch": epoch_means[0],
            "mean_loss_last_epoch": epoch_means[-1],
            "eval_loss_before": before,
            "eval_loss_after": after,
        }
    finish_adapter(
        model,
        out_dir,
        checkpoint_dir,
        history,
        task="retrain_consistency",
        settings=settings,
        seed=seed,
        inputs=inputs,
        **common,
        **extra,
    )
