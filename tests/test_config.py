import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import REPO, run_snakemake

from cmt.config import (
    ConfigError,
    check_config,
    check_workflow_config,
    config_errors,
    config_file_errors,
    load_config_files,
)
from cmt.data.fetch import DATASET_FILES
from cmt.methods.registry import method_names

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize(
    "path", [*sorted((REPO / "config").glob("*.yaml")), *sorted((REPO / "tests" / "configs").glob("*.yaml"))]
)
def test_shipped_configs_are_valid(path):
    assert config_errors(load(path), SCHEMA) == []


@pytest.mark.parametrize("path", sorted((REPO / "config" / "overrides").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_overrides_are_valid_over_the_default_config(path):
    config = load_config_files([REPO / "config" / "config.yaml", path])
    assert config_errors(config, SCHEMA) == [] and check_workflow_config(config, SCHEMA) == []
    assert config != load(REPO / "config" / "config.yaml")  # it overrides something


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
    (error,) = check_workflow_config(config, SCHEMA)
    assert "config key methods" in error and "'gsd'" in error
    assert str(method_names()) in error  # every valid name, from the registry


def test_a_misspelt_method_is_an_unknown_key_of_the_schema():
    """`methods` is closed: a typo stops the config check (and Snakemake's validate) with the key named."""
    config = load(REPO / "config" / "config.yaml")
    config["methods"]["self_certanty"] = config["methods"].pop("self_certainty")
    (error,) = config_errors(config, SCHEMA)
    assert "config key methods" in error and "'self_certanty'" in error and "self_certainty" in error
    assert check_workflow_config(config, SCHEMA) == [error]  # one line, not a second one from the registry


def test_a_misspelt_induction_strength_generator_is_named():
    """toy.induction_strength is keyed by the toy generators; any other key would be ignored without a word."""
    config = load(REPO / "config" / "config.yaml")
    config["toy"]["induction_strength"]["sycophncy"] = 0.5
    (error,) = check_workflow_config(config, SCHEMA)
    assert "config key toy.induction_strength" in error and "'sycophncy'" in error
    assert "emergent_misalignment" in error  # the allowed keys are listed


def test_induction_strength_is_keyed_by_exactly_the_toy_generators():
    from cmt.toy.world import TOY_ORGANISMS

    toy = load(SCHEMA)["properties"]["toy"]["properties"]
    assert sorted(toy["induction_strength"]["properties"]) == sorted(TOY_ORGANISMS)


def test_the_schema_has_a_settings_subtree_for_exactly_the_registered_methods():
    """A method module without its schema subtree, or a subtree without a module, fails here."""
    schema = load(SCHEMA)
    assert sorted(schema["properties"]["methods"]["properties"]) == method_names()
    # ... and the names are the registry's only: the schema lists no method name anywhere else.
    text = SCHEMA.read_text()
    assert not re.search(r"enum: \[[^\]]*\bself_certainty\b", text)


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


def test_an_llm_judged_organism_needs_its_key_only_in_the_jobs_that_call_the_judge(tmp_path, copy_config):
    """No envvars: a dry run (and the DAG, --lint) works without the key. Each job that calls the judge starts
    with a guard that stops it, with one line naming the variable, when the key is missing."""

    def edit(config):
        config["organisms"]["sycophancy"]["judge"] = "llm"
        config["judge"] = {"base_url": "http://127.0.0.1:8000/v1", "model": "judge-model",
                           "api_key_env": "CMT_TEST_JUDGE_KEY"}  # fmt: skip

    assert "CMT_TEST_JUDGE_KEY" not in os.environ
    proc, output = dry_run_with(tmp_path, copy_config, edit, "-p")
    assert proc.returncode == 0, output[-3000:]
    commands = re.findall(r"^Shell command: (.*)$", output, re.M)
    guarded = [c for c in commands if "CMT_TEST_JUDGE_KEY:?" in c]
    # The evaluations and diagnose (which judges the organism's consistency replies and labels) call the judge.
    assert guarded and all(
        c.split('}"; ', 1)[1].startswith(("cmt evaluate", "cmt diagnose")) for c in guarded
    )
    assert any(c.split('}"; ', 1)[1].startswith("cmt diagnose") for c in guarded)
    assert all("--organism sycophancy" in c for c in guarded)  # the LLM-judged organism's evaluations only
    assert any("cmt evaluate" in c and "--organism reward_hacking" in c for c in commands)
    assert '"api_key_env":"CMT_TEST_JUDGE_KEY"' in output  # the judge block reaches the job, its name only

    guard = guarded[0].split("cmt evaluate", 1)[0]
    env = {k: v for k, v in os.environ.items() if k != "CMT_TEST_JUDGE_KEY"}
    job = subprocess.run(["bash", "-c", f"set -euo pipefail; {guard}echo started"], env=env,
                         capture_output=True, text=True)  # fmt: skip
    assert job.returncode != 0 and job.stdout == ""
    (line,) = job.stderr.strip().splitlines()
    assert "CMT_TEST_JUDGE_KEY" in line and "judge.api_key_env" in line
    job = subprocess.run(["bash", "-c", f"set -euo pipefail; {guard}echo started"],
                         env={**env, "CMT_TEST_JUDGE_KEY": "k"}, capture_output=True, text=True)  # fmt: skip
    assert job.returncode == 0 and job.stdout == "started\n"


def test_multi_view_with_the_judge_checker_guards_its_label_job(tmp_path, copy_config):
    def edit(config):
        config["methods"] = {"multi_view": {"checker": "judge"}}
        config["judge"] = {
            "base_url": "http://127.0.0.1:8000/v1",
            "model": "m",
            "api_key_env": "CMT_TEST_JUDGE_KEY",
        }

    proc, output = dry_run_with(tmp_path, copy_config, edit, "-p")
    assert proc.returncode == 0, output[-3000:]
    commands = re.findall(r"^Shell command: (.*)$", output, re.M)
    guarded = {c.split('}"; ', 1)[1].split()[1] for c in commands if "CMT_TEST_JUDGE_KEY:?" in c}
    assert guarded == {"label"}


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


# ---------------------------------------------------------------- check_workflow_config, one check at a time

JUDGE = {"base_url": "http://127.0.0.1:8000/v1", "model": "judge-model"}


def model_dir(tmp_path):
    path = tmp_path / "model"
    path.mkdir(exist_ok=True)
    (path / "config.json").write_text("{}")
    return str(path)


def dataset_dir(tmp_path):
    path = tmp_path / "data"
    path.mkdir(exist_ok=True)
    (path / "eval.jsonl").write_text("")
    return str(path)


def requests_file(tmp_path):
    path = tmp_path / "requests.jsonl"
    path.write_text("")
    return str(path)


def set_key(config, keys, value):
    *parents, last = keys.split(".")
    for key in parents:
        config = config[key]
    config[last] = value


def drop_key(config, keys):
    *parents, last = keys.split(".")
    for key in parents:
        config = config[key]
    del config[last]


# (name, the edit that breaks config/config.yaml, the edit that makes it right again, the message's words)
CHECKS = [
    ("unknown method",
     lambda c, t: set_key(c, "methods.gsd", {}),
     lambda c, t: c["methods"].pop("gsd"),
     ["config key methods", "'gsd'", "allowed"]),
    ("k-scaling of an unknown method",
     lambda c, t: c["kscaling"]["methods"].append("self_certinty"),
     lambda c, t: c["kscaling"]["methods"].remove("self_certinty"),
     ["config key kscaling.methods", "'self_certinty'"]),
    ("k-scaling of a method that does not select",
     lambda c, t: c["kscaling"]["methods"].append("gst"),
     lambda c, t: c["kscaling"]["methods"].remove("gst"),
     ["config key kscaling.methods", "['gst']", "self_certainty"]),
    ("toy model without the toy base settings",
     lambda c, t: drop_key(c, "toy.tokenizer"),
     lambda c, t: set_key(c, "models.toy.source", {"path": model_dir(t)}),
     ["toy.tokenizer", "model toy has source toy"]),
    ("local model folder without config.json",
     lambda c, t: set_key(c, "models.toy.source", {"path": str(t / "no_model")}),
     lambda c, t: set_key(c, "models.toy.source", {"path": model_dir(t)}),
     ["models.toy.source.path", "no_model", "config.json"]),
    ("local reward model folder without config.json",
     lambda c, t: set_key(c, "reward_model.source", {"path": str(t / "no_rm")}),
     lambda c, t: set_key(c, "reward_model.source", {"path": model_dir(t)}),
     ["reward_model.source.path", "no_rm"]),
    ("toy organism without a corpus size",
     lambda c, t: drop_key(c, "toy.corpus.sycophancy"),
     lambda c, t: set_key(c, "organisms.sycophancy.source", {"path": dataset_dir(t)}),
     ["toy.corpus.sycophancy"]),
    ("toy variant whose generator has no corpus size",
     lambda c, t: [c["organisms"].pop("emergent_misalignment"), drop_key(c, "toy.corpus.emergent_misalignment"),
                   set_key(c, "organisms.em_varied", {"source": {"toy": "emergent_misalignment",
                                                                 "stability": "varied"}})],
     lambda c, t: set_key(c, "toy.corpus.emergent_misalignment", 500),
     ["toy.corpus.emergent_misalignment", "em_varied"]),
    ("corpus_generators without an organism's generator",
     lambda c, t: set_key(c, "toy.corpus_generators", ["sycophancy", "reward_hacking", "spurious_correlation"]),
     lambda c, t: c["organisms"].pop("emergent_misalignment"),
     ["toy.corpus_generators lacks emergent_misalignment", "organism emergent_misalignment"]),
    ("corpus_generators naming a generator without a corpus size",
     lambda c, t: [c["organisms"].pop("reward_hacking"), drop_key(c, "toy.corpus.reward_hacking"),
                   set_key(c, "toy.corpus_generators", ["sycophancy", "reward_hacking", "spurious_correlation",
                                                        "emergent_misalignment"])],
     lambda c, t: set_key(c, "toy.corpus.reward_hacking", 100),
     ["toy.corpus.reward_hacking is missing", "toy.corpus_generators lists reward_hacking"]),
    ("toy variant with a judge of its own",
     lambda c, t: set_key(c, "organisms.em_varied", {"source": {"toy": "emergent_misalignment"},
                                                     "judge": {"programmatic": "sycophancy"}}),
     lambda c, t: c["organisms"]["em_varied"].pop("judge"),
     ["organisms.em_varied.judge", "toy variant of emergent_misalignment"]),
    ("local dataset folder without eval.jsonl",
     lambda c, t: set_key(c, "organisms.sycophancy.source", {"path": str(t / "no_data")}),
     lambda c, t: set_key(c, "organisms.sycophancy.source", {"path": dataset_dir(t)}),
     ["organisms.sycophancy.source.path", "no_data", "eval.jsonl"]),
    ("LLM-judged organism without a judge block",
     lambda c, t: set_key(c, "organisms.sycophancy.judge", "llm"),
     lambda c, t: set_key(c, "judge", dict(JUDGE)),
     ["organisms.sycophancy.judge", "judge block"]),
    ("multi_view's judge checker without a judge block",
     lambda c, t: set_key(c, "methods.multi_view.checker", "judge"),
     lambda c, t: set_key(c, "judge", dict(JUDGE)),
     ["methods.multi_view.checker", "judge block"]),
    ("reranking methods without a reward model",
     lambda c, t: drop_key(c, "reward_model"),
     lambda c, t: [c["methods"].pop(m) for m in ("dual_decoding", "rejection_sampling")],
     ["reward_model is missing", "dual_decoding", "rejection_sampling"]),
    ("toy harmful requests without toy.harmful",
     lambda c, t: drop_key(c, "toy.harmful"),
     lambda c, t: (set_key(c, "eval.harmful", None), c["methods"].pop("oracle_harmful")),
     ["eval.harmful.requests is toy", "toy.harmful"]),
    ("the harmful control without the harmful measure",
     lambda c, t: set_key(c, "eval.harmful", None),
     lambda c, t: c["methods"].pop("oracle_harmful"),
     ["methods.oracle_harmful", "eval.harmful"]),
    ("harmful requests file that is not there",
     lambda c, t: set_key(c, "eval.harmful.requests", str(t / "no_requests.jsonl")),
     lambda c, t: set_key(c, "eval.harmful.requests", requests_file(t)),
     ["eval.harmful.requests", "no_requests.jsonl", "not a file"]),
    ("StrongREJECT scorer without a judge block",
     lambda c, t: set_key(c, "eval.harmful.scorer", "strongreject"),
     lambda c, t: set_key(c, "judge", dict(JUDGE)),
     ["eval.harmful.scorer is strongreject", "judge block"]),
]  # fmt: skip


def test_the_default_config_has_no_problem():
    assert check_workflow_config(load(REPO / "config" / "config.yaml"), SCHEMA) == []


@pytest.mark.parametrize(("name", "breaks", "fixes", "words"), CHECKS, ids=[c[0] for c in CHECKS])
def test_each_workflow_check_fails_then_passes(name, breaks, fixes, words, tmp_path):
    config = load(REPO / "config" / "config.yaml")
    breaks(config, tmp_path)
    (problem,) = check_workflow_config(config, SCHEMA)
    assert all(word in problem for word in words), problem
    fixes(config, tmp_path)
    assert check_workflow_config(config, SCHEMA) == []


def test_every_problem_is_reported_at_once():
    config = load(REPO / "config" / "config.yaml")
    config["seeds"] = "0"  # schema
    config["methods"]["gsd"] = {}  # an unknown key of the schema's methods, which are the registry's
    assert len(check_workflow_config(config, SCHEMA)) == 2
    config = load(REPO / "config" / "config.yaml")
    del config["toy"]["harmful"], config["reward_model"]  # two checks beyond the schema
    assert len(check_workflow_config(config, SCHEMA)) == 2


def test_a_configfile_replaces_the_default_grid_without_the_replace_flag(tmp_path):
    """`--configfile X` alone plans X's grid exactly (never X deep-merged into config/config.yaml's defaults),
    the same as with --replace-workflow-config; the cluster jobs, which get --configfiles but never that flag,
    see the same config."""
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}

    def job_stats(*flags):
        cmd = [str(bin_dir / "snakemake"), "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path), "-n",
               "--configfile", str(REPO / "tests/configs/mini.yaml"), *flags]  # fmt: skip
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        table = proc.stdout[proc.stdout.index("Job stats:") :]
        return dict(re.findall(r"^(\w+)\s+(\d+)$", table, re.M))

    alone = job_stats()
    assert alone == job_stats("--replace-workflow-config")
    assert "label_gst" in alone and not [rule for rule in alone if rule.endswith("self_certainty")]


def test_the_stability_sweep_plans_its_variants_and_its_figure(tmp_path):
    """config/stability.yaml: six toy variants (two generators x three levels) planned up to their induction
    checkpoints (on_fail: exclude), one toy_data job for all of them, and the stability rule."""
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    cmd = [str(bin_dir / "snakemake"), "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path), "-n",
           "-p", "--configfile", str(REPO / "config/stability.yaml")]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = dict(re.findall(r"^(\w+)\s+(\d+)$", proc.stdout[proc.stdout.index("Job stats:") :], re.M))
    assert stats["toy_data"] == "1" and stats["stability"] == "1"
    assert stats["induce"] == str(6 * 3)
    assert "sycophancy_varied=sycophancy:varied" in proc.stdout


# ---------------------------------------------------------------- the files: cmt config check, repeated keys


def test_a_key_given_twice_is_named_with_both_lines(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seeds: [0, 1, 2]\nmethods:\n  gst: {}\n  act: {scale: 1.0}\n  gst: {}\nseeds: [0]\n")
    assert config_file_errors([path]) == [
        f"{path}: line 5: key 'gst' given again (first at line 3); YAML keeps only the last, so the first would "
        "be lost",
        f"{path}: line 6: key 'seeds' given again (first at line 1); YAML keeps only the last, so the first "
        "would be lost",
    ]
    # the same key in two different mappings, and a `<<:` merge overridden on purpose, are not repeats
    path.write_text("base: &b {k: 4}\na: {k: 1}\nb: {k: 2}\nc:\n  <<: *b\n  k: 8\n")
    assert config_file_errors([path]) == []
    assert load_config_files([path])["c"] == {"k": 8}


def test_bad_yaml_is_named_by_file_line_and_column(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seeds: [0, 1]\nmethods:\n  gst: {\n")
    with pytest.raises(ConfigError) as err:
        load_config_files([path])
    assert str(err.value).startswith(f"{path}: line 4, column 1: not valid YAML (")
    path.write_text("- seeds\n")
    with pytest.raises(
        ConfigError, match=r"c\.yaml: the top level must be a mapping of config keys, got list"
    ):
        load_config_files([path])
    with pytest.raises(ConfigError, match=r"nowhere\.yaml: no such config file"):
        load_config_files([tmp_path / "nowhere.yaml"])


def test_config_files_merge_as_snakemake_merges_configfiles(tmp_path):
    from snakemake.utils import update_config

    first = {
        "seeds": [0, 1, 2],
        "methods": {"gst": {}, "act": {"scale": 1.0, "train": {"epochs": 3}}},
        "x": {"y": 1},
    }
    second = {"seeds": [0], "methods": {"act": {"train": {"epochs": 2}}, "bct": {}}, "x": 5, "z": {"w": None}}
    third = {"x": {"back": True}, "methods": {"gst": None}}
    paths = []
    for i, part in enumerate((first, second, third)):
        paths.append(tmp_path / f"{i}.yaml")
        paths[-1].write_text(yaml.safe_dump(part))
    expected = {}
    for part in (first, second, third):
        update_config(expected, copy.deepcopy(part))
    assert load_config_files(paths) == expected
    assert load_config_files(paths)["methods"]["act"] == {"scale": 1.0, "train": {"epochs": 2}}


def cmt_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "cmt", *args], capture_output=True, text=True, cwd=cwd)


def test_config_check_passes_the_shipped_configs_and_names_every_problem(tmp_path):
    ok = cmt_cli("config", "check", str(REPO / "config" / "config.yaml"))
    assert ok.returncode == 0, ok.stderr
    assert "config.yaml: valid (4 organisms, 12 methods, seeds [0, 1, 2])" in ok.stdout
    # an override merged over the default, as `--configfile A B` would: a schema error and a missing folder
    override = tmp_path / "override.yaml"
    override.write_text(
        "methods:\n  self_certainty: {k: 0}\norganisms:\n  sycophancy: {source: {path: nowhere}}\n"
    )
    bad = cmt_cli("config", "check", str(REPO / "config" / "config.yaml"), str(override), cwd=tmp_path)
    assert bad.returncode == 1
    assert "config key methods.self_certainty.k: 0 is less than the minimum of 1" in bad.stderr
    fixed = tmp_path / "fixed.yaml"
    fixed.write_text("organisms:\n  sycophancy: {source: {path: nowhere}}\n")
    bad = cmt_cli("config", "check", str(REPO / "config" / "config.yaml"), str(fixed), cwd=tmp_path)
    assert (
        bad.returncode == 1 and "organisms.sycophancy.source.path" in bad.stderr and "nowhere" in bad.stderr
    )
    (tmp_path / "run" / "nowhere").mkdir(parents=True)  # --directory: relative folders are read from there
    (tmp_path / "run" / "nowhere" / "eval.jsonl").touch()
    folder = cmt_cli("config", "check", str(REPO / "config" / "config.yaml"), str(fixed), "--directory",
                     str(tmp_path / "run"), cwd=tmp_path)  # fmt: skip
    assert folder.returncode == 0 and "valid (4 organisms" in folder.stdout, folder.stderr
    override.write_text("seeds: [0]\nseeds: [1]\n")
    repeated = cmt_cli("config", "check", str(override))
    assert repeated.returncode == 1
    assert "override.yaml: line 2: key 'seeds' given again (first at line 1)" in repeated.stderr


def test_the_workflow_names_a_key_given_twice_before_the_dag(tmp_path, copy_config):
    path = copy_config()
    path.write_text(path.read_text() + "\nseeds: [7]\n")
    proc = run_snakemake(tmp_path / "work", "-n", config=path, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert re.search(r"line \d+: key 'seeds' given again \(first at line \d+\)", output), output
    assert "Building DAG" not in output
