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
    assert (
        base_load_args({"dtype": "bfloat16", "attn_implementation": "eager"})["attn_implementation"]
        == "eager"
    )


def test_a_model_that_names_a_kernel_passes_it_to_every_job_and_one_that_does_not_passes_none(tmp_path):
    import yaml
    from helpers import run_snakemake

    targets = (
        "results/retrained/toy/sycophancy/seed0/gst/k1/adapter/adapter_config.json",
        "results/eval/toy/sycophancy/seed0/gst/k1.parquet",
    )
    default = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    assert default["models"]["toy"]["attn_implementation"] == "eager"  # the default names one
    unset = {**default, "models": {"toy": {**default["models"]["toy"]}}}
    del unset["models"]["toy"]["attn_implementation"]
    config = tmp_path / "unset.yaml"
    config.write_text(yaml.safe_dump(unset))
    for name, path, kernel in (
        ("default", REPO / "config" / "config.yaml", "eager"),
        ("unset", config, None),
    ):
        proc = run_snakemake(tmp_path / name, "-n", "-p", "--forceall", *targets, config=path, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        settings = {}
        for line in (line.removeprefix("Shell command: ") for line in proc.stdout.splitlines()):
            flag = "--model-settings '" if "--model-settings '" in line else "--settings '"
            if line.startswith("cmt ") and flag in line:
                settings.setdefault(line.split()[1], json.loads(line.split(flag)[1].split("'")[0]))
        for command in ("pretrain", "induce", "retrain", "evaluate"):
            assert settings[command].get("attn_implementation") == kernel, (name, command)
