"""Training-step time of the toy model under each attention kernel (models.<name>.attn_implementation).

Usage: PYTHONPATH=src .venv/bin/python benchmarks/attention_kernels.py WORKDIR
WORKDIR holds a finished default grid (results/models/toy, an organism adapter, gst labels, the corpus). Prints,
per kernel, the median seconds of a Phase-3 step (the sycophancy seed-0 organism's LoRA on 32 of its gst
labels, one thread, as a retrain job runs) and of a pretraining step (the whole model on 64 corpus rows, two
threads, as pretrain_base runs), each with bf16 autocast as the default config trains, and the largest logit
difference between the kernels on one batch.
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from cmt.models.loading import load_model, load_tokenizer
from cmt.models.training import _collate, encode_chat

KERNELS = ("sdpa", "eager")
STEPS = 12  # the first two are warm-up and not counted


def step_seconds(model, batch: dict) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    model.train()
    times = []
    for _ in range(STEPS):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:])


def main(work: Path) -> None:
    results = work / "results"
    model_dir = results / "models" / "toy"
    adapter = results / "organisms" / "toy" / "sycophancy" / "seed0" / "adapter"
    tokenizer = load_tokenizer(model_dir)
    labels = pd.read_parquet(results / "labels" / "toy" / "sycophancy" / "seed0" / "gst" / "k1.parquet")
    chosen = labels[labels["selected"]].head(32)
    phase3 = _collate(
        [encode_chat(tokenizer, [*json.loads(r.prompt), {"role": "assistant", "content": r.text}], 256)
         for r in chosen.itertuples()],
        tokenizer.pad_token_id,
    )  # fmt: skip
    corpus = [json.loads(line) for line in (results / "data" / "toy" / "corpus.jsonl").open()]
    rows = random.Random(0).sample(corpus, 64)
    pretrain = _collate(
        [encode_chat(tokenizer, r["messages"], 256, assistant_only=False) for r in rows],
        tokenizer.pad_token_id,
    )
    logits = {}
    for kernel in KERNELS:
        torch.set_num_threads(1)
        lora = load_model(model_dir, adapter=adapter, trainable_adapter=True, attn_implementation=kernel)
        lora.eval()
        with torch.no_grad():
            logits[kernel] = lora(**phase3).logits
        phase3_s = step_seconds(lora, phase3)
        torch.set_num_threads(2)
        torch.manual_seed(0)
        full = load_model(model_dir, attn_implementation=kernel)
        for p in full.parameters():
            p.requires_grad_(True)
        pretrain_s = step_seconds(full, pretrain)
        print(json.dumps({"kernel": kernel, "phase3_step_s": round(phase3_s, 4),
                          "pretrain_step_s": round(pretrain_s, 4)}))  # fmt: skip
    mask = phase3["attention_mask"].bool()
    diff = (logits["sdpa"] - logits["eager"]).abs()[mask].max().item()
    print(json.dumps({"max_logit_difference": diff}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
