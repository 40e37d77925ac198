"""The toy base through Snakemake's between-workflow cache: a second work folder restores it, untrained."""

import pytest
import yaml
from helpers import REPO, run_snakemake

pytestmark = pytest.mark.integration

BASE = "results/models/toy/model.safetensors"


def small_world_config(path):
    """The mini config cut to one organism and a base that trains in seconds (its quality is not tested)."""
    config = yaml.safe_load((REPO / "tests/configs/mini.yaml").read_text())
    config["organisms"] = {"sycophancy": {"source": "toy"}}
    toy = config["toy"]
    toy["corpus"] = {"sycophancy": 600}
    toy["sizes"] = {"induction": 20, "consistency": 10, "act_bct": 10, "eval": 10}
    toy.pop("harmful", None)
    config["eval"].pop("harmful", None)
    toy["tokenizer"]["vocab_size"] = 300
    toy["model"].update(hidden_size=32, intermediate_size=64, num_layers=1)
    toy["pretrain"].update(epochs=1, min_heldout_accuracy=0.0)
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_second_clone_restores_the_pretrained_base_from_the_cache(tmp_path):
    config = small_world_config(tmp_path / "config.yaml")
    (tmp_path / "cache").mkdir()  # Snakemake needs the folder to exist
    env = {"SNAKEMAKE_OUTPUT_CACHE": str(tmp_path / "cache")}
    first, second = tmp_path / "first", tmp_path / "second"
    run_snakemake(first, "--cores", "2", "--cache", "--", BASE, config=config, env=env)
    proc = run_snakemake(second, "--cores", "2", "--cache", "--", BASE, config=config, env=env)
    assert (second / BASE).read_bytes() == (first / BASE).read_bytes()
    # The second folder generated its toy data but never pretrained: every file of the base is a link into
    # the cache, and its job log holds no training line.
    assert (second / "results/data/toy/corpus.jsonl").is_file()
    assert "Symlinking output file results/models/toy/model.safetensors from cache" in proc.stderr
    assert "pretrain:" not in (second / "logs/pretrain_base/toy.log").read_text()
    assert "pretrain:" in (first / "logs/pretrain_base/toy.log").read_text()
    for name in ("config.json", "tokenizer.json", "chat_template.jinja", "pretrain_report.json"):
        path = second / "results/models/toy" / name
        assert path.is_symlink() and path.resolve().parent == (tmp_path / "cache").resolve()
