"""Warming up the paths every model job takes, in the warm worker before it forks jobs (cmt.runtime.worker).

A job's first model load, first training step and first decoding call pay one-off costs that later calls do not:
lazy imports inside transformers and peft, and the first pass through their loading code. Forked from a process
that already took those paths, a job loads the toy model about 0.1 s sooner. This takes them once on a tiny Llama
with a LoRA, saved to and loaded from a temporary directory, with nothing of it kept.
"""

from __future__ import annotations

import tempfile
import warnings

import torch

from cmt.generation.hf_decode import decode

TINY = {"vocab_size": 64, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 8, "max_position_embeddings": 64,
        "pad_token_id": 0}  # fmt: skip


def warm_up() -> None:
    """Save and load a tiny Llama and its LoRA, take a bf16 training step, merge it and decode a few tokens.

    One torch thread throughout, then the caller's count again: a thread pool started here would not survive the
    fork, and each job sets its own count. The global generator's state is restored, so a forked job starts from
    a fresh process's. No progress bars or warnings: the worker's stderr is not a job's, and a warning shown here
    would not be shown again in the jobs."""
    from transformers.utils import logging as hf_logging

    threads, bars = torch.get_num_threads(), hf_logging.is_progress_bar_enabled()
    torch.set_num_threads(1)
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
            warnings.simplefilter("ignore")
            _take_the_paths()
    finally:
        torch.set_num_threads(threads)
        if bars:
            hf_logging.enable_progress_bar()


def _take_the_paths() -> None:
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="cmt-warmup-") as tmp:
        model = LlamaForCausalLM(LlamaConfig(**TINY))
        model.save_pretrained(f"{tmp}/base")
        get_peft_model(model, LoraConfig(r=2, target_modules="all-linear")).save_pretrained(f"{tmp}/lora")
        base = AutoModelForCausalLM.from_pretrained(f"{tmp}/base", attn_implementation="eager")
        model = PeftModel.from_pretrained(base, f"{tmp}/lora", is_trainable=True)
    ids = torch.randint(3, TINY["vocab_size"], (2, 6))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    decode(model.merge_and_unload().eval(), ids, torch.ones_like(ids), eos_ids=[1], max_new_tokens=3)
