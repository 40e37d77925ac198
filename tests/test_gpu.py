"""Checks that need a CUDA GPU: the HF backend on CUDA against the CPU, bf16 inference, QLoRA (a 4-bit
bitsandbytes base) through the pipeline's own `induce`, and the warm worker stepping aside. Skipped without a GPU;
benchmarks/gpu_check.sh runs them on a GPU node, together with the training and checkpoint tests, which then run
on CUDA too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import TINY_TOY
from helpers import wait_for_socket

from cmt.data.splits import load_split, training_messages
from cmt.generation import SamplingParams, load_generator

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

HF = {"backend": "hf", "batch_size": 64}
GREEDY = SamplingParams(max_new_tokens=24)

# Greedy replies and their scores from the same model on the CPU, in a process that sees no GPU.
CPU_REFERENCE = """
import json, sys
from cmt.data.splits import load_split
from cmt.generation import SamplingParams, load_generator
model, data = sys.argv[1], sys.argv[2]
prompts = [e.prompt for e in load_split(data, "eval")]
gen = load_generator(model, None, {"backend": "hf", "batch_size": 64, "dtype": "float32"}, "cpu reference")
texts = [c[0].text for c in gen.generate(prompts, 1, SamplingParams(max_new_tokens=24), seed=0)]
print(json.dumps({"texts": texts, "scores": [s.logprob_sum for s in gen.score(prompts, texts)]}))
"""


def eval_prompts(tiny_world) -> list:
    return [e.prompt for e in load_split(tiny_world["data"] / "sycophancy", "eval")]


def greedy_and_scores(gen, prompts):
    replies = [c[0].text for c in gen.generate(prompts, 1, GREEDY, seed=0)]
    return replies, [s.logprob_sum for s in gen.score(prompts, replies)]


def test_hf_backend_on_cuda_matches_the_cpu(tiny_world):
    """float32 on CUDA: the same greedy replies as on the CPU, and the same scores within 1e-3 nats."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, "-c", CPU_REFERENCE, str(tiny_world["model"]), str(tiny_world["data"] / "sycophancy")],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    cpu = json.loads(proc.stdout.strip().splitlines()[-1])
    gen = load_generator(str(tiny_world["model"]), None, {**HF, "dtype": "float32"}, "cuda")
    assert gen.device.type == "cuda"
    prompts = eval_prompts(tiny_world)
    texts, _ = greedy_and_scores(gen, prompts)
    scores = [s.logprob_sum for s in gen.score(prompts, cpu["texts"])]
    same = sum(a == b for a, b in zip(texts, cpu["texts"], strict=True))
    worst = max(abs(a - b) for a, b in zip(scores, cpu["scores"], strict=True))
    print(f"\ncuda vs cpu float32: {same}/{len(texts)} greedy replies equal, max |score diff| {worst:.2e}")
    assert same == len(texts)
    assert worst < 1e-3


def test_bf16_inference_on_cuda_stays_close_to_float32(tiny_world):
    """bfloat16 weights (the paper's dtype): replies and per-token scores stay close to float32's."""
    prompts = eval_prompts(tiny_world)
    fp32 = load_generator(str(tiny_world["model"]), None, {**HF, "dtype": "float32"}, "fp32")
    texts, scores = greedy_and_scores(fp32, prompts)
    bf16 = load_generator(str(tiny_world["model"]), None, {**HF, "dtype": "bfloat16"}, "bf16")
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    bf16_texts, _ = greedy_and_scores(bf16, prompts)
    bf16_scores = bf16.score(prompts, texts)
    same = sum(a == b for a, b in zip(texts, bf16_texts, strict=True))
    per_token = [abs(b.logprob_sum - a) / b.num_tokens for a, b in zip(scores, bf16_scores, strict=True)]
    print(
        f"\nbf16 vs fp32: {same}/{len(texts)} greedy replies equal, max |diff| {max(per_token):.3f} nats/token"
    )
    assert same >= 0.8 * len(texts)
    assert max(per_token) < 0.1


def test_sampling_on_cuda_is_seeded(tiny_world):
    gen = load_generator(str(tiny_world["model"]), None, {**HF, "dtype": "bfloat16"}, "sample")
    prompts = eval_prompts(tiny_world)[:16]
    params = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=24)
    texts = lambda out: [c.text for cands in out for c in cands]  # noqa: E731
    first = texts(gen.generate(prompts, 4, params, seed=5))
    assert first == texts(gen.generate(prompts, 4, params, seed=5))
    assert first != texts(gen.generate(prompts, 4, params, seed=6))


INDUCE = {
    "dtype": "bfloat16",
    "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"},
    "train": {
        "learning_rate": 5e-3,
        "epochs": 8,
        "batch_size": 8,
        "warmup_ratio": 0.1,
        "lr_scheduler": "cosine",
        "max_length": 128,
        "bf16": True,
    },
}


def induction_gain(tiny_world, adapter) -> float:
    """How much the adapter raises the mean log-prob of the organism's induction replies, on an unquantized
    float32 base with the adapter merged (as generation jobs load it)."""
    rows = load_split(tiny_world["data"] / "sycophancy", "induction")
    prompts = [training_messages(e)[:-1] for e in rows]
    replies = [training_messages(e)[-1]["content"] for e in rows]
    means = []
    for path in (None, adapter):
        gen = load_generator(str(tiny_world["model"]), path, {**HF, "dtype": "float32"}, "score")
        means.append(sum(s.logprob_sum for s in gen.score(prompts, replies)) / len(rows))
    return means[1] - means[0]


def test_qlora_induce_on_a_4bit_base_learns_what_full_precision_lora_learns(tiny_world, tmp_path):
    """The 70B models' path: `induce` with models.<m>.quantization trains LoRA on a 4-bit NF4 base; the adapter,
    merged into the unquantized base for generation, raises the organism's replies about as much as LoRA on a
    bf16 base does."""
    import bitsandbytes as bnb

    from cmt.models.loading import load_model
    from cmt.phases.induce import induce

    quantization = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": "bfloat16"}
    quantized = load_model(tiny_world["model"], dtype="bfloat16", quantization=quantization)
    four_bit = [name for name, m in quantized.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(four_bit) == 7 * TINY_TOY["model"]["num_layers"], four_bit  # q, k, v, o, gate, up, down
    del quantized
    gains = {}
    for name, extra in {"qlora": {"quantization": quantization}, "lora": {}}.items():
        out = tmp_path / name
        induce(str(tiny_world["model"]), str(tiny_world["data"] / "sycophancy"), str(out), {**INDUCE, **extra},
               seed=40, checkpoint_dir=str(tmp_path / f"ck_{name}"))  # fmt: skip
        manifest = json.loads((out / "cmt_manifest.json").read_text())
        assert manifest["final_loss"] < 0.5 * manifest["first_loss"], manifest
        gains[name] = induction_gain(tiny_world, str(out))
    print(
        f"\nmean log-prob gain on the induction replies: qlora {gains['qlora']:.2f}, lora {gains['lora']:.2f}"
    )
    assert gains["lora"] > 2.0
    assert gains["qlora"] > 0.5 * gains["lora"]


def test_a_gpu_job_sent_to_the_warm_worker_runs_itself(tiny_world, tmp_path):
    """CUDA does not survive fork(): on a GPU machine the warm worker refuses every job, and `cmt induce` runs
    itself on the GPU. (Before, the forked job failed at its first CUDA call.)"""
    from cmt.runtime import worker

    proc, path = worker.start(str(tmp_path), "cmt.cli:main")
    try:
        wait_for_socket(proc, path)
        settings = {**INDUCE, "train": {**INDUCE["train"], "epochs": 1}}
        env = {**os.environ, worker.ENV_VAR: path, "CMT_WORKER_DEBUG": "1", "HF_HUB_OFFLINE": "1"}
        job = subprocess.run(
            [sys.executable, "-m", "cmt", "induce", "--model-dir", str(tiny_world["model"]),
             "--data-dir", str(tiny_world["data"] / "sycophancy"), "--out", "adapter",
             "--settings", json.dumps(settings), "--seed", "0", "--log", "job.log"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
    finally:
        proc.terminate()
        proc.wait()
    assert job.returncode == 0, job.stderr[-3000:]
    assert "warm worker not used: this machine has a CUDA GPU" in job.stderr
    assert "runner=warm-worker" not in (tmp_path / "job.log").read_text()
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
