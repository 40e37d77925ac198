"""models.<name>.attn_implementation: a kernel choice that reaches every job loading that model, and only it."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from cmt.models.loading import base_load_args, load_model

REPO = Path(__file__).resolve().parents[1]


def test_the_kernel_is_loaded_as_named_and_computes_the_same_function(tiny_world):
    eager = load_model(tiny_world["model"], attn_implementation="eager").eval()
    default = load_model(tiny_world["model"]).eval()
    assert eager.config._attn_implementation == "eager"
    assert default.config._attn_implementation == "sdpa"  # transformers' choice when none is named
    ids = torch.tensor([[5, 9, 17, 33, 2, 40, 41, 7], [5, 9, 17, 33, 2, 40, 0, 0]])
    mask = torch.tensor([[1] * 8, [1] * 6 + [0, 0]])
    with torch.no_grad():
        a = eager(input_ids=ids, attention_mask=mask).logits
        b = default(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(a[0], b[0], atol=1e-4)
    assert torch.allclose(a[1, :6], b[1, :6], atol=1e-4)  # the padded positions are never read


def test_base_load_args_carry_the_kernel_only_where_set():
    assert base_load_args({"dtype": "float32"}) == {
        "dtype": "float32", "quantization": None, "attn_implementation": None
    }  # fmt: skip
    assert base_load_args({"dtype": "bfloat16", "attn_implementation": "eager"})["attn_implementation"] == "eager"


def test_the_default_configs_toy_jobs_get_eager_and_the_paper_grids_get_none(tmp_path):
    from helpers import run_snakemake

    proc = run_snakemake(
        tmp_path, "-n", "-p", "--forceall",
        "results/retrained/toy/sycophancy/seed0/gst/k1/adapter/adapter_config.json",
        "results/eval/toy/sycophancy/seed0/gst/k1.parquet",
        config=REPO / "config" / "config.yaml", check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [line.removeprefix("Shell command: ") for line in proc.stdout.splitlines()]
    settings = {}
    for line in lines:
        flag = "--model-settings '" if "--model-settings '" in line else "--settings '"
        if line.startswith("cmt ") and flag in line:
            settings.setdefault(line.split()[1], json.loads(line.split(flag)[1].split("'")[0]))
    for command in ("pretrain", "induce", "retrain", "evaluate"):
        assert settings[command]["attn_implementation"] == "eager", command

    paper = run_snakemake(
        tmp_path / "paper", "-n", "-p",
        "results/organisms/Llama-3.1-8B/sycophancy/seed40/adapter/adapter_config.json",
        config=REPO / "config" / "paper.yaml", check=False, env={"OPENAI_API_KEY": "sk-dry-run"},
    )  # fmt: skip
    assert paper.returncode == 0, paper.stdout + paper.stderr
    induce = [line for line in paper.stdout.splitlines() if "cmt induce" in line]
    assert induce and all("attn_implementation" not in line for line in induce)
