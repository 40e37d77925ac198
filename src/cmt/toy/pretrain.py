"""Pretrain the toy base model from scratch on the base corpus, then check it solves the aligned task."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from cmt.data.splits import load_split
from cmt.models import training
from cmt.models.loading import pick_device
from cmt.runtime.io import atomic_dir, read_jsonl
from cmt.runtime.numerics import numeric_path
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


def heldout_accuracy(model, tokenizer, eval_rows: dict[str, list], max_new_tokens: int) -> dict[str, float]:
    """Greedy accuracy (the organism scorer's `correct`) on each organism's held-out eval prompts."""
    from cmt.generation.base import SamplingParams
    from cmt.generation.hf import HFGenerator

    gen = HFGenerator(model, tokenizer, batch_size=256, desc="heldout eval")
    out = {}
    for organism, rows in eval_rows.items():
        completions = gen.generate(
            [r.prompt for r in rows], 1, SamplingParams(max_new_tokens=max_new_tokens), 0
        )
        scorer = toy_module(organism).score
        correct = [scorer(r.meta, c[0].text)["correct"] for r, c in zip(rows, completions, strict=True)]
        out[organism] = sum(correct) / len(correct)
    return out


def pretrain(corpus_path: str, eval_dirs: dict[str, str], out_dir: str, settings: dict) -> dict:
    """Train tokenizer and model from the `toy` config subtree; fail if held-out accuracy is below the gate."""
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
    accuracy = heldout_accuracy(model, tokenizer, eval_rows, settings["pretrain"]["eval_max_new_tokens"])
    log.info("held-out accuracy: %s", accuracy)
    gate = settings["pretrain"]["min_heldout_accuracy"]
    failed = {org: acc for org, acc in accuracy.items() if acc < gate}
    if failed:
        raise training.TrainingError(
            f"toy base model failed the aligned-task gate toy.pretrain.min_heldout_accuracy={gate}: {failed}; "
            "train longer or enlarge toy.model"
        )
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return {
        "parameters": n_params,
        "vocab_size": len(tokenizer),
        "steps": history.steps,
        "first_loss": history.first_loss,
        "final_loss": history.final_loss,
        "heldout_accuracy": accuracy,
        # The base is a function of the kernels it was trained on, not only of config and seed.
        "numerics": numeric_path(),
    }
