"""The HF backend's own decoding loop against transformers' `generate`, on a finished grid's seed-0 organisms.

Usage: PYTHONPATH=src python benchmarks/decoding_loop.py RESULTS_DIR [ORGANISM ...]

For each organism, on its eval prompts, on one thread: greedy replies, 8 samples per prompt at T = 0.7 (top_p
0.9, the policy samples) and 3 at T = 1 (the shift's Monte Carlo), through `HFGenerator.generate` once with
the loop and once with `generate` (the loop switched off). Prints one JSON line per setting: seconds of each,
the share of greedy replies that agree (they must all), and tokens generated per second.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from cmt.data.splits import load_split
from cmt.generation import SamplingParams, load_generator
from cmt.generation import hf as hf_backend

SETTINGS = {"backend": "hf", "batch_size": 256, "dtype": "float32", "max_new_tokens": 48,
            "attn_implementation": "eager"}  # fmt: skip
DEFAULT_ORGANISMS = ["sycophancy", "reward_hacking", "spurious_correlation", "emergent_misalignment"]


def timed(generator, prompts, n, params, own_loop: bool):
    types = hf_backend.DECODE_LOOP_MODEL_TYPES
    hf_backend.DECODE_LOOP_MODEL_TYPES = types if own_loop else frozenset()
    try:
        start = time.perf_counter()
        out = generator.generate(prompts, n, params, seed=0)
        return time.perf_counter() - start, out
    finally:
        hf_backend.DECODE_LOOP_MODEL_TYPES = types


def main(results: Path, organisms: list[str]) -> None:
    torch.set_num_threads(1)
    cases = [("greedy", 1, SamplingParams(temperature=0.0, max_new_tokens=48)),
             ("policy T=0.7", 8, SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=48)),
             ("shift T=1", 3, SamplingParams(temperature=1.0, max_new_tokens=48))]  # fmt: skip
    for organism in organisms:
        prompts = [e.prompt for e in load_split(results / "data" / "toy" / organism, "eval")]
        adapter = results / "organisms" / "toy" / organism / "seed0" / "adapter"
        generator = load_generator(str(results / "models" / "toy"), str(adapter), SETTINGS, "bench")
        for name, n, params in cases:
            timed(generator, prompts[:16], n, params, True)  # warm-up
            hf_s, hf_out = timed(generator, prompts, n, params, False)
            own_s, own_out = timed(generator, prompts, n, params, True)
            tokens = sum(c.num_tokens for cands in own_out for c in cands)
            same = [a.token_ids == b.token_ids for x, y in zip(hf_out, own_out, strict=True)
                    for a, b in zip(x, y, strict=True)]  # fmt: skip
            print(json.dumps({"organism": organism, "case": name, "prompts": len(prompts), "n": n,
                              "generate_s": round(hf_s, 2), "own_loop_s": round(own_s, 2),
                              "speedup": round(hf_s / own_s, 2), "tokens_per_s": round(tokens / own_s),
                              "same_tokens": round(sum(same) / len(same), 3)}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:] or DEFAULT_ORGANISMS)
