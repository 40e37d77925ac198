"""The vLLM backend run for real, on vLLM's CPU build, against the HF backend on the same model and adapter.

`make test-vllm` builds the second environment (tests/vllm_cpu/setup.sh) and points CMT_VLLM_PYTHON at it. CI
sets CMT_VLLM_PYTHON for `make test` and builds the venv beside it, so there these tests run in the main suite.
The vLLM side runs in that interpreter (tests/vllm_cpu/compare.py) because vllm-cpu needs an older transformers
than the project pins. The model is a tiny toy Llama pretrained here, and the adapter a random (non-zero) rank-8
LoRA over every linear layer, served unmerged by vLLM and merged by HF.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY_TOY
from helpers import REPO, lock_within

VLLM_PYTHON = os.environ.get("CMT_VLLM_PYTHON")
pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(not VLLM_PYTHON, reason="needs CMT_VLLM_PYTHON (make test-vllm)"),
]
MAX_NEW_TOKENS = 16
# head_dim 32, as in the default toy model, which vllm-cpu was seen to serve.
VLLM_TOY = {**TINY_TOY, "model": {**TINY_TOY["model"], "num_heads": 2}}


SETTINGS = {"backend": "hf", "dtype": "float32", "batch_size": 8, "max_new_tokens": MAX_NEW_TOKENS, "gpus": 1,
            "vllm": {"max_model_len": 128, "enforce_eager": True, "max_lora_rank": 8}}  # fmt: skip


@pytest.fixture(scope="module")
def vllm_python() -> str:
    """CMT_VLLM_PYTHON, once tests/vllm_cpu/setup.sh has finished building its venv: CI builds it in the
    background while `make test` runs, and the script holds `<venv>.lock` while it works."""
    venv = Path(VLLM_PYTHON).parent.parent
    lock = venv.with_name(venv.name + ".lock")
    if lock.exists():
        with lock.open() as handle:
            if not lock_within(handle, fcntl.LOCK_SH, 1800):
                pytest.fail(f"tests/vllm_cpu/setup.sh has held {lock} for 30 minutes")
    proc = subprocess.run([VLLM_PYTHON, "-c", "import vllm"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (
        f"CMT_VLLM_PYTHON={VLLM_PYTHON} cannot import vllm (build it with tests/vllm_cpu/setup.sh {venv}):\n"
        + proc.stderr[-3000:]
    )
    return VLLM_PYTHON


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict:
    """A pretrained toy Llama, a random rank-8 LoRA over its linear layers, and six eval prompts."""
    import torch
    from peft import LoraConfig, get_peft_model

    from cmt.data.splits import load_split
    from cmt.models.loading import load_model
    from cmt.toy.pretrain import pretrain
    from cmt.toy.world import write_world

    root = tmp_path_factory.mktemp("vllm_cpu")
    write_world(root / "data", ["sycophancy"], VLLM_TOY)
    pretrain(str(root / "data/corpus.jsonl"), {"sycophancy": str(root / "data/sycophancy")}, str(root / "model"),
             VLLM_TOY)  # fmt: skip
    torch.manual_seed(0)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(load_model(str(root / "model"), dtype="float32"), lora).save_pretrained(root / "adapter")
    prompts = [e.prompt for e in load_split(root / "data/sycophancy", "eval")[:6]]
    return {"root": root, "model": str(root / "model"), "adapter": str(root / "adapter"),
            "data": str(root / "data/sycophancy"), "prompts": prompts}  # fmt: skip


@pytest.fixture(scope="module")
def served(toy, vllm_python):
    """The HF backend's results here, and the vLLM backend's from compare.py in the vllm-cpu interpreter."""
    from cmt.generation import SamplingParams, load_generator

    root, prompts, settings = toy["root"], toy["prompts"], SETTINGS
    greedy = SamplingParams(temperature=0.0, max_new_tokens=MAX_NEW_TOKENS)
    beam = SamplingParams(temperature=0.0, num_beams=3, max_new_tokens=MAX_NEW_TOKENS)
    hf = {}
    for name, adapter in (("base", None), ("adapter", toy["adapter"])):
        generator = load_generator(toy["model"], adapter, settings, f"hf {name}")
        texts = [c[0].text for c in generator.generate(prompts, 1, greedy, 0)]
        hf[name] = {
            "greedy": texts,
            "beam": [[c.text for c in cands] for cands in generator.generate(prompts, 2, beam, 0)],
            "scores": [s.logprob_sum for s in generator.score(prompts, texts)],
            "scores_without_eot": [s.logprob_sum for s in generator.score(prompts, texts, end_of_turn=False)],
        }
    request = {"settings": {**settings, "backend": "vllm"}, "prompts": prompts,
               "score_texts": {name: hf[name]["greedy"] for name in hf}}  # fmt: skip
    (root / "request.json").write_text(json.dumps(request))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [vllm_python, str(REPO / "tests/vllm_cpu/compare.py"), toy["model"], toy["adapter"],
         str(root / "request.json"), str(root / "vllm.json")],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-5000:]
    return {"hf": hf, "vllm": json.loads((root / "vllm.json").read_text()), "prompts": prompts}


def texts(rows: list[list[dict]]) -> list[list[str]]:
    return [[c["text"] for c in cands] for cands in rows]


@pytest.mark.parametrize("name", ["base", "adapter"])
def test_greedy_replies_are_the_hf_backends(served, name):
    vllm = served["vllm"][name]["greedy"]
    assert [cands[0]["text"] for cands in vllm] == served["hf"][name]["greedy"]
    assert all(len(cands) == 1 and cands[0]["num_tokens"] >= 1 for cands in vllm)


def test_the_adapter_is_served(served):
    """The LoRA request changes the replies: the adapter is applied, not silently dropped."""
    assert served["hf"]["adapter"]["greedy"] != served["hf"]["base"]["greedy"]
    assert texts(served["vllm"]["adapter"]["greedy"]) != texts(served["vllm"]["base"]["greedy"])
    assert served["vllm"]["engines_built"] == 1  # max_lora_rank: the base and the adapter share one engine


@pytest.mark.parametrize("name", ["base", "adapter"])
@pytest.mark.parametrize("key", ["scores", "scores_without_eot"])
def test_teacher_forced_scores_match_the_hf_backend(served, name, key):
    """log P(reply [, end of turn] | prompt) from vLLM's prompt log-probs, against HF's forward pass."""
    vllm = [s["logprob_sum"] for s in served["vllm"][name][key]]
    assert vllm == pytest.approx(served["hf"][name][key], abs=2e-3)
    assert all(math.isnan(s["kl_uniform_mean"]) for s in served["vllm"][name][key])  # documented: no KL
    hf = served["hf"][name]
    eot = [a - b for a, b in zip(hf["scores"], hf["scores_without_eot"], strict=True)]
    assert all(d < 0 for d in eot)  # the end-of-turn token's log-prob is really added


@pytest.mark.parametrize("name", ["base", "adapter"])
def test_sampling_is_seeded_per_prompt(served, name):
    run = served["vllm"][name]
    assert all(len(cands) == 3 for cands in run["sampled"])
    assert run["sampled"] == run["sampled_again"]  # same seed, same samples
    assert run["sampled_first_alone"] == run["sampled"][:1]  # independent of the rest of the batch
    assert texts(run["sampled_other_seed"]) != texts(run["sampled"])
    assert any(len(set(cands)) > 1 for cands in texts(run["sampled"]))  # really sampled, n independent draws


def test_beam_search_returns_the_best_beams(served):
    """On the pretrained model the best beam is HF's. Under the random adapter (near-ties everywhere) the two
    can rank finished beams differently: vLLM divides a beam's log-prob by the length of prompt plus reply,
    HF by the reply's (the documented difference in cmt.generation.vllm_backend); so there, only the shape."""
    for name in ("base", "adapter"):
        beams = texts(served["vllm"][name]["beam"])
        assert all(len(cands) == 2 and cands[0] != cands[1] for cands in beams)
    best = [cands[0] for cands in texts(served["vllm"]["base"]["beam"])]
    assert best == [cands[0] for cands in served["hf"]["base"]["beam"]]


@pytest.fixture(scope="module")
def evaluated(toy, vllm_python) -> dict:
    """`cmt evaluate --stage phase1`, as the evaluate rule runs it, through each environment's `cmt` script:
    hf in the project's venv, vllm in the vllm-cpu one (vLLM's default multiprocess engine)."""
    out = {}
    for backend, python in (("hf", sys.executable), ("vllm", vllm_python)):
        rows, log = toy["root"] / f"eval_{backend}.parquet", toy["root"] / f"eval_{backend}.log"
        proc = subprocess.run(
            [str(Path(python).parent / "cmt"), "evaluate", "--model", "toy", "--organism", "sycophancy",
             "--stage", "phase1", "--adapter", toy["adapter"], "--model-dir", toy["model"], "--data-dir",
             toy["data"], "--out", str(rows), "--model-settings", json.dumps({**SETTINGS, "backend": backend}),
             "--eval-settings", '{"size": null}', "--seed", "0", "--log", str(log), "--job", "evaluate test"],
            env={k: v for k, v in os.environ.items() if k != "CMT_WORKER"} | {"VLLM_CPU_KVCACHE_SPACE": "1"},
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert proc.returncode == 0, log.read_text()[-5000:] if log.exists() else proc.stderr[-5000:]
        out[backend] = {"rows": pd.read_parquet(rows), "log": log.read_text()}
    return out


def test_the_evaluate_job_gives_the_same_rows_through_vllm(evaluated):
    """The whole evaluate job (settings, engine, LoRA request, judge, parquet) on the vLLM backend writes the
    rows the HF backend writes: same greedy completions, token counts and verdicts."""
    hf, vllm = evaluated["hf"], evaluated["vllm"]
    assert "building vLLM engine" in vllm["log"] and "building vLLM engine" not in hf["log"]
    assert len(vllm["rows"]) == len(hf["rows"]) > 10
    columns = ["prompt_id", "completion", "num_tokens", "scored", "misaligned", "correct"]
    pd.testing.assert_frame_equal(vllm["rows"][columns], hf["rows"][columns])  # NaN verdicts compare equal
