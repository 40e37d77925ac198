"""Supervised training on chat examples: full-parameter pretraining of the toy base and LoRA SFT.

Loss covers assistant tokens only for SFT (the prompt is masked), or every token for pretraining.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch

from cmt.runlog import progress

log = logging.getLogger(__name__)

IGNORE = -100


class TrainingError(RuntimeError):
    pass


@dataclass(frozen=True)
class TrainSettings:
    learning_rate: float
    epochs: float
    batch_size: int
    grad_accum: int = 1
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    lr_scheduler: str = "linear"
    max_length: int = 1024
    bf16: bool = True

    @classmethod
    def from_dict(cls, d: dict) -> TrainSettings:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass
class TrainHistory:
    steps: int = 0
    losses: list[float] = field(default_factory=list)

    @property
    def first_loss(self) -> float:
        return self.losses[0] if self.losses else float("nan")

    @property
    def final_loss(self) -> float:
        tail = self.losses[-max(1, len(self.losses) // 10) :]
        return sum(tail) / len(tail) if tail else float("nan")


def encode_chat(tokenizer, messages: list[dict], max_length: int, assistant_only: bool = True) -> dict:
    """Token ids and labels for one conversation whose last turn is the assistant's.

    The prompt part is found by rendering the conversation without its last turn plus the generation cue;
    that rendering must be a token prefix of the full one, which holds for every chat template in use.
    """
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    labels = list(ids)
    if assistant_only:
        if messages[-1]["role"] != "assistant":
            raise ValueError("the last message of a training example must be the assistant's")
        prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if ids[: len(prompt_ids)] != prompt_ids:
            raise ValueError("chat template: the prompt rendering is not a token prefix of the conversation")
        labels[: len(prompt_ids)] = [IGNORE] * len(prompt_ids)
    return {"input_ids": ids[:max_length], "labels": labels[:max_length]}


def _collate(batch: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(b["input_ids"]) for b in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for i, b in enumerate(batch):
        n = len(b["input_ids"])
        input_ids[i, :n] = torch.tensor(b["input_ids"])
        labels[i, :n] = torch.tensor(b["labels"])
        attention[i, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}


def train(
    model, examples: list[dict], settings: TrainSettings, seed: int, pad_id: int, desc: str
) -> TrainHistory:
    """Train `model` in place on encoded examples; raises TrainingError on a non-finite loss."""
    from transformers import get_scheduler

    if not examples:
        raise TrainingError("no training examples")
    if all(all(label == IGNORE for label in e["labels"]) for e in examples):
        raise TrainingError("every training label is masked; nothing to learn")
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    shuffler = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        examples,
        batch_size=settings.batch_size,
        shuffle=True,
        generator=shuffler,
        collate_fn=lambda b: _collate(b, pad_id),
    )
    steps_per_epoch = math.ceil(len(loader) / settings.grad_accum)
    total_steps = max(1, math.ceil(steps_per_epoch * settings.epochs))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    scheduler = get_scheduler(
        settings.lr_scheduler,
        optimizer,
        num_warmup_steps=round(settings.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=settings.bf16)
    history = TrainHistory()
    model.train()
    bar = progress(total=total_steps, desc=desc, unit="step")
    micro = 0
    while history.steps < total_steps:
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast:
                loss = model(**batch).loss
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"{desc}: non-finite loss {loss.item()} at step {history.steps}; nothing saved"
                )
            (loss / settings.grad_accum).backward()
            micro += 1
            if micro % settings.grad_accum:
                continue
            torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            history.steps += 1
            history.losses.append(loss.item())
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}", refresh=False)
            bar.update(1)
            if history.steps >= total_steps:
                break
    bar.close()
    model.eval()
    log.info("%s: %d steps, loss %.4f -> %.4f", desc, history.steps, history.first_loss, history.final_loss)
    return history


def lora_config(settings: dict):
    from peft import LoraConfig

    return LoraConfig(
        r=settings["r"],
        lora_alpha=settings["alpha"],
        lora_dropout=settings["dropout"],
        target_modules=settings["target_modules"],
        bias="none",
        task_type="CAUSAL_LM",
    )
