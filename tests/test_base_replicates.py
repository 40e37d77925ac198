"""models.<name>.pretrain_seed and base_per_seed: toy bases that differ, so that a grid replicates the base too."""

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


def per_seed_config(tmp_path, **toy_model):
    """The default config with base_per_seed on its toy model (and any other keys given), written to a file."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["models"]["toy"].update(base_per_seed=True, **toy_model)
    path = tmp_path / "per_seed.yaml"
    path.write_text(yaml.safe_dump(config))
    return config, path


def test_base_per_seed_pretrains_one_base_per_run_seed_and_seed_0_is_the_shared_base(tmp_path):
    config, path = per_seed_config(tmp_path)
    bases = [f"toy/seed{s}" for s in config["seeds"]]
    settings = pretrain_settings(tmp_path / "per_seed", path, bases)
    assert {base: s["pretrain"]["seed"] for base, s in settings.items()} == {
        f"toy/seed{s}": s for s in config["seeds"]
    }
    assert {**settings["toy/seed1"], "pretrain": {}} == {**settings["toy/seed0"], "pretrain": {}}
    # run seed 0 adds nothing: its base is the default grid's, setting for setting
    shared = pretrain_settings(tmp_path / "shared", REPO / "config" / "config.yaml", ["toy"])
    assert settings["toy/seed0"] == shared["toy"]


def test_base_per_seed_adds_the_run_seed_to_the_models_pretrain_seed(tmp_path):
    _, path = per_seed_config(tmp_path, pretrain_seed=10)
    settings = pretrain_settings(tmp_path / "w", path, ["toy/seed0", "toy/seed2"])
    assert settings["toy/seed0"]["pretrain"]["seed"] == 10
    assert settings["toy/seed2"]["pretrain"]["seed"] == 12


def test_each_run_seed_loads_its_own_base_and_reward_model(tmp_path):
    """Every job of a seed that loads the base (Phase 1, evaluation, labels, Phase 3, the shift, diagnose) names
    that seed's base, and the reranker its reward model, trained on that base."""
    config, path = per_seed_config(tmp_path)
    proc = run_snakemake(tmp_path / "w", "-n", "-p", "--forceall", config=path)  # the default target, all
    lines = (line.removeprefix("Shell command: ") for line in proc.stdout.splitlines())
    commands = [line for line in lines if line.startswith("cmt ")]
    jobs_of_seed = {
        s: [c for c in commands if f"/seed{s}/" in c and "--model-dir" in c] for s in config["seeds"]
    }
    for seed, jobs in jobs_of_seed.items():
        loading = {"induce", "evaluate", "label", "retrain", "shift", "diagnose"}
        assert {c.split()[1] for c in jobs} >= loading, seed
        for command in jobs:
            assert f"--model-dir results/models/toy/seed{seed} " in command, command
        rerankers = [c for c in jobs if "--reward-model" in c]
        assert rerankers and all(
            f"--reward-model results/models/toy/seed{seed}-reward " in c for c in rerankers
        )
    reward_models = [c for c in commands if c.startswith("cmt train-reward-model")]
    assert sorted(c.split("--model-dir ")[1].split()[0] for c in reward_models) == [
        f"results/models/toy/seed{s}" for s in config["seeds"]
    ]
    # no job loads the shared base, which this config never builds
    assert not any("results/models/toy " in c or "results/models/toy-reward" in c for c in commands)


def test_base_per_seed_on_a_model_that_is_not_toy_is_named():
    config = yaml.safe_load((REPO / "config" / "smollm2.yaml").read_text())
    name = next(iter(config["models"]))
    config["models"][name]["base_per_seed"] = True
    errors = check_workflow_config(config, SCHEMA)
    assert any(f"config key models.{name}.base_per_seed" in e and "not a toy model" in e for e in errors)
    config["models"][name]["base_per_seed"] = False  # the default says nothing
    assert not any("base_per_seed" in e for e in check_workflow_config(config, SCHEMA))
