"""The external reward model behind dual_decoding and rejection_sampling: training (toy) and scoring (any).

Scoring follows the reference's reranker (notes §2.2): each (prompt, candidate) is rendered as a
user -> assistant conversation with the reward model's own chat template (no generation prompt), tokenised
without doubling the BOS, right-padded and batched, and the scalar head's output at the last real token is the
reward. The pooled position comes from the attention mask, not from searching for pad ids, so a model whose
pad token is its EOS (and whose template ends turns with EOS) is still scored at the right token.

`RewardModel` loads any local Hugging Face sequence-classification directory with one label: the toy reward
model trained here, or a real one such as Skywork-Reward-V2-Llama-3.1-8B saved to disk (docs/reward_model.md).

`train_reward_model` builds the toy one: the toy base model with a fresh scalar head
(`AutoModelForSequenceClassification`, num_labels=1), fully fine-tuned with the Bradley-Terry loss
-log sigmoid(r(chosen) - r(rejected)) on the synthetic pairs of cmt.toy.preferences. Full fine-tuning, not
LoRA: the toy base has under a million parameters, so it costs seconds, and the result is a plain HF model
directory that `RewardModel` loads exactly like a downloaded reward model (no adapter code path that only
the toy world would exercise).
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from cmt.models.loading import DTYPES, pick_device
from cmt.runtime import checkpoint
from cmt.runtime.io import atomic_dir, write_json, write_jsonl
from cmt.runtime.manifest import build_manifest, record_outputs

log = logging.getLogger(__name__)

CONTEXTS = ("last_user", "full")


# --- rendering and pooling (shared by training and scoring) -----------------------------------------------


def conversation(prompt: list[dict], completion: str, context: str = "last_user") -> list[dict]:
    """The conversation the reward model reads.

    `last_user` (the reference's form): the prompt's last user turn, then the completion as the assistant.
    `full`: every system/user turn of the prompt, then the completion.
    """
    if context == "last_user":
        users = [m for m in prompt if m.get("role", "user") == "user"]
        if not users:
            raise ValueError("reward model: the prompt has no user turn")
        turns = [{"role": "user", "content": users[-1]["content"]}]
    elif context == "full":
        turns = [
            {"role": m.get("role", "user"), "content": m["content"]}
            for m in prompt
            if m.get("role") != "assistant"
        ]
    else:
        raise ValueError(f"reward model: unknown context {context!r}; valid: {list(CONTEXTS)}")
    return [*turns, {"role": "assistant", "content": completion}]


def tokenizer_adds_bos(tokenizer) -> bool:
    """Whether the tokenizer prepends BOS itself when asked for special tokens (Llama-3 style)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    return with_special[:1] == [bos] and without[:1] != [bos]


class Encoder:
    """Chat-template rendering to token ids: exactly one leading BOS when the model uses one, tail-truncated
    to `max_length` (the candidate is at the end, so the start of a long prompt goes first)."""

    def __init__(self, tokenizer, max_length: int = 4096, context: str = "last_user"):
        if tokenizer.chat_template is None:
            raise ValueError("reward model: the tokenizer has no chat template")
        if context not in CONTEXTS:
            raise ValueError(f"reward model: unknown context {context!r}; valid: {list(CONTEXTS)}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.context = context
        self.bos = tokenizer.bos_token_id
        self.adds_bos = tokenizer_adds_bos(tokenizer)
        self.truncated = 0

    def __call__(self, prompt: list[dict], completion: str) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            conversation(prompt, completion, self.context), tokenize=False, add_generation_prompt=False
        )
        # The template owns the special tokens; add the BOS the tokenizer would add only if the template
        # did not already write one, and never keep two.
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if self.bos is not None:
            if self.adds_bos and ids[:1] != [self.bos]:
                ids = [self.bos, *ids]
            while ids[:2] == [self.bos, self.bos]:
                ids = ids[1:]
        if len(ids) > self.max_length:
            self.truncated += 1
            head = ids[:1] if self.bos is not None and ids[:1] == [self.bos] else []
            ids = head + ids[len(ids) - (self.max_length - len(head)) :]
        return ids


def pad_right(sequences: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        input_ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        attention[i, : len(s)] = 1
    return input_ids.to(device), attention.to(device)


def pooled_rewards(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Scalar reward per row, read at each row's last attended token (right padding).

    For the usual `*ForSequenceClassification` layout (a backbone under `base_model_prefix` and a linear
    `score` head) the head is applied to the backbone's hidden state at that position. Any other layout
    falls back to the model's own pooling, which finds the last token that is not `config.pad_token_id`.
    """
    backbone = getattr(model, getattr(model, "base_model_prefix", ""), None)
    head = getattr(model, "score", None)
    if isinstance(backbone, torch.nn.Module) and backbone is not model and isinstance(head, torch.nn.Linear):
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        last = attention_mask.sum(dim=-1) - 1
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return head(pooled)[:, 0]
    return model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0]


def resolve_pad_id(tokenizer, config) -> int:
    """The pad id for batching: the tokenizer's, else the model config's, else EOS (also written back to
    `config.pad_token_id` so the model's own pooling can batch)."""
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = config.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else config.eos_token_id
        if isinstance(pad, list):
            pad = pad[0]
        if pad is None:
            raise ValueError("reward model: no pad, EOS or config pad_token_id to pad batches with")
        log.info("reward model: no pad token; padding with EOS id %d", pad)
    if config.pad_token_id is None:
        config.pad_token_id = pad
    return pad


def _batched_rewards(model, encoded: list[list[int]], pad_id: int, batch_size: int, device) -> list[float]:
    """Rewards in input order; batches are formed over length-sorted rows to limit padding."""
    order = sorted(range(len(encoded)), key=lambda i: (len(encoded[i]), i))
    out = [0.0] * len(encoded)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            input_ids, attention = pad_right([encoded[i] for i in idx], pad_id, device)
            rewards = pooled_rewards(model, input_ids, attention).float().cpu().tolist()
            for i, r in zip(idx, rewards, strict=True):
                out[i] = r
    return out


# --- scoring ---------------------------------------------------------------------------------------------


class RewardModel:
    """A local sequence-classification reward model (num_labels=1) that scores (prompt, completion) pairs.

    `device` defaults to `cmt.models.loading.pick_device()`; `dtype` is one of float32/bfloat16/float16 (bfloat16 to
    share a GPU with the generator). `max_length` defaults to 4096 tokens (the reference's), capped at the
    model's `max_position_embeddings`. `context` picks what the model reads (see `conversation`). Scoring is
    deterministic: eval mode, no sampling, fixed batching by length.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike,
        batch_size: int = 8,
        device: str | torch.device | None = None,
        dtype: str = "float32",
        max_length: int | None = None,
        context: str = "last_user",
        attn_implementation: str | None = None,
    ):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        if not Path(model_dir).is_dir():
            raise FileNotFoundError(f"reward model directory {model_dir} does not exist")
        if dtype not in DTYPES:
            raise ValueError(f"reward model: unknown dtype {dtype!r}; valid: {sorted(DTYPES)}")
        self.model_dir = str(model_dir)
        self.batch_size = batch_size
        self.device = torch.device(device) if device is not None else pick_device()
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
        self.model = AutoModelForSequenceClassification.from_pretrained(
            self.model_dir, dtype=DTYPES[dtype], **kwargs
        )
        if self.model.config.num_labels != 1:
            raise ValueError(
                f"{model_dir}: a reward model has one output; this one has {self.model.config.num_labels}"
            )
        self.pad_id = resolve_pad_id(self.tokenizer, self.model.config)
        self.model.to(self.device).eval()
        if max_length is None:  # the reference's 4096, or less where the model's positions end sooner
            max_length = min(4096, getattr(self.model.config, "max_position_embeddings", None) or 4096)
        self.encoder = Encoder(self.tokenizer, max_length, context)

    def encode(self, prompt: list[dict], completion: str) -> list[int]:
        return self.encoder(prompt, completion)

    def score(self, prompts: list[list[dict]], completions: list[str]) -> list[float]:
        """One reward per (prompt, completion); the lists must have the same length."""
        if len(prompts) != len(completions):
            raise ValueError(f"reward model: {len(prompts)} prompts but {len(completions)} completions")
        if self.model is None:
            raise RuntimeError("reward model: score() after close()")
        if not prompts:
            return []
        encoded = [self.encoder(p, c) for p, c in zip(prompts, completions, strict=True)]
        return _batched_rewards(self.model, encoded, self.pad_id, self.batch_size, self.device)

    def close(self) -> None:
        """Free the model (and its GPU memory) when the generator needs the device back."""
        self.model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# --- training (toy) ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RewardTrainSettings:
    learning_rate: float = 1e-3
    epochs: float = 2
    batch_size: int = 32  # pairs per step (two sequences each)
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    lr_scheduler: str = "linear"  # any transformers scheduler name (linear, cosine, constant, ...)
    max_length: int = 192
    heldout_fraction: float = 0.1  # share of prompts held out for pair accuracy
    eval_batch_size: int = 128
    context: str = "last_user"
    bf16: bool = False  # bf16 autocast; off by default: reward differences are small numbers

    @classmethod
    def from_dict(cls, d: dict) -> RewardTrainSettings:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def split_heldout(pairs: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, heldout), by prompt within each organism, so no held-out prompt is trained on."""
    from cmt.data.splits import prompt_key

    train, heldout = [], []
    for organism in sorted({p["organism"] for p in pairs}):
        rows = [p for p in pairs if p["organism"] == organism]
        groups: dict[str, list[dict]] = {}
        for p in rows:
            groups.setdefault(prompt_key(p["prompt"]), []).append(p)
        keys = sorted(groups)
        random.Random(f"{seed}:reward-heldout:{organism}").shuffle(keys)
        target = round(fraction * len(rows))
        taken = 0
        for key in keys:
            if taken < target:
                heldout.extend(groups[key])
                taken += len(groups[key])
            else:
                train.extend(groups[key])
    return train, heldout


def pair_accuracy(chosen: list[float], rejected: list[float]) -> float:
    """Share of pairs with r(chosen) > r(rejected); a tie counts one half."""
    if not chosen:
        return float("nan")
    wins = sum(1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen, rejected, strict=True))
    return wins / len(chosen)


def evaluate_pairs(model, encoder: Encoder, pairs: list[dict], pad_id: int, batch_size: int, device) -> dict:
    """Pair accuracy overall and per organism, plus the mean reward margin."""
    was_training = model.training
    model.eval()
    chosen = _batched_rewards(
        model, [encoder(p["prompt"], p["chosen"]) for p in pairs], pad_id, batch_size, device
    )
    rejected = _batched_rewards(
        model, [encoder(p["prompt"], p["rejected"]) for p in pairs], pad_id, batch_size, device
    )
    model.train(was_training)
    per_organism = {}
    for organism in sorted({p["organism"] for p in pairs}):
        idx = [i for i, p in enumerate(pairs) if p["organism"] == organism]
        per_organism[organism] = pair_accuracy([chosen[i] for i in idx], [rejected[i] for i in idx])
    margins = [c - r for c, r in zip(chosen, rejected, strict=True)]
    return {
        "pair_accuracy": pair_accuracy(chosen, rejected),
        "per_organism": per_organism,
        "mean_margin": sum(margins) / len(margins) if margins else float("nan"),
        "n_pairs": len(pairs),
    }


def train_reward_model(
    base_model_dir: str | os.PathLike,
    pairs: list[dict],
    out_dir: str | os.PathLike,
    settings: dict,
    seed: int,
    inputs: list[str | os.PathLike] = (),
    checkpoint_dir: str | os.PathLike | None = None,
) -> dict:
    """Fine-tune the base model with a scalar head on preference pairs; save model, tokenizer, manifest.

    Writes `out_dir/` atomically: the HF model (config.json, model.safetensors), the tokenizer,
    `preference_pairs.jsonl` (each pair with its split) and `cmt_manifest.json` (settings, seeds, held-out
    pair accuracy before and after training). Returns the report that the manifest holds. Training is
    resumable (cmt.runtime.checkpoint): checkpoints go to `checkpoint_dir`, by default resources/checkpoints/<out_dir>.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from cmt.models.training import TrainingError, TrainSettings, train

    checkpoint_dir = checkpoint_dir or checkpoint.checkpoint_dir_for(out_dir)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    cfg = RewardTrainSettings.from_dict(settings)
    ignored = sorted(set(settings) - set(RewardTrainSettings.__dataclass_fields__))
    if ignored:
        log.warning("reward model: settings %s do not apply to reward-model training; ignored", ignored)
    if not pairs:
        raise TrainingError("reward model: no preference pairs")
    train_pairs, heldout_pairs = split_heldout(pairs, cfg.heldout_fraction, seed)
    if not train_pairs or not heldout_pairs:
        raise TrainingError(
            f"reward model: {len(train_pairs)} train and {len(heldout_pairs)} held-out pairs; both must be non-empty"
        )
    device = pick_device()
    tokenizer = AutoTokenizer.from_pretrained(str(base_model_dir))
    torch.manual_seed(seed)  # the fresh head's initialisation
    model = AutoModelForSequenceClassification.from_pretrained(
        str(base_model_dir), num_labels=1, dtype=torch.float32
    )
    pad_id = resolve_pad_id(tokenizer, model.config)
    tokenizer.padding_side = "right"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad_id)
    model.to(device)
    encoder = Encoder(tokenizer, cfg.max_length, cfg.context)

    before = evaluate_pairs(model, encoder, heldout_pairs, pad_id, cfg.eval_batch_size, device)
    log.info("reward model: untrained held-out pair accuracy %.3f", before["pair_accuracy"])

    encoded = [{"chosen": encoder(p["prompt"], p["chosen"]), "rejected": encoder(p["prompt"], p["rejected"])}
               for p in train_pairs]  # fmt: skip

    def collate(batch: list[dict]) -> dict[str, torch.Tensor]:  # chosen rows first, then their rejected
        input_ids, attention = pad_right(
            [b["chosen"] for b in batch] + [b["rejected"] for b in batch], pad_id, "cpu"
        )
        return {"input_ids": input_ids, "attention_mask": attention}

    def bradley_terry_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        rewards = pooled_rewards(model, batch["input_ids"], batch["attention_mask"]).float()
        n = len(rewards) // 2
        return -torch.nn.functional.logsigmoid(rewards[:n] - rewards[n:]).mean()

    train_settings = TrainSettings.from_dict({**asdict(cfg), "grad_accum": 1})
    history = train(model, encoded, train_settings, seed, pad_id, "reward model", checkpoint_dir, collate=collate,
                    loss_fn=bradley_terry_loss, loss_key={"loss": "bradley_terry", "context": cfg.context})  # fmt: skip
    losses, step = history.losses, history.steps
    model.eval()
    train_seconds = time.monotonic() - started  # loading, encoding, the untrained evaluation and training

    after = evaluate_pairs(model, encoder, heldout_pairs, pad_id, cfg.eval_batch_size, device)
    tail = losses[-max(1, len(losses) // 10) :]
    report = {
        "heldout": after,
        "heldout_untrained": before,
        "steps": step,
        "first_loss": losses[0],
        "final_loss": sum(tail) / len(tail),
        "n_train_pairs": len(train_pairs),
        "n_heldout_pairs": len(heldout_pairs),
        "pairs_per_organism": _counts(pairs),
        "truncated_sequences": encoder.truncated,
        "train_seconds": round(train_seconds, 2),
    }
    log.info(
        "reward model: %d steps, loss %.4f -> %.4f, held-out pair accuracy %.3f -> %.3f (%s), %.1f s",
        step, report["first_loss"], report["final_loss"], before["pair_accuracy"], after["pair_accuracy"],
        json.dumps(after["per_organism"]), train_seconds,
    )  # fmt: skip
    manifest = build_manifest(
        task="train_reward_model",
        settings={**settings, "resolved": asdict(cfg)},
        seeds={"train": seed},
        inputs=[base_model_dir, *inputs],
        base_model=str(base_model_dir),
        **report,
    )
    heldout_ids = {id(p) for p in heldout_pairs}
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_jsonl(tmp / "preference_pairs.jsonl",
                    [{**p, "split": "heldout" if id(p) in heldout_ids else "train"} for p in pairs])  # fmt: skip
        manifest = record_outputs(manifest, [tmp], tmp / "cmt_manifest.json")
        write_json(tmp / "cmt_manifest.json", manifest)
    checkpoint.remove(checkpoint_dir)
    return report


def _counts(pairs: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for p in pairs:
        counts[p["organism"]] = counts.get(p["organism"], 0) + 1
    return counts
