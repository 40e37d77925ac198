"""Batched generation against one prompt at a time, on the same work (the target: at least 5x).

    .venv/bin/python benchmarks/generation_batching.py [--model-dir DIR --data-dir DIR] [--prompts 128]

Without a model it builds the default toy-size Llama (config/config.yaml's toy.model) with random weights and a
toy tokenizer, so every reply runs to max_new_tokens and both modes do exactly the same work. With a trained
model (e.g. results/models/toy and results/data/toy/sycophancy) replies stop at end of turn; the token counts
are printed so the comparison stays honest. Runs on 1 torch thread, like a pipeline job.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import yaml

from cmt.data.splits import load_split
from cmt.generation import SamplingParams
from cmt.generation.hf import HFGenerator

REPO = Path(__file__).resolve().parents[1]


def random_toy_model(workdir: Path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from cmt.runtime.io import read_jsonl
    from cmt.toy.tokenizer import train_tokenizer
    from cmt.toy.world import write_world

    toy = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["toy"]
    small = {**toy, "sizes": {"induction": 20, "consistency": 20, "act_bct": 10, "eval": 60},
             "corpus": {"sycophancy": 2000}}  # fmt: skip
    write_world(workdir, ["sycophancy"], small)
    texts = [m["content"] for row in read_jsonl(workdir / "corpus.jsonl") for m in row["messages"]]
    tokenizer = train_tokenizer(texts, toy["tokenizer"]["vocab_size"])
    spec = toy["model"]
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=spec["hidden_size"], intermediate_size=spec["intermediate_size"],
        num_hidden_layers=spec["num_layers"], num_attention_heads=spec["num_heads"],
        num_key_value_heads=spec["num_heads"], max_position_embeddings=spec["max_position_embeddings"],
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    return LlamaForCausalLM(config), tokenizer, workdir / "sycophancy"


def timed(generator: HFGenerator, prompts, params, n: int) -> tuple[float, int]:
    start = time.perf_counter()
    out = generator.generate(prompts, n, params, seed=0)
    seconds = time.perf_counter() - start
    return seconds, sum(c.num_tokens for cands in out for c in cands)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir")
    parser.add_argument("--data-dir")
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--n", type=int, default=4, help="samples per prompt (T=0.7)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=256, help="the config's generation.batch_size")
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        if args.model_dir:
            from cmt.models.loading import load_model, load_tokenizer

            model, tokenizer = load_model(args.model_dir), load_tokenizer(args.model_dir)
            data_dir = Path(args.data_dir)
        else:
            model, tokenizer, data_dir = random_toy_model(Path(tmp))
        prompts = [e.prompt for e in load_split(data_dir, "eval")][: args.prompts]
    params = SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=args.max_new_tokens)
    batched = HFGenerator(model.eval(), tokenizer, batch_size=args.batch_size, desc="batched")
    single = HFGenerator(model.eval(), tokenizer, batch_size=args.n, desc="one prompt at a time")
    timed(batched, prompts[:8], params, args.n)  # warm-up
    b_seconds, b_tokens = timed(batched, prompts, params, args.n)
    s_seconds, s_tokens = timed(single, prompts, params, args.n)
    print(f"prompts {len(prompts)} x n {args.n}, max_new_tokens {args.max_new_tokens}, 1 thread")
    print(
        f"batched (batch_size {args.batch_size}): {b_seconds:.2f} s, {b_tokens} tokens, {b_tokens / b_seconds:.0f} tok/s"
    )
    print(f"one prompt at a time:  {s_seconds:.2f} s, {s_tokens} tokens, {s_tokens / s_seconds:.0f} tok/s")
    print(f"speed-up (tokens/s ratio): {(b_tokens / b_seconds) / (s_tokens / s_seconds):.1f}x")


if __name__ == "__main__":
    main()
