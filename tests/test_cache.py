"""The toy base through Snakemake's between-workflow cache: a second work folder restores it, untrained."""

import pytest
from helpers import run_snakemake

pytestmark = pytest.mark.integration

BASE = "results/models/toy/model.safetensors"


def test_a_second_clone_restores_the_pretrained_base_from_the_cache(tmp_path):
    env = {"SNAKEMAKE_OUTPUT_CACHE": str(tmp_path / "cache")}
    first, second = tmp_path / "first", tmp_path / "second"
    run_snakemake(first, "--cores", "2", "--cache", "--", BASE, env=env)
    proc = run_snakemake(second, "--cores", "2", "--cache", "--", BASE, env=env)
    assert (second / BASE).read_bytes() == (first / BASE).read_bytes()
    # The second folder generated its toy data but never pretrained: no pretraining log was written there.
    assert (second / "results/data/toy/corpus.jsonl").is_file()
    assert not (second / "logs/pretrain_base/toy.log").exists(), proc.stderr[-2000:]
    for name in ("config.json", "tokenizer.json", "pretrain_report.json"):
        assert (second / "results/models/toy" / name).is_file()
