"""QLoRA for the 70B models: the quantization block maps onto bitsandbytes, and reaches only training jobs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from cmt.models.loading import bnb_config, load_model

REPO = Path(__file__).resolve().parents[1]


def test_quantization_block_maps_to_a_bitsandbytes_config():
    config = bnb_config(
        {"load_in_4bit": True, "bnb_4bit_quant_type": "fp4", "bnb_4bit_compute_dtype": "float16"}
    )
    assert config.load_in_4bit and not config.load_in_8bit
    assert config.bnb_4bit_quant_type == "fp4"
    assert config.bnb_4bit_compute_dtype == torch.float16
    assert config.bnb_4bit_use_double_quant is True  # the schema's default
    default = bnb_config({"load_in_4bit": True})
    assert (default.bnb_4bit_quant_type, default.bnb_4bit_compute_dtype) == ("nf4", torch.bfloat16)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_a_quantized_load_without_a_gpu_is_refused_with_the_key_named(tiny_world):
    with pytest.raises(RuntimeError, match=r"quantization .*CUDA GPU.*models.<name>.quantization"):
        load_model(tiny_world["model"], quantization={"load_in_4bit": True})
    with pytest.raises(ValueError, match="generation loads the unquantized weights"):
        load_model(tiny_world["model"], quantization={"load_in_4bit": True}, merge=True)


def test_only_training_jobs_of_the_70b_models_get_the_quantization_block(tmp_path):
    """The paper grid's dry run: induce, retrain and retrain_consistency of a 70B model carry the block in their
    settings; an 8B model's do not (their params, and so their reruns, are unchanged by the key's existence)."""
    from helpers import run_snakemake

    proc = run_snakemake(
        tmp_path, "-n", "-p",
        "results/organisms/Llama-3.1-70B/sycophancy/seed40/adapter/adapter_config.json",
        "results/organisms/Llama-3.1-8B/sycophancy/seed40/adapter/adapter_config.json",
        "results/retrained/Llama-3.1-70B/sycophancy/seed40/act/k1/adapter/adapter_config.json",
        config=REPO / "config" / "paper.yaml", check=False, env={"OPENAI_API_KEY": "sk-dry-run"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [line.removeprefix("Shell command: ") for line in proc.stdout.splitlines()]
    commands = [line for line in lines if line.startswith(("cmt induce", "cmt retrain-consistency"))]
    settings = {}
    for line in commands:
        model = line.split("--model-dir resources/models/")[1].split()[0]
        settings[(line.split()[1], model)] = json.loads(line.split("--settings '")[1].split("'")[0])
    assert settings[("induce", "Llama-3.1-70B")]["quantization"]["load_in_4bit"] is True
    assert settings[("retrain-consistency", "Llama-3.1-70B")]["quantization"]["bnb_4bit_quant_type"] == "nf4"
    assert "quantization" not in settings[("induce", "Llama-3.1-8B")]
    paper = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    assert paper["models"]["Llama-3.1-70B"]["train_gpus"] == 1
