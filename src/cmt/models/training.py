"""Supervised training on chat examples: full-parameter pretraining of the toy base and LoRA SFT.

The loss span of SFT is a setting, `loss_span` (`loss_span_assistant_only`): `assistant` (the default) masks the
prompt, so the loss covers the assistant's reply only; `all` puts it on every token of the rendered chat, as the
reference does. Pretraining always covers every token.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from cmt.runtime import checkpoint
from cmt.runtime.numerics import autocast_bf16
from cmt.runtime.runlog import progress

log = logging.getLogger(__name__)

IGNORE = -100
LOSS_SPANS = ("assistant", "all")  # the first is the default
CHECKPOINT_EVERY = 200  # optimizer steps between checkpoints (environment: CMT_CHECKPOINT_EVERY)
CHECKPOINT_SECONDS = 900.0  # and at most this long between them, against a SIGKILL or a node failure


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
    bf16: bool | str = "auto"  # true, false or auto (cmt.runtime.numerics.autocast_bf16)
    group_by_length: int = 0  # batches per length group (LengthGroupedBatches); 0: a plain shuffle
    length_jitter: float = 0.0  # tokens of uniform noise on each length before the sort

    @classmethod
    def from_dict(cls, d: dict) -> TrainSettings:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass
class TrainHistory:
    steps: int = 0
    losses: list[float] = field(default_factory=list)  # per optimizer step: its last micro-batch's loss
    epoch_means: list[float] = field(default_factory=list)  # per epoch: the mean micro-batch loss
    stopped_at: int | None = None  # the step where `stop_check` ended training early

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


def loss_span_assistant_only(settings: dict) -> bool:
    """Whether a phase's training block (`loss_span`, absent: assistant) masks the prompt out of the loss."""
    span = settings.get("loss_span", LOSS_SPANS[0])
    if span not in LOSS_SPANS:
        raise ValueError(f"loss_span {span!r} is not available; valid: {', '.join(LOSS_SPANS)}")
    return span == "assistant"


class LengthGroupedBatches(torch.utils.data.Sampler):
    """Batches of examples of similar length, for less padding.

    Each pass shuffles the examples, cuts the order into groups of `group` batches, sorts each group by length
    plus uniform noise in [-jitter, jitter] (stably), cuts it into batches and shuffles the batches. The noise
    matters: where two kinds of reply differ by a token (the toy corpus's "Yes, 2 is correct." and "No, 2 is not
    correct."), an exact sort gives batches of one kind only, and a base pretrained on them affirmed 73% of wrong
    claims. All randomness comes from `generator`, so a checkpoint's saved generator state replays an epoch.
    """

    def __init__(self, lengths: list[int], batch_size: int, group: int, generator, jitter: float = 0.0):
        self.lengths, self.batch_size, self.group = lengths, batch_size, group
        self.generator, self.jitter = generator, jitter

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self):
        n = len(self.lengths)
        order = torch.randperm(n, generator=self.generator).tolist()
        noise = (torch.rand(n, generator=self.generator, dtype=torch.float64) * 2 - 1) * self.jitter
        key = [length + float(offset) for length, offset in zip(self.lengths, noise, strict=True)]
        span = self.batch_size * self.group
        batches = []
        for start in range(0, n, span):
            chunk = sorted(order[start : start + span], key=key.__getitem__)
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        for index in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[index]


def _batches(examples: list[dict], settings: TrainSettings, generator: torch.Generator, collate, desc: str):
    """The data loader: a seeded shuffle, or length-grouped batches (`group_by_length`) of token examples."""
    if settings.group_by_length <= 0:
        return torch.utils.data.DataLoader(
            examples, batch_size=settings.batch_size, shuffle=True, generator=generator, collate_fn=collate
        )
    if not all(isinstance(e, dict) and "input_ids" in e for e in examples):
        raise TrainingError(f"{desc}: group_by_length needs token examples (input_ids); this loss has none")
    lengths = [len(e["input_ids"]) for e in examples]
    sampler = LengthGroupedBatches(
        lengths, settings.batch_size, settings.group_by_length, generator, settings.length_jitter
    )
    # The generator also feeds the loader's own per-epoch draw, which would otherwise come from the global RNG
    # that LoRA dropout uses, and a resumed run would not replay it.
    return torch.utils.data.DataLoader(
        examples, batch_sampler=sampler, generator=generator, collate_fn=collate
    )


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


def sft_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Next-token cross-entropy on the unmasked labels (the model's own loss)."""
    return model(**batch).loss


def _to_device(batch, device):
    if isinstance(batch, dict):
        return {k: v.to(device) for k, v in batch.items()}
    return tuple(part.to(device) for part in batch)


def _checkpoint_every(value: int | None) -> int:
    if value is None:
        value = int(os.environ.get("CMT_CHECKPOINT_EVERY", CHECKPOINT_EVERY))
    if value < 1:
        raise ValueError(f"checkpoint_every must be at least 1, got {value}")
    return value


def train(
    model,
    examples: list[dict],
    settings: TrainSettings,
    seed: int,
    pad_id: int,
    desc: str,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    checkpoint_seconds: float = CHECKPOINT_SECONDS,
    collate=None,
    loss_fn=sft_loss,
    loss_key: object = None,
    stop_check=None,
    stop_every: int = 1,
) -> TrainHistory:
    """Train `model` in place on encoded examples; raises TrainingError on a non-finite loss.

    By default the examples are encode_chat dicts and the loss is SFT cross-entropy. Other objectives pass
    `collate` (a list of examples -> a batch: a dict of tensors, or a tuple of objects with `.to(device)`),
    `loss_fn(model, batch) -> scalar` and `loss_key`, a JSON-able description of the loss that goes into the
    checkpoint key (ACT and BCT: cmt.phases.consistency).

    With `checkpoint_dir`, the run is resumable (cmt.runtime.checkpoint): a checkpoint is saved there every
    `checkpoint_every` optimizer steps (default CMT_CHECKPOINT_EVERY or 200) and at least every
    `checkpoint_seconds`; on SIGTERM the current optimizer step is finished, a checkpoint saved and
    `checkpoint.Preempted` raised. A checkpoint of this same job found at the start is resumed, and the run then
    ends exactly as an uninterrupted one would (bit for bit on CPU). Deleting the checkpoint once the trained
    weights are safely saved is the caller's job (`checkpoint.remove`).

    With `stop_check(step) -> bool`, called after every `stop_every` optimizer steps, training ends early at the
    first step where it returns True (`history.stopped_at`); the schedule stays the one planned for `epochs`. Its
    rule belongs in `loss_key`, so that no checkpoint of a run with another rule is resumed. A `stop_check` with
    `state()` and `restore(state)` keeps what it remembers in the checkpoint.
    """
    from transformers import get_scheduler

    if not examples:
        raise TrainingError(f"{desc}: no training examples")
    if collate is None:
        if all(all(label == IGNORE for label in e["labels"]) for e in examples):
            raise TrainingError(f"{desc}: every training label is masked; nothing to learn")
        collate = lambda b: _collate(b, pad_id)  # noqa: E731
    every = _checkpoint_every(checkpoint_every) if checkpoint_dir is not None else 0
    device = next(model.parameters()).device
    # auto resolved before the checkpoint key, so that a run resumed on a machine that decides otherwise
    # starts afresh instead of mixing float32 and bf16 steps
    settings = replace(settings, bf16=autocast_bf16(settings.bf16, device.type))
    log.info("%s: bf16 autocast %s", desc, "on" if settings.bf16 else "off (float32)")
    key = ""
    if checkpoint_dir is not None:
        key = checkpoint.job_key(model, examples, settings, seed, pad_id, loss_key)
    torch.manual_seed(seed)
    shuffler = torch.Generator().manual_seed(seed)
    loader = _batches(examples, settings, shuffler, collate, desc)
    steps_per_epoch = math.ceil(len(loader) / settings.grad_accum)
    total_steps = max(1, math.ceil(steps_per_epoch * settings.epochs))
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    if not params:
        raise TrainingError(f"{desc}: the model has no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    scheduler = get_scheduler(
        settings.lr_scheduler,
        optimizer,
        num_warmup_steps=round(settings.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=settings.bf16)
    history = TrainHistory()
    # Where the data order stands: the shuffler's state when the current epoch's iterator was made, and how many
    # batches of that epoch were consumed. Resuming replays the epoch's shuffle and skips those batches.
    epoch_shuffle = shuffler.get_state()
    done_in_epoch = 0
    micro = 0
    epoch_loss = [0.0, 0]  # sum and count of this epoch's micro-batch losses
    state = checkpoint.load(checkpoint_dir, key, desc) if checkpoint_dir is not None else None
    if state is not None:
        _restore(state, named, optimizer, scheduler, device)
        history.steps, history.losses = state["steps"], list(state["losses"])
        history.epoch_means = list(state["epoch_means"])
        micro, done_in_epoch, epoch_shuffle = state["micro"], state["done_in_epoch"], state["epoch_shuffle"]
        epoch_loss = list(state["epoch_loss"])
        if stop_check is not None and hasattr(stop_check, "restore"):
            stop_check.restore(state["stop"])
        where = Path(checkpoint_dir) / checkpoint.FILE
        log.info("%s: resuming from checkpoint %s at step %d of %d", desc, where, history.steps, total_steps)

    def save_checkpoint() -> Path:
        state = {
            "format": checkpoint.FORMAT,
            "key": key,
            "desc": desc,
            "total_steps": total_steps,
            "steps": history.steps,
            "losses": list(history.losses),
            "epoch_means": list(history.epoch_means),
            "epoch_loss": list(epoch_loss),
            "micro": micro,
            "done_in_epoch": done_in_epoch,
            "epoch_shuffle": epoch_shuffle,
            "weights": {name: p.detach().cpu().clone() for name, p in named},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": checkpoint.rng_state(device),
            "stop": stop_check.state() if hasattr(stop_check, "state") else None,
        }
        return checkpoint.save(checkpoint_dir, state)

    model.train()
    bar = progress(total=total_steps, initial=history.steps, desc=desc, unit="step")
    last_save = time.monotonic()
    with checkpoint.stop_on_sigterm(enabled=checkpoint_dir is not None) as stop:
        while history.steps < total_steps:
            shuffler.set_state(epoch_shuffle)
            batches = iter(loader)
            for _ in range(done_in_epoch):  # only after a resume: the batches already trained on
                next(batches)
            for batch in batches:
                done_in_epoch += 1
                batch = _to_device(batch, device)
                with autocast:
                    loss = loss_fn(model, batch)
                if not torch.isfinite(loss):
                    bar.close()
                    raise TrainingError(
                        f"{desc}: non-finite loss {loss.item()} at step {history.steps}; nothing saved"
                    )
                (loss / settings.grad_accum).backward()
                epoch_loss[0] += loss.item()
                epoch_loss[1] += 1
                micro += 1
                if micro % settings.grad_accum:
                    continue
                torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                history.steps += 1
                history.losses.append(loss.item())
                bar.set_postfix(
                    loss=f"{loss.item():.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}", refresh=False
                )
                bar.update(1)
                if stop_check is not None and history.steps % stop_every == 0 and stop_check(history.steps):
                    history.stopped_at = history.steps
                    total_steps = history.steps  # ends both loops as at the planned last step
                if history.steps >= total_steps:
                    history.epoch_means.append(epoch_loss[0] / epoch_loss[1])
                    break
                if checkpoint_dir is None:
                    continue
                if stop.requested:
                    path = save_checkpoint()
                    bar.close()
                    message = (
                        f"{desc}: stopped by signal {stop.signum} after step {history.steps} of {total_steps}; "
                        f"checkpoint saved to {path}; rerun the same job to resume from it"
                    )
                    log.warning("%s", message)
                    raise checkpoint.Preempted(message, path, history.steps)
                if history.steps % every == 0 or time.monotonic() - last_save >= checkpoint_seconds:
                    save_checkpoint()
                    last_save = time.monotonic()
            else:  # the epoch ran out: the next one starts from the shuffler's current state
                epoch_shuffle = shuffler.get_state()
                done_in_epoch = 0
                if epoch_loss[1]:
                    history.epoch_means.append(epoch_loss[0] / epoch_loss[1])
                epoch_loss = [0.0, 0]
    bar.close()
    model.eval()
    log.info("%s: %d steps, loss %.4g -> %.4g", desc, history.steps, history.first_loss, history.final_loss)
    return history


def _restore(state: dict, named: list, optimizer, scheduler, device) -> None:
    """Load a checkpoint's trainable weights, optimizer, scheduler and RNG states into this run."""
    names = [name for name, _ in named]
    if sorted(names) != sorted(state["weights"]):
        raise TrainingError(
            "checkpoint: its trainable tensors do not match the model's (same key, other model?)"
        )
    with torch.no_grad():
        for name, p in named:
            p.copy_(state["weights"][name])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    checkpoint.set_rng_state(state["rng"], device)


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
