"""How fast this host runs the toy grid's arithmetic today, on a fixed workload that needs no results.

The development machine's speed moves by about 10% within an hour and by a quarter between days (the same
pretraining took 139 s one day and 190 s another; docs/benchmarks.md), more than most speed changes save. This
times the two operations the grid spends most of its time in, on the toy model's shapes with fixed random weights
and data: a Phase-3 step (LoRA r 8 on every linear layer, 32 rows of 45 tokens, with the autocast the default config's
`bf16: auto` takes here, named at the end of the line) and greedy decoding (150 prompts of 30 tokens, 48 new
tokens, nothing ends early). One thread, as a grid job has; the median of
`--repeats` rounds. `benchmarks/demo_cold.sh` prints its line before the grid, so that two grid times can be put
side by side with the host speed of their day.

Usage: python benchmarks/host_speed.py [--repeats N]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from cmt.runtime.numerics import autocast_bf16

# The toy model and LoRA of config/config.yaml as of 2026-12-06, fixed here on purpose: the reference workload
# must not move when the config does, or days could not be compared.
TOY = {"vocab_size": 800, "hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 2,
       "num_attention_heads": 4, "num_key_value_heads": 4, "head_dim": 32, "max_position_embeddings": 256,
       "tie_word_embeddings": True, "pad_token_id": 0}  # fmt: skip
STEPS, DECODE_PROMPTS, NEW_TOKENS = 15, 150, 48


def toy_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**TOY)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def phase3_step_ms() -> float:
    """Milliseconds per optimizer step of a Phase-3-shaped LoRA run (the mean over STEPS steps)."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(toy_model(), LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    model.train()
    batch = torch.randint(3, TOY["vocab_size"], (32, 45), generator=torch.Generator().manual_seed(1))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    start = time.perf_counter()
    for _ in range(STEPS):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast_bf16("auto", "cpu")):
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return 1000 * (time.perf_counter() - start) / STEPS


def decode_ms() -> float:
    """Milliseconds to decode NEW_TOKENS tokens greedily for DECODE_PROMPTS prompts in one batch."""
    from cmt.generation.hf_decode import decode

    model = toy_model().eval()
    ids = torch.randint(
        3, TOY["vocab_size"], (DECODE_PROMPTS, 30), generator=torch.Generator().manual_seed(2)
    )
    start = time.perf_counter()
    decode(model, ids, torch.ones_like(ids), eos_ids=[], max_new_tokens=NEW_TOKENS)
    return 1000 * (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", FutureWarning)  # transformers' deprecation notices, not the host's speed
    phase3_step_ms(), decode_ms()  # first calls pay one-off costs
    steps = [phase3_step_ms() for _ in range(args.repeats)]
    decodes = [decode_ms() for _ in range(args.repeats)]
    print(
        f"host_speed phase3_step_ms {statistics.median(steps):.1f} decode_ms {statistics.median(decodes):.0f}"
        f" autocast {'bf16' if autocast_bf16('auto', 'cpu') else 'float32'}"
    )


if __name__ == "__main__":
    main()
