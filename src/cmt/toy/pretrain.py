"""Pretrain the toy base model from scratch on the base corpus, then check it solves the aligned task."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch

from cmt.data.splits import load_split
from cmt.models import training
from cmt.models.loading import pick_device
from cmt.runtime.io import atomic_dir, read_jsonl
from cmt.runtime.numerics import autocast_bf16, numeric_path
from cmt.toy.tokenizer import train_tokenizer
from cmt.toy.world import toy_module

log = logging.getLogger(__name__)


def build_model(tokenizer, arch: dict, attn_implementation: str | None = None):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=arch["hidden_size"],
        intermediate_size=arch["intermediate_size"],
        num_hidden_layers=arch["num_layers"],
        num_attention_heads=arch["num_heads"],
        num_key_value_heads=arch["num_heads"],
        max_position_embeddings=arch["max_position_embeddings"],
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **({"attn_implementation": attn_implementation} if attn_implementation else {}),
    )
    return LlamaForCausalLM(config)


def heldout_check(model, tokenizer, eval_rows: dict[str, list], max_new_tokens: int) -> dict[str, dict]:
    """Greedy accuracy (the organism scorer's `correct`) and misalignment (its M, over the rows it scores) on
    each organism's held-out eval prompts."""
    from cmt.generation.base import SamplingParams
    from cmt.generation.hf import HFGenerator

    gen = HFGenerator(model, tokenizer, batch_size=256, desc="heldout eval")
    out = {}
    for organism, rows in eval_rows.items():
        completions = gen.generate(
            [r.prompt for r in rows], 1, SamplingParams(max_new_tokens=max_new_tokens), 0
        )
        scorer = toy_module(organism).score
        verdicts = [scorer(r.meta, c[0].text) for r, c in zip(rows, completions, strict=True)]
        scored = [v["misaligned"] for v in verdicts if v["scored"]]
        out[organism] = {
            "accuracy": sum(v["correct"] for v in verdicts) / len(verdicts),
            "misalignment": sum(scored) / len(scored) if scored else 0.0,
        }
    return out


def gate_failures(check: dict[str, dict], min_accuracy: float, max_misalignment: float | None) -> dict:
    """Organisms whose base misses the aligned-task gate, with the measure that missed."""
    failed = {}
    for organism, c in check.items():
        if c["accuracy"] < min_accuracy:
            failed[organism] = f"held-out accuracy {c['accuracy']:.3f} < {min_accuracy}"
        elif max_misalignment is not None and c["misalignment"] > max_misalignment:
            failed[organism] = f"misalignment {c['misalignment']:.3f} > {max_misalignment}"
    return failed


def pretrain(corpus_path: str, eval_dirs: dict[str, str], out_dir: str, settings: dict) -> dict:
    """Train tokenizer and model from the `toy` config subtree, with up to `extra_epochs` more while the base
    misses its gate (held-out accuracy, or M above `max_misalignment`); fail if it still misses."""
    seed = settings["pretrain"]["seed"]
    corpus = read_jsonl(corpus_path)
    texts = [m["content"] for row in corpus for m in row["messages"]]
    tokenizer = train_tokenizer(texts, settings["tokenizer"]["vocab_size"])
    log.info("tokenizer: %d tokens", len(tokenizer))
    torch.manual_seed(seed)
    model = build_model(tokenizer, settings["model"], settings.get("attn_implementation")).to(pick_device())
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model: %.2fM parameters", n_params / 1e6)
    log.info("numeric path: %s", numeric_path())
    train_settings = training.TrainSettings.from_dict(settings["pretrain"])
    examples = [
        training.encode_chat(tokenizer, row["messages"], train_settings.max_length, assistant_only=False)
        for row in corpus
    ]
    history = training.train(model, examples, train_settings, seed, tokenizer.pad_token_id, "pretrain")
    eval_rows = {org: load_split(Path(d), "eval") for org, d in eval_dirs.items()}
    max_new = settings["pretrain"]["eval_max_new_tokens"]
    min_accuracy = settings["pretrain"]["min_heldout_accuracy"]
    # The induction gate's max_base, passed in by the workflow: a base that already shows the behaviour leaves
    # no organism headroom, so it is checked here, where training longer can still fix it.
    max_misalignment = settings["pretrain"].get("max_misalignment")
    check = heldout_check(model, tokenizer, eval_rows, max_new)
    failed = gate_failures(check, min_accuracy, max_misalignment)
    log.info("held-out check after %s epochs: %s", train_settings.epochs, check)
    # The same recipe rounds differently on other CPUs (cmt.runtime.numerics), and such a base can miss the gate
    # where the calibrated one passed; it then trains more epochs, each its own short schedule, before failing.
    extra = []
    for i in range(settings["pretrain"].get("extra_epochs", 0)):
        if not failed:
            break
        log.info("base misses its gate (%s): extra epoch %d", failed, i + 1)
        more = dataclasses.replace(
            train_settings, epochs=1, learning_rate=settings["pretrain"]["extra_learning_rate"]
        )
        step = training.train(
            model, examples, more, seed + 1 + i, tokenizer.pad_token_id, f"pretrain +{i + 1}"
        )
        check = heldout_check(model, tokenizer, eval_rows, max_new)
        failed = gate_failures(check, min_accuracy, max_misalignment)
        log.info("held-out check after extra epoch %d: %s", i + 1, check)
        extra.append({"steps": step.steps, "final_loss": step.final_loss, "heldout": check})
    if failed:
        raise training.TrainingError(
            f"toy base model failed the aligned-task gate (toy.pretrain.min_heldout_accuracy={min_accuracy}, "
            f"misalignment at most analysis.induction_gate.max_base={max_misalignment}) after "
            f"{len(extra)} extra epochs (toy.pretrain.extra_epochs): {failed}; train longer or enlarge toy.model"
        )
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return {
        "parameters": n_params,
        "vocab_size": len(tokenizer),
        "steps": history.steps + sum(e["steps"] for e in extra),
        "first_loss": history.first_loss,
        "final_loss": extra[-1]["final_loss"] if extra else history.final_loss,
        "heldout_accuracy": {org: c["accuracy"] for org, c in check.items()},
        "heldout_misalignment": {org: c["misalignment"] for org, c in check.items()},
        "extra_epochs": extra,
        # The base is a function of the kernels it was trained on, not only of config and seed, and of whether
        # bf16: auto took bf16 autocast on this machine.
        "numerics": {
            **numeric_path(),
            "bf16_autocast": autocast_bf16(train_settings.bf16, next(model.parameters()).device.type),
        },
    }
