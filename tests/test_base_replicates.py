"""models.<name>.pretrain_seed: toy models that differ in their base, so that a grid replicates the base too."""

import copy
import json

import pytest
import yaml
from helpers import REPO, run_snakemake

from cmt.config import check_workflow_config

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def pretrain_settings(workdir, config_path, models):
    """The --settings of each model's pretrain command in a dry run, by model."""
    targets = [f"results/models/{m}/model.safetensors" for m in models]
    proc = run_snakemake(workdir, "-n", "-p", "--forceall", *targets, config=config_path, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found = {}
    for line in (line.removeprefix("Shell command: ") for line in proc.stdout.splitlines()):
        if line.startswith("cmt pretrain "):
            model = line.split("--out results/models/")[1].split()[0]
            found[model] = json.loads(line.split("--settings '")[1].split("'")[0])
    return found


def test_a_second_toy_model_with_its_own_pretrain_seed_gets_its_own_base(tmp_path):
    default = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config = copy.deepcopy(default)
    config["models"]["toy_base1"] = {**copy.deepcopy(default["models"]["toy"]), "pretrain_seed": 1}
    path = tmp_path / "bases.yaml"
    path.write_text(yaml.safe_dump(config))
    settings = pretrain_settings(tmp_path / "bases", path, ["toy", "toy_base1"])
    assert settings["toy"]["pretrain"]["seed"] == default["toy"]["pretrain"]["seed"] == 0
    assert settings["toy_base1"]["pretrain"]["seed"] == 1
    # everything else about the two bases is the same toy subtree
    assert {**settings["toy_base1"], "pretrain": {}} == {**settings["toy"], "pretrain": {}}
    # a model without the key keeps the param it had, so adding a replicate reruns nothing of the first base
    alone = pretrain_settings(tmp_path / "alone", REPO / "config" / "config.yaml", ["toy"])
    assert alone["toy"] == settings["toy"]


def test_pretrain_seed_on_a_model_that_is_not_toy_is_named():
    config = yaml.safe_load((REPO / "config" / "smollm2.yaml").read_text())
    name = next(iter(config["models"]))
    config["models"][name]["pretrain_seed"] = 1
    errors = check_workflow_config(config, SCHEMA)
    assert any(f"config key models.{name}.pretrain_seed" in e and "not a toy model" in e for e in errors)


@pytest.mark.parametrize("value", [-1, "one"])
def test_pretrain_seed_must_be_a_non_negative_integer(value):
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["models"]["toy"]["pretrain_seed"] = value
    (error,) = check_workflow_config(config, SCHEMA)
    assert "models.toy.pretrain_seed" in error
