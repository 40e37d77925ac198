import copy
import re
from pathlib import Path

import pytest
import yaml
from helpers import REPO, run_snakemake

from cmt.config import ConfigError, check_config, config_errors
from cmt.data.fetch import DATASET_FILES

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize(
    "path", [*sorted((REPO / "config").glob("*.yaml")), *sorted((REPO / "tests" / "configs").glob("*.yaml"))]
)
def test_shipped_configs_are_valid(path):
    assert config_errors(load(path), SCHEMA) == []


def test_unknown_key_is_named_with_allowed_keys():
    config = load(REPO / "config" / "config.yaml")
    config["models"]["toy"]["phase1"]["learning_rat"] = 1e-3
    (error,) = config_errors(config, SCHEMA)
    assert "models.toy.phase1" in error
    assert "learning_rat" in error
    assert "learning_rate" in error  # the allowed keys are listed


def test_wrong_type_names_the_key():
    config = load(REPO / "config" / "config.yaml")
    config["toy"]["pretrain"]["epochs"] = "three"
    (error,) = config_errors(config, SCHEMA)
    assert "toy.pretrain.epochs" in error and "number" in error


def test_unknown_method_lists_valid_names():
    config = load(REPO / "config" / "config.yaml")
    config["methods"]["gsd"] = {}
    errors = config_errors(config, SCHEMA)
    assert any("methods" in e and "'gsd'" in e and "gst" in e for e in errors)


def test_every_error_is_reported_at_once():
    config = load(REPO / "config" / "config.yaml")
    config["seeds"] = "0"
    config["organisms"]["sycophancy"]["source"] = {"pth": "/data"}
    config["typo"] = 1
    errors = config_errors(config, SCHEMA)
    assert len(errors) == 3
    with pytest.raises(ConfigError, match="seeds"):
        check_config(config, SCHEMA)


def test_schema_defaults_are_filled_by_snakemake_validate():
    from snakemake.utils import validate

    config = copy.deepcopy(load(REPO / "tests" / "configs" / "mini.yaml"))
    validate(config, SCHEMA)
    assert config["models"]["toy"]["phase1"]["grad_accum"] == 1
    assert config["models"]["toy"]["gpus"] == 0


def test_bad_config_stops_snakemake_before_any_job(tmp_path, copy_config):
    path = copy_config()
    config = load(path)
    config["methods"]["gst"]["temperature"] = 0.7
    path.write_text(yaml.safe_dump(config))
    proc = run_snakemake(tmp_path / "work", "-n", config=path, check=False)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "methods.gst" in output and "temperature" in output
    assert not (tmp_path / "work" / "results").exists()


def dry_run_with(tmp_path, copy_config, edit, *targets):
    path = copy_config()
    config = load(path)
    edit(config)
    path.write_text(yaml.safe_dump(config))
    proc = run_snakemake(tmp_path / "work", "-n", *targets, config=path, check=False)
    return proc, proc.stdout + proc.stderr


def test_a_missing_dataset_folder_is_named_before_the_dag(tmp_path, copy_config):
    def edit(config):
        config["organisms"]["sycophancy"]["source"] = {"path": str(tmp_path / "nowhere")}

    proc, output = dry_run_with(tmp_path, copy_config, edit)
    assert proc.returncode != 0
    assert "organisms.sycophancy.source.path" in output and "nowhere" in output
    assert "Building DAG" not in output


def test_a_missing_model_folder_is_named_before_the_dag(tmp_path, copy_config):
    def edit(config):
        config["models"]["toy"]["source"] = {"path": str(tmp_path / "no_model")}

    proc, output = dry_run_with(tmp_path, copy_config, edit)
    assert proc.returncode != 0
    assert "models.toy.source.path" in output and "no_model" in output
    assert "Building DAG" not in output


def test_a_dataset_by_url_is_fetched_by_a_local_rule(tmp_path, copy_config):
    sha = "ab" * 32

    def edit(config):
        config["organisms"]["sycophancy"]["source"] = {"url": "https://example.org/syc.tar.gz", "sha256": sha}

    proc, output = dry_run_with(tmp_path, copy_config, edit)
    assert proc.returncode == 0, output[-3000:]
    assert re.search(r"^fetch_dataset\s+1$", output, re.M)  # one fetch, before the jobs that read the data
    assert "output: resources/data/sycophancy/induction.jsonl" in output
    assert "input: results/models/toy/config.json, resources/data/sycophancy/induction.jsonl" in output


def test_a_dataset_by_loose_files_is_fetched_by_a_local_rule(tmp_path, copy_config):
    files = {name: "ab" * 32 for name in DATASET_FILES}

    def edit(config):
        config["organisms"]["sycophancy"]["source"] = {"base_url": "https://example.org/syc", "files": files}

    proc, output = dry_run_with(tmp_path, copy_config, edit, "-p")
    assert proc.returncode == 0, output[-3000:]
    assert re.search(r"^fetch_dataset\s+1$", output, re.M)
    assert '"files":{"act_bct_clean.jsonl":"abab' in output  # the source block reaches the CLI as JSON


def test_a_loose_files_source_missing_a_file_is_a_schema_error(tmp_path, copy_config):
    files = {name: "ab" * 32 for name in DATASET_FILES if name != "eval.jsonl"}

    def edit(config):
        config["organisms"]["sycophancy"]["source"] = {"base_url": "https://example.org/syc", "files": files}

    proc, output = dry_run_with(tmp_path, copy_config, edit)
    assert proc.returncode != 0
    assert "eval.jsonl" in output and "Building DAG" not in output


def test_an_llm_judged_organism_passes_the_judge_block_and_requires_its_key(tmp_path, copy_config):
    def edit(config):
        config["organisms"]["sycophancy"]["judge"] = "llm"
        config["judge"] = {"base_url": "http://127.0.0.1:8000/v1", "model": "judge-model",
                           "api_key_env": "CMT_TEST_JUDGE_KEY"}  # fmt: skip

    proc, output = dry_run_with(tmp_path, copy_config, edit, "-p")
    assert proc.returncode != 0 and "CMT_TEST_JUDGE_KEY" in output  # envvars: checked before any job


def test_a_gpu_model_run_locally_without_a_gpu_is_refused_before_any_job(tmp_path, copy_config):
    def edit(config):
        config["models"]["toy"]["gpus"] = 1

    proc, output = dry_run_with(tmp_path, copy_config, edit)
    assert proc.returncode == 0, output[-2000:]  # a dry run (e.g. on a login node) is fine
    path = copy_config()
    config = load(path)
    edit(config)
    path.write_text(yaml.safe_dump(config))
    proc = run_snakemake(tmp_path / "work2", "--cores", "1", "toy_data", config=path, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "models ['toy'] need GPUs" in output
    assert not (tmp_path / "work2" / "results").exists()  # not even the toy data job ran
